#!/usr/bin/env bash
# Set up both supported TransformerLens generations and run the test suite against each:
#   .venv      TransformerLens 4.x (TransformerBridge)
#   .venv-tl2  TransformerLens 2.18 (HookedTransformer)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tl4
bash scripts/setup.sh tl2
bash scripts/install_browser.sh  # headless Chromium for tests/test_browser.py
echo "== TransformerLens 4.x (TransformerBridge)"
.venv/bin/python -m pytest -q "$@"
echo "== TransformerLens 2.18 (HookedTransformer)"
.venv-tl2/bin/python -m pytest -q "$@"

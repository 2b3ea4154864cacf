#!/usr/bin/env bash
# Set up both supported TransformerLens generations and run the test suite against each:
#   .venv      TransformerLens 4.x (TransformerBridge)
#   .venv-tl2  TransformerLens 2.18 (HookedTransformer)
# The requirements files also pin what the tests need beyond the library: IPython, ipykernel,
# nbclient, nbformat (the `notebook` extra), nbconvert and websocket-client (the `test` extra).
# With no arguments (the full suite, as CI runs it) the built wheel is also installed into a fresh
# environment with the newest TransformerLens (scripts/check_wheel.sh), beside the first suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tl4
bash scripts/setup.sh tl2
bash scripts/install_browser.sh  # headless Chromium for the browser and notebook tests

wheel_pid=""
if [ "$#" -eq 0 ]; then
  wheel_log="$(mktemp)"
  setsid bash scripts/check_wheel.sh >"$wheel_log" 2>&1 &
  wheel_pid=$!
  trap '[ -n "$wheel_pid" ] && kill -- -"$wheel_pid" 2>/dev/null; rm -f "$wheel_log"' EXIT
fi
echo "== TransformerLens 4.x (TransformerBridge)"
.venv/bin/python -m pytest -q "$@"
if [ -n "$wheel_pid" ]; then
  echo "== the wheel in a fresh environment (scripts/check_wheel.sh)"
  status=0
  wait "$wheel_pid" || status=$?
  wheel_pid=""
  cat "$wheel_log"
  [ "$status" -eq 0 ] || { echo "the wheel check failed (exit $status)" >&2; exit "$status"; }
fi
echo "== TransformerLens 2.18 (HookedTransformer)"
.venv-tl2/bin/python -m pytest -q "$@"

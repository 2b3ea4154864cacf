#!/usr/bin/env bash
# Create the virtual environment if it is missing and install jscopes_tl with pinned dependencies.
#   scripts/setup.sh        -> .venv      TransformerLens 4.x (TransformerBridge)
#   scripts/setup.sh tl2    -> .venv-tl2  TransformerLens 2.18 (HookedTransformer)
# Torch is pinned to the CPU wheel (torch==2.13.0) so a CPU machine never pulls a CUDA build.
# The requirements files pin the library's dependencies and what the tests use: the `notebook`
# extra (IPython, ipykernel, nbclient, nbformat) and nbconvert and websocket-client (`test`).
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-tl4}"
case "$flavour" in
  tl4) venv=.venv ;;
  tl2) venv=.venv-tl2 ;;
  *) echo "usage: scripts/setup.sh [tl4|tl2]" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.jscopes-requirements"
if ! cmp -s "requirements/$flavour.txt" "$stamp" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "requirements/$flavour.txt"
  cp "requirements/$flavour.txt" "$stamp"
fi
log="$venv/.jscopes-install.log"
"$venv/bin/python" -m pip install -q --no-deps -e . >"$log" 2>&1 || { cat "$log" >&2; exit 1; }

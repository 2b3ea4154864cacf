#!/usr/bin/env bash
# What a researcher's `pip install` into their own environment does: build the wheel, install it
# into a fresh virtual environment (no system site-packages) together with the newest
# TransformerLens on the package index and the pinned CPU torch wheel, then, from outside the
# repository, import it, run a scope on a bundled model, write a view and call the console script.
#   scripts/check_wheel.sh            (scripts/test.sh runs it after the test suites)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel -q --no-deps --wheel-dir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
wheel="$(ls "$work"/dist/jscopes_tl-*.whl)"
"$python" -m venv "$work/venv"
# torch: the CPU wheel the project pins (a bare `torch` may resolve to a multi-GB CUDA build);
# transformer_lens: unpinned, so the newest release the index has.
"$work/venv/bin/python" -m pip install -q "torch==2.13.0" "$wheel" transformer_lens >"$work/install.log" 2>&1 \
  || { tail -n 40 "$work/install.log" >&2; exit 1; }

cd "$work"  # away from the repository: the installed wheel, not the source tree, is imported
"$work/venv/bin/python" - <<'EOF'
from importlib.metadata import version
from pathlib import Path

import jscopes_tl
from jscopes_tl import models, semantic_scope

assert Path(jscopes_tl.__file__).resolve().is_relative_to(Path.cwd().resolve()), jscopes_tl.__file__
model = models.load("recall")  # the bundled weights and tokenizer are in the wheel
result = semantic_scope(model, "a=3 b=7 c=1 b=")
top = result.top_tokens(1)[0][1]
assert top == "b=7", result.top_tokens(3)
result.save_html("view.html")
assert "var CircuitsVis=" in Path("view.html").read_text(encoding="utf-8")
print(f"wheel check: jscopes_tl {version('jscopes_tl')} with TransformerLens {version('transformer_lens')}, "
      f"torch {version('torch')}: {type(model).__name__}, top token {top!r}, view written")
EOF
"$work/venv/bin/jscopes" --version

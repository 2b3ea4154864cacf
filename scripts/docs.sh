#!/usr/bin/env bash
# Build the documentation site: the user guide (docs/*.md, docs/guide), the API reference from the
# docstrings and the tutorial notebook, executed afresh, into docs/_build/html (or $1).
#   bash scripts/docs.sh              then open docs/_build/html/index.html (works offline)
#   bash scripts/docs.sh OUT_DIR      another output directory; further arguments go to sphinx-build
# Sphinx, myst-nb and furo are pinned in requirements/tl4.txt: the docs build in .venv (TL 4.x).
# Warnings are errors and references nitpicky: a broken cross-reference, a missing page or heading,
# a failing notebook cell fails the build. Then the doctest builder runs the pages' doctests and
# every >>> example of the docstrings the API reference shows.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out="${1:-docs/_build/html}"
shift $(( $# > 0 ? 1 : 0 ))
doctrees="$(dirname "$out")/.doctrees-$(basename "$out")"
"$python" -m sphinx -b html -E -W --keep-going -n -q -d "$doctrees" "$@" docs "$out"
"$python" -m sphinx -b doctest -W --keep-going -n -q -d "$doctrees" "$@" docs "$doctrees/doctest"
echo "docs built: $out/index.html"

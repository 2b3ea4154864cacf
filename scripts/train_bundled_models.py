"""Retrain the bundled models into jscopes_tl/models/<name>/ (seeded, CPU, a few minutes each).

    python scripts/train_bundled_models.py                 # all of recall, induction, periodic
    python scripts/train_bundled_models.py induction       # one

Same as ``python -m jscopes_tl.models.train``; see that module for the recipe.
"""

import sys

from jscopes_tl.models.train import main

if __name__ == "__main__":
    sys.exit(main())

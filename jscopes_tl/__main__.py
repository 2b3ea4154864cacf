import sys

from jscopes_tl.cli import main

sys.exit(main())

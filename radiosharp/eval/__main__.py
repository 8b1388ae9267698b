"""``python -m radiosharp.eval``: see ``radiosharp.eval.cli``."""

import sys

from radiosharp.eval.cli import main

sys.exit(main())

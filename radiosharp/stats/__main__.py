"""Command line of ``python -m radiosharp.stats`` (see :mod:`radiosharp.stats.cli`)."""

import sys

from radiosharp.stats.cli import main

if __name__ == "__main__":
    sys.exit(main())

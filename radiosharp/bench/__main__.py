"""Command line of ``python -m radiosharp.bench`` (see :mod:`radiosharp.bench`)."""

import sys

from radiosharp.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

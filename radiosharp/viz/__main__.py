"""Command line of ``python -m radiosharp.viz`` (see :mod:`radiosharp.viz.cli`)."""

import sys

from radiosharp.viz.cli import main

if __name__ == "__main__":
    sys.exit(main())

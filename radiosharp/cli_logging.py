"""How the command-line programs show the library's log: its notes (resume, held-out scores,
files written) as plain lines on stderr; other libraries' warnings only."""

from __future__ import annotations

import logging


def show_library_log(level: int = logging.INFO) -> None:
    """Plain ``%(message)s`` lines on stderr: radiosharp's at ``level``, everyone else's at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("radiosharp").setLevel(level)

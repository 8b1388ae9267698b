"""The errors of the data sources, and the one line a command-line program prints for an error.

:class:`DataError` (a ``ValueError``) is what a source raises when a folder, a file or an
option cannot be used as configured: a missing folder, a mask with class ids outside
``num_classes``, an 8-bit depth map without a ``depth_scale``, an empty dataset, val
classes the train split lacks. Its message is one line naming the file (or folder) and
the fix. ``python -m radiosharp.train`` and ``python -m radiosharp.eval`` print it as
``error: <message>`` and exit with status 2, also when it is raised in the middle of a
run (a bad mask is only seen when it is read).

:class:`DataNotFoundError` is a ``DataError`` that is also a ``FileNotFoundError``.

One unreadable sample is not a ``DataError``: the readers of :mod:`radiosharp.data.decode`
raise :class:`UnreadableFileError` (an ``OSError``) and the sources skip that sample.
"""

from __future__ import annotations

import re

__all__ = ["DataError", "DataNotFoundError", "UnreadableFileError", "first_line", "one_line"]


class DataError(ValueError):
    """A data folder, file or option that cannot be used as configured; the message names it and the fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder or file that does not exist."""


class UnreadableFileError(OSError):
    """One file that cannot be decoded (the source skips its sample); the message says why."""


def first_line(err: BaseException | str) -> str:
    """The first line of an error's message (its type's name when it has none): to quote an
    inner error inside another one-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line (what the CLIs print after ``error:``).

    An error raised in a DataLoader worker arrives re-raised with the worker's traceback
    in its message ("Caught DataError in DataLoader worker process 0. Original Traceback
    ... DataError: <message>"): that gives the original message. Other multi-line
    messages are joined with "; ".
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = re.sub(rf"^[\w.]*{re.escape(type(err).__name__)}: ", "", lines[-1])
        return last
    return "; ".join(lines)

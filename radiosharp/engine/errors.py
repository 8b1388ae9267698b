"""The errors a run stops with that are not bugs: each message is one line that says what to do.

:class:`RunError` is their base; the train CLI prints it as ``error: <message>`` and
exits 2 (:class:`RunStopped`, a requested stop, exits 143 / 130 instead).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = [
    "DISK_FULL",
    "CheckpointError",
    "DiskFullError",
    "disk_full_reason",
    "free_bytes",
    "NonFiniteError",
    "RunError",
    "RunLockedError",
    "RunStopped",
    "is_disk_full",
]

# The errnos of a write that found no room: a full filesystem, an exhausted quota.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


# Below this many free bytes, a write that failed without naming its cause found the disk full.
NEARLY_FULL = 1 << 20


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return seen


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the filesystem of ``path`` (or its nearest existing parent); None if unknown."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def disk_full_reason(err: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """Why ``err`` is a full disk or quota, in a few words, or None when it is not one.

    An OSError with errno ENOSPC / EDQUOT (also as the cause of ``err``), a message
    that says so (safetensors: ``os error 28``), or, for a write that failed without
    naming its cause (``torch.save`` raises ``RuntimeError: ... iostream error``), a
    filesystem at ``where`` with less than 1 MiB left.
    """
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e.strerror or os.strerror(e.errno)
        text = str(e)
        if "No space left on device" in text or "os error 28" in text:
            return "No space left on device"
        if "Disk quota exceeded" in text or "os error 122" in text:
            return "Disk quota exceeded"
    if where is not None and isinstance(err, RuntimeError):
        free = free_bytes(where)
        if free is not None and free < NEARLY_FULL:
            said = str(err).splitlines()[0][:80] if str(err) else ""
            return f"No space left on device: {free} bytes free after {type(err).__name__}: {said}"
    return None


def is_disk_full(err: BaseException, where: str | os.PathLike | None = None) -> bool:
    """Whether ``err`` is a write that found the disk or quota full (see :func:`disk_full_reason`)."""
    return disk_full_reason(err, where) is not None


class RunError(Exception):
    """A run that cannot go on; the message names the folder or step and what to do."""


class RunLockedError(RunError):
    """Another process holds the run folder's lock (the message names it)."""


class NonFiniteError(RunError):
    """A step's loss or gradient norm was not finite (more often than ``train.skip_nonfinite`` allows)."""


class CheckpointError(RunError):
    """No checkpoint of the run folder could be used (each one missing or corrupt)."""


class DiskFullError(RunError):
    """A write of the run (checkpoint, metrics, export) found the disk or quota full."""


class RunStopped(RunError):
    """The run stopped on a signal after writing a checkpoint; ``exit_status`` is 128 + the signal."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: str) -> None:
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

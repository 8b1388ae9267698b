"""The errors a run stops with that are not bugs: each message is one line that says what to do.

:class:`RunError` is their base; the train CLI prints it as ``error: <message>`` and
exits 2 (:class:`RunStopped`, a requested stop, exits 143 / 130 instead).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "NonFiniteError", "RunError", "RunLockedError", "RunStopped"]


class RunError(Exception):
    """A run that cannot go on; the message names the folder or step and what to do."""


class RunLockedError(RunError):
    """Another process holds the run folder's lock (the message names it)."""


class NonFiniteError(RunError):
    """A step's loss or gradient norm was not finite (more often than ``train.skip_nonfinite`` allows)."""


class CheckpointError(RunError):
    """No checkpoint of the run folder could be used (each one missing or corrupt)."""


class RunStopped(RunError):
    """The run stopped on a signal after writing a checkpoint; ``exit_status`` is 128 + the signal."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: str) -> None:
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

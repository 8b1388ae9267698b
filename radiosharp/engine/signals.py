"""Graceful stop: SIGTERM and SIGINT (Ctrl-C) end a run at a step boundary, with a checkpoint.

While :class:`GracefulStop` is active (the training loop), the first SIGTERM or SIGINT
only records the request: the loop finishes the step it is in, writes a checkpoint
(atomically, as every checkpoint) and stops with
:class:`~radiosharp.engine.errors.RunStopped`; the train CLI then prints how to resume
and exits 143 (SIGTERM) or 130 (SIGINT), the statuses a shell and a scheduler expect
of a process ended by that signal. A second signal exits at once (same statuses),
without a checkpoint: the checkpoints already written stay intact. Cluster schedulers
send SIGTERM some time before they kill a preempted job, so a preempted run loses at
most the step it was in.

DataLoader workers ignore both signals (:func:`ignore_stop_signals`, their
``worker_init_fn``): Ctrl-C reaches the whole process group, and a worker killed by it
would fail the very step the main process is finishing. They end with the main process.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["STOP_SIGNALS", "GracefulStop", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT (see the module doc)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class GracefulStop:
    """A context manager that turns the first SIGTERM / SIGINT into a stop request.

    ``requested`` is the signal number once one arrived (None before). Handlers can
    only be set in the main thread; elsewhere the context does nothing and signals
    keep their usual effect. The previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            # os.write, not logging: a handler may interrupt a logging call (its lock is held).
            os.write(2, f"\n{name} again: exiting now, without a checkpoint (the earlier ones are intact)\n".encode())
            os._exit(128 + signum)
        self.requested = signum
        os.write(
            2,
            f"\n{name}: finishing the current step, then writing a checkpoint and stopping "
            f"(send {name} again to exit at once)\n".encode(),
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

"""One writer per run folder: an exclusive OS-level lock on ``<run folder>/.radiosharp.lock``.

:meth:`RunLock.acquire` takes an exclusive ``fcntl.flock`` on the lock file and records
the holder (pid, host, start time) in it; a second process, another launch or a
``resume=true`` while the first still trains, gets :class:`RunLockedError` naming the
holder. The operating system releases the lock when its process exits in any way
(``kill -9`` included), so a lock can never be left stale by a dead process: the record
is only informative. :meth:`RunLock.release` removes the lock file (and the run folder
when the lock created it and nothing else was written there, so a run refused while it
was set up leaves nothing behind); a process that opened the file just before it was
removed sees that its lock is on a removed file and tries again. :func:`lock_holder`
asks without taking the lock or writing anything, so a run that is refused for another
reason leaves no lock file in a folder it may not use.

Where the filesystem does not support ``flock`` the record is the lock: a live pid on
this host holds it; a record of a dead pid on this host is stale and taken over.

Under several processes (torchrun, ``accelerate launch``) only the main process takes
the lock (:class:`~radiosharp.engine.trainer.Trainer` decides, and tells the others).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from radiosharp.engine.errors import RunLockedError

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLock", "lock_holder"]

LOCK_NAME = ".radiosharp.lock"
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process (it has not recorded its pid yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    return f"pid {record.get('pid')} on host {record.get('host')} (since {since})"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record_holds(record: dict[str, Any] | None) -> bool:
    """Without flock: whether a record names a live holder (another host's is taken as live)."""
    if not record or not isinstance(record.get("pid"), int):
        return False
    if record.get("host") != socket.gethostname():
        return True
    return record["pid"] != os.getpid() and _pid_alive(record["pid"])


def _locked_message(run_dir: Path, record: dict[str, Any] | None) -> str:
    pid = (record or {}).get("pid")
    stop = f" (kill -TERM {pid} makes it save a checkpoint and stop)" if pid else ""
    return (
        f"{run_dir} is being written by {_describe(record)}; wait for that run to end or stop it{stop}, "
        "or choose another output_dir"
    )


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the lock of ``run_dir`` (for a message), or None when nobody does.

    Writes nothing: a folder without a lock file is free.
    """
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in _BUSY:
            return _locked_message(Path(run_dir), _read_record(path))
        return _locked_message(Path(run_dir), _read_record(path)) if _record_holds(_read_record(path)) else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The held lock of one run folder; release it with :meth:`release` (or ``with``).

    Also released when the object is garbage-collected and, by the operating system,
    when the process ends.
    """

    def __init__(self, path: Path, fd: int, made_folder: bool = False) -> None:
        self.path, self._fd = path, fd
        self._finalizer = weakref.finalize(self, _close, fd, path, made_folder)

    @classmethod
    def acquire(cls, run_dir: Path, attempts: int = 5) -> RunLock:
        """Create ``run_dir`` if needed and lock it, or raise :class:`RunLockedError` naming the holder.

        ``attempts`` short retries ride over another process's momentary look
        (:func:`lock_holder`); a real holder keeps the lock and is reported.
        """
        import fcntl

        run_dir = Path(run_dir)
        made_folder = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        attempt = 0
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in _BUSY:
                    log.warning("cannot lock %s (%s); relying on the pid recorded in it", path, err)
                    if _record_holds(_read_record(path)):
                        os.close(fd)
                        raise RunLockedError(_locked_message(run_dir, _read_record(path))) from None
                    break
                os.close(fd)
                attempt += 1
                if attempt >= attempts:
                    raise RunLockedError(_locked_message(run_dir, _read_record(path))) from None
                time.sleep(0.05)
                continue
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a lock file its holder removed as it released it: open the new one
        try:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, made_folder)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Clear the holder record and unlock (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _close(fd: int, path: Path, made_folder: bool) -> None:
    import fcntl

    try:  # while still locked: a new holder's file or record is never touched
        os.ftruncate(fd, 0)
        if _same_file(fd, path):
            path.unlink()
        if made_folder and not any(path.parent.iterdir()):
            path.parent.rmdir()
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:  # a filesystem without flock (the record was the lock)
        pass
    finally:
        os.close(fd)

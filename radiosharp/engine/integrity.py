"""Checkpoint integrity: what a checkpoint's ``DONE`` marker records, and its check.

When a checkpoint's files are all written, :func:`mark_done` reads each one back,
flushes it to disk (fsync) and records its size and sha256 in ``DONE`` (JSON, written
atomically, last). :func:`verify_checkpoint` compares the files with that record: a
file missing, truncated or changed, the model and optimizer state as much as the
random-state (``random_states_*.pkl``) and custom-state (``custom_checkpoint_*.pkl``)
files, makes the checkpoint corrupt. Accelerate itself would load a truncated
random-state file by skipping it with a log line, and the run would "resume" with other
random numbers than the run that never stopped; the check refuses it instead.

:func:`newest_intact` picks the checkpoint a resumed run starts from: the newest one
that passes, with a warning naming each newer corrupt one; :class:`CheckpointError`
(one line) when none does. A ``DONE`` written before this record existed (just the
step number) is accepted unverified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radiosharp.engine.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["DONE", "mark_done", "newest_intact", "read_done", "verify_checkpoint"]

DONE = "DONE"
_CHUNK = 1 << 20


def _digest(path: Path, sync: bool = False) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read in chunks; ``sync`` also flushes it to disk."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return size, h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != DONE)


def mark_done(ckpt: Path, step: int) -> dict[str, Any]:
    """Flush every file of ``ckpt`` to disk and write ``DONE`` with their sizes and sha256.

    ``DONE`` is written atomically after all the files are on disk, so a checkpoint
    holding it was completely written; returns what it records.
    """
    from radiosharp.export import atomic_write_bytes

    files: dict[str, dict[str, Any]] = {}
    for path in _files(ckpt):
        size, sha = _digest(path, sync=True)
        files[path.relative_to(ckpt).as_posix()] = {"size": size, "sha256": sha}
    record = {"step": int(step), "files": files}
    atomic_write_bytes(ckpt / DONE, (json.dumps(record, indent=1) + "\n").encode())
    return record


def read_done(ckpt: Path) -> dict[str, Any] | None:
    """The record in ``ckpt/DONE``; None for an old-style marker (just the step number).

    Raises :class:`CheckpointError` when the marker is neither (itself corrupt).
    """
    text = (ckpt / DONE).read_text(errors="replace").strip()
    if text.isdigit():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise CheckpointError(f"{ckpt / DONE}: not a checkpoint record")
    return record


def verify_checkpoint(ckpt: Path) -> str | None:
    """What is wrong with ``ckpt`` (one phrase naming the file), or None when it is intact.

    Every file ``DONE`` lists must be there with its recorded size and sha256 (sizes
    are compared first, so a truncated file costs no hashing).
    """
    if not (ckpt / DONE).is_file():
        return f"{DONE} is missing"
    try:
        record = read_done(ckpt)
    except (CheckpointError, OSError) as err:
        return str(err)
    if record is None:
        log.info("%s has no file record (written by an older radiosharp); loading it unverified", ckpt)
        return None
    files: dict[str, Any] = record["files"]
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, {want.get('size')} were written"
    for name, want in files.items():
        if _digest(ckpt / name)[1] != want.get("sha256"):
            return f"{name} does not match its sha256 (changed after it was written)"
    return None


def newest_intact(checkpoints: Sequence[Path]) -> Path:
    """The newest of ``checkpoints`` (oldest first) that passes :func:`verify_checkpoint`.

    Each newer corrupt one is named in a warning; :class:`CheckpointError` names them
    all when none is intact.
    """
    bad: list[str] = []
    for ckpt in reversed(checkpoints):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        log.warning("checkpoint %s is corrupt (%s); falling back to an earlier one", ckpt, problem)
        bad.append(f"{ckpt.name}: {problem}")
    where = checkpoints[0].parent if checkpoints else "the run folder"
    raise CheckpointError(
        f"no intact checkpoint to resume from in {where} ({'; '.join(bad) or 'none'}); "
        "drop resume=true and start a fresh run in another output_dir"
    )

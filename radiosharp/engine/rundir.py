"""The run folder: checkpoints, resume checks, the metrics log and wandb.

A fresh run refuses a folder that already holds a run, before writing anything
(:func:`prepare_run_dir`); a checkpoint is written to ``step_N.tmp``, marked ``DONE``
and renamed, so a crash mid-save leaves the earlier checkpoints as they were
(:func:`checkpoint_dirs` lists only complete ones); a resumed run must train what it
resumes (:func:`check_resumed_recipe`) and drops the metrics rows logged after its
checkpoint (:func:`truncate_metrics`), which it logs again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from radiosharp.engine.errors import RunError
from radiosharp.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS",
    "RESUMABLE_CHANGES",
    "RUN_MARKERS",
    "MetricsLog",
    "check_resumed_recipe",
    "checkpoint_dirs",
    "claim",
    "claimed",
    "foreign_entries",
    "prepare_run_dir",
    "read_metrics",
    "start_wandb",
    "truncate_metrics",
]

CHECKPOINTS = "checkpoints"


def _checkpoint_step(path: Path) -> int | None:
    """``N`` for a folder named ``step_N``; None for anything else (``step_N.tmp`` included)."""
    name = path.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first.

    Complete means renamed from ``step_N.tmp`` to ``step_N`` and holding ``DONE``: a
    ``.tmp`` folder is half-written even when its ``DONE`` is already there (a crash
    between marking and renaming).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and _checkpoint_step(p) is not None and (p / "DONE").is_file()]
    return sorted(done, key=_checkpoint_step)  # type: ignore[arg-type]


RUN_MARKERS = ("recipe.yaml", "metrics.jsonl", "model.safetensors")


# What a resumed run may change: how long it runs and how it logs, never what it trains.
RESUMABLE_CHANGES = (
    "resume",
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_workers",
    "train.skip_nonfinite",
    "wandb.",
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_resumed_recipe(recipe: Recipe, run_dir: Path) -> None:
    """A resumed run must be the run it resumes: only length and logging may change.

    Anything else (teachers, student, data, optimizer, ...) would make the checkpoint
    load into a different model or silently change the training. Allowed changes are
    logged and recorded when the run writes its recipe again.
    """
    import yaml

    saved_path = run_dir / "recipe.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    now = _flatten(recipe.model_dump(mode="json"))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    blocked = [k for k in changed if not any(k == a or k.startswith(a) for a in RESUMABLE_CHANGES)]
    if blocked:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in blocked[:4])
        raise RecipeError(
            f"resume=true but the recipe differs from the one {run_dir} was started with ({shown}"
            f"{' ...' if len(blocked) > 4 else ''}); a resumed run may change only "
            f"{', '.join(a.rstrip('.') for a in RESUMABLE_CHANGES[1:])}"
        )
    allowed = [k for k in changed if k != "resume"]
    if allowed:
        log.warning("resuming with changes: %s", ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in allowed))


def _check_is_folder(run_dir: Path) -> None:
    """``run_dir`` and the nearest of its parents that exists must be folders (else one line)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "output_dir" if path == run_dir else f"output_dir {run_dir}: its parent"
                raise RecipeError(
                    f"{what} {path} is an existing file, not a folder; choose another output_dir "
                    "(output_dir=runs/new_name)"
                )
            return


# Files this process wrote into run folders (resolved): its own, never foreign to it.
_WRITTEN: set[Path] = set()


def claim(path: str | os.PathLike) -> None:
    """Record that this process wrote ``path`` into its run folder (see :func:`foreign_entries`)."""
    _WRITTEN.add(Path(path).resolve())


def claimed(path: str | os.PathLike) -> bool:
    """Whether this process wrote ``path`` (:func:`claim`)."""
    return Path(path).resolve() in _WRITTEN


def named_statistics(recipe: Recipe, run_dir: Path) -> set[Path]:
    """The files under ``run_dir/phi_s/`` that the recipe names (``teachers.<key>.phi_s``), resolved."""
    inside = (run_dir / "phi_s").resolve()
    named = set()
    for cfg in recipe.teachers.values():
        if cfg.phi_s:
            path = Path(cfg.phi_s).resolve()
            if path.parent == inside:
                named.add(path)
    return named


def foreign_entries(recipe: Recipe, run_dir: Path) -> list[str]:
    """What an existing folder holds that a fresh run there did not write and may not use.

    A fresh run writes only into a new or empty folder: its viz pictures, statistics and
    exports would otherwise overwrite same-named files, and files it did not write would
    be taken for its own. Allowed: the run lock (left by a process killed before it wrote
    anything) and the statistics under ``phi_s/`` that the recipe names
    (``teachers.<key>.phi_s``: what ``python -m radiosharp.stats`` wrote there, used
    because the recipe says so) or that this process wrote there itself (:func:`claim`:
    statistics computed by a ``build`` before the run's setup); any other file is foreign.
    """
    from radiosharp.engine.runlock import LOCK_NAME

    named = named_statistics(recipe, run_dir)
    found: list[str] = []
    for entry in sorted(run_dir.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        if entry.name == "phi_s" and entry.is_dir():
            found += [f"phi_s/{p.name}" for p in sorted(entry.iterdir()) if p.resolve() not in named and not claimed(p)]
            continue
        found.append(entry.name + ("/" if entry.is_dir() else ""))
    return found


def prepare_run_dir(recipe: Recipe) -> Path:
    """Check that the run folder may be used; never clobber or adopt what the run did not write.

    Called before anything is written. A fresh run needs a new or empty folder (see
    :func:`foreign_entries`: a folder holding only statistics the recipe names is free);
    a resumed one a folder with a complete checkpoint whose recipe it matches.
    """
    run_dir = recipe.run_dir
    _check_is_folder(run_dir)
    if recipe.resume:
        if not checkpoint_dirs(run_dir):
            raise RecipeError(
                f"resume=true but {run_dir} has no complete checkpoint to resume from "
                f"(looked for {run_dir / CHECKPOINTS}/step_N/DONE); drop resume=true "
                "to start a fresh run"
            )
        check_resumed_recipe(recipe, run_dir)
        return run_dir
    if not run_dir.exists():
        return run_dir
    done = checkpoint_dirs(run_dir)
    if done:
        raise RecipeError(
            f"{run_dir} already holds a run (last checkpoint {done[-1].name}); pass resume=true to "
            f"continue it, or choose another output_dir (output_dir=runs/new_name)"
        )
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if found:
        raise RecipeError(
            f"{run_dir} already holds a run ({', '.join(found)}) with no checkpoint to resume from; "
            f"choose another output_dir (output_dir=runs/new_name) or delete {run_dir}"
        )
    foreign = foreign_entries(recipe, run_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        stats = [f for f in foreign if f.startswith("phi_s/")]
        hint = f"; to use statistics there, name them (teachers.<key>.phi_s={run_dir / stats[0]})" if stats else ""
        raise RecipeError(
            f"{run_dir} already exists and holds files this run did not write ({shown}); a fresh run "
            f"writes only into a new or empty folder, so choose another output_dir "
            f"(output_dir=runs/new_name){hint}"
        )
    return run_dir


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors to wandb if enabled.

    Each row goes to the file in one ``write`` on a descriptor opened for appending, so
    rows are whole lines, never interleaved; the file is fsynced by :meth:`sync` (the
    trainer calls it before every checkpoint, so the rows a checkpoint covers are on
    disk when the checkpoint is). A torn last line (a full disk, a kill mid-write) is
    what :func:`truncate_metrics` repairs on resume.
    """

    def __init__(self, path: Path, enabled: bool, wandb_run: Any = None) -> None:
        self.path, self.enabled, self.wandb = path, enabled, wandb_run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        data = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; a short write is continued
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def sync(self) -> None:
        """Flush the log to disk (fsync)."""
        if self.enabled and self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def _parse_rows(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """``([(line, row), ...], torn)``: the rows of a metrics log, and whether its last line was torn.

    A last line that is not terminated or not valid JSON is torn (what a kill or a full
    disk mid-write leaves); an unreadable line before it is an error naming the line.
    """
    lines = path.read_bytes().decode(errors="replace").split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows: list[tuple[str, dict[str, Any]]] = []
    torn = bool(tail.strip())
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if number == len(lines) and not torn:
                torn = True
                continue
            raise RunError(
                f"{path}: line {number} is not a metrics row ({line[:60]!r}); remove that line "
                "(every row is one JSON object) and resume again"
            )
        rows.append((line, row))
    return rows, torn


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (none when it has not logged yet; a torn last line is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [row for _, row in _parse_rows(path)[0]]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop the rows logged after ``last_step``: a resumed run logs those steps again.

    A torn last line is dropped too, with a warning.
    """
    from radiosharp.export import atomic_write_bytes

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    rows, torn = _parse_rows(path)
    if torn:
        log.warning("%s: dropped its torn last line (left by a run killed mid-write or a full disk)", path)
    keep = [line for line, row in rows if row.get("step", 0) <= last_step]
    if len(keep) != len(rows) or torn:
        atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def start_wandb(recipe: Recipe, run_dir: Path) -> Any:
    """The run's wandb run, or None when wandb is off or not installed."""
    if not recipe.wandb.enabled:
        return None
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed (pip install radiosharp[wandb]); logging to metrics.jsonl only")
        return None
    mode = recipe.wandb.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=recipe.wandb.project,
        name=recipe.name,
        dir=str(run_dir),
        mode=mode,
        config=recipe.model_dump(mode="json"),
        resume="allow",
    )

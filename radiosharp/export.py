"""Exported models: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild).

``model.json`` holds ``{"kind": ..., "config": {...}, "radiosharp": version}``; the
config is whatever the kind's loader needs to rebuild the module before the weights
are loaded with ``strict=True`` (a mismatch is an error, never silently ignored).
Writes go to a temporary file first and are renamed into place, so a crash never
leaves a half-written export; a write that finds the disk full is an OSError ENOSPC,
whatever the writing library raised. Weights that are not finite (NaN or inf: a run that
diverged) are never written by :func:`save_export` nor read by :func:`read_export`:
both raise ValueError naming the file and the tensor.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "model.json"


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except BaseException as err:
        full = _disk_full(err, path.parent)  # asked before the unlink frees the space
        Path(tmp).unlink(missing_ok=True)
        if full is not None:  # a writer's own error (safetensors, torch.save) for a full disk
            raise OSError(errno.ENOSPC, full, str(path)) from err
        raise


def _disk_full(err: BaseException, where: Path) -> str | None:
    if not isinstance(err, Exception):
        return None
    from radiosharp.engine.errors import disk_full_reason

    return disk_full_reason(err, where)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def save_state_dict(
    path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically (contiguous CPU copies, shared storage split)."""
    tensors = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format) for k, v in state.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors' own error type: a truncated or foreign file
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def nonfinite_tensor(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding NaN or inf, else None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(state: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """ValueError naming ``where`` (a file) and the tensor when ``state`` holds NaN or inf."""
    name = nonfinite_tensor(state)
    if name is not None:
        raise ValueError(
            f"{where}: tensor '{name}' holds non-finite values (NaN or inf); the run that wrote it "
            "diverged and its weights cannot be used"
        )


def save_export(
    run_dir: str | os.PathLike,
    module: torch.nn.Module,
    kind: str,
    config: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` (ValueError for non-finite weights).

    ``extra``: tensors stored beside the module's state (names must not clash with it),
    for the kind's loader to take out before it loads the state strictly.
    """
    from radiosharp._version import __version__

    run_dir = Path(run_dir)
    state = module.state_dict()
    if extra:
        clash = sorted(set(extra) & set(state))
        if clash:
            raise ValueError(f"save_export: extra tensors clash with the module's state: {clash[:4]}")
        state = {**state, **extra}
    check_finite(state, run_dir / WEIGHTS)
    save_state_dict(run_dir / WEIGHTS, state)
    meta = {"kind": kind, "config": config, "radiosharp": __version__}
    atomic_write_bytes(run_dir / CONFIG, json.dumps(meta, indent=2).encode())
    return run_dir


@dataclass(frozen=True)
class ExportMeta:
    """What ``model.json`` says: the export's kind, its rebuild config and the writing version."""

    run_dir: Path
    kind: str
    config: dict[str, Any]
    version: str | None


def read_export_meta(run_dir: str | os.PathLike, expect_kind: str | None = None) -> ExportMeta:
    """The one reader of a run's ``model.json`` (no weights are loaded).

    FileNotFoundError when the folder or its export files are absent, ValueError when
    ``model.json`` is not a valid description or holds another kind than ``expect_kind``;
    every message names the run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file() or not (run_dir / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no exported model ({CONFIG} + {WEIGHTS}); "
            "train it to the end (a killed run continues with resume=true)"
        )
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path}: not a valid export description: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise ValueError(f"{cfg_path}: not a valid export description (expected a mapping with a 'config')")
    kind = meta.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise ValueError(f"{run_dir} holds a '{kind}' export, expected '{expect_kind}'")
    return ExportMeta(run_dir, str(kind), dict(meta.get("config") or {}), meta.get("radiosharp"))


def read_export(
    run_dir: str | os.PathLike, expect_kind: str | None = None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Return ``(kind, config, state_dict)`` of an exported run; clear errors when absent.

    Weights that are not finite are refused (ValueError naming the file and the tensor).
    """
    meta = read_export_meta(run_dir, expect_kind)
    state = load_state_dict(meta.run_dir / WEIGHTS)
    check_finite(state, meta.run_dir / WEIGHTS)
    return meta.kind, meta.config, state

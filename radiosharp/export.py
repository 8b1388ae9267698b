"""Exported models: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild).

``model.json`` holds ``{"kind": ..., "config": {...}, "radiosharp": version}``; the
config is whatever the kind's loader needs to rebuild the module before the weights
are loaded with ``strict=True`` (a mismatch is an error, never silently ignored).
Writes go to a temporary file first and are renamed into place, so a crash never
leaves a half-written export.
"""

from __future__ import annotations

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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return load_file(str(path))


def save_export(run_dir: str | os.PathLike, module: torch.nn.Module, kind: str, config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir``."""
    from radiosharp._version import __version__

    run_dir = Path(run_dir)
    save_state_dict(run_dir / WEIGHTS, module.state_dict())
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
    """Return ``(kind, config, state_dict)`` of an exported run; clear errors when absent."""
    meta = read_export_meta(run_dir, expect_kind)
    return meta.kind, meta.config, load_state_dict(meta.run_dir / WEIGHTS)

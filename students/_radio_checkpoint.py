"""Start our RADIO student from an NVlabs RADIO checkpoint (RADIO #124: "how to start from
pretrained weights").

RADIO's released checkpoints (``radio_v2.5-l.pth.tar`` and the like; see
``teachers/radio.py``) hold, under ``base_model.``, a timm ``VisionTransformer`` whose
patch embedding, position table and class tokens live in a ``patch_generator``. Its
blocks and final norm have timm's names, as ours do; the rest maps as:

=====================================================  =====================================
RADIO                                                  radiosharp student
=====================================================  =====================================
``patch_generator.embedder.weight`` ``[D, 3*p*p]``      ``patch_embed.proj.weight`` ``[D, 3, p, p]``
  (patches flattened as channel, row, column)            (bias zero: RADIO's embedder has none)
``patch_generator.pos_embed`` ``[1, R*R, D]``           ``cpe.table`` ``[1, D, R', R']`` (bilinear
                                                         resize when the tables differ)
``patch_generator.cls_token.token`` ``[T + regs, D]``   ``prefix_tokens`` ``[1, P, D]``: the first
                                                         ``min(P, T + regs)`` rows
``blocks.*``, ``norm.*``                                the same names (strictly: all present,
                                                         same shapes)
=====================================================  =====================================

The adaptor heads are not mapped (RADIO's are per *its* teachers, ours per the recipe's)
and keep their seeded initialisation. :func:`export_radio_init` writes the result as a
student run (``model.safetensors`` + ``model.json``), so a recipe starts from it with the
existing ``init_from: <that folder>``.

The checkpoint is read with ``torch.load(weights_only=True)``, allowing only
``argparse.Namespace`` (RADIO stores its training args as one) besides tensors.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PREFIXES = ("base_model.", "radio_model.model.", "model.")
EMBEDDER = "patch_generator.embedder.weight"
EMBEDDER_BIAS = "patch_generator.embedder.bias"
POS_EMBED = "patch_generator.pos_embed"
CLS_TOKENS = "patch_generator.cls_token.token"


def read_radio_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The backbone state dict of a RADIO checkpoint (``.pth.tar``/``.pth``, or ``.safetensors``).

    The EMA weights when the file holds them (as RADIO's hub code prefers), with the
    ``base_model.`` (or ``model.``) prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RADIO checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = state.get("state_dict_ema") or state.get("state_dict") or state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a RADIO checkpoint (no state dict of tensors)")
    for prefix in PREFIXES:
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if EMBEDDER in inner:
            return inner
    if EMBEDDER in state:
        return dict(state)
    raise ValueError(f"{path}: not a RADIO checkpoint: no '{EMBEDDER}' under {', '.join(PREFIXES)} or at the top level")


def _position_table(pos_embed: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """RADIO's ``[1, R*R, D]`` table as ours, ``[1, D, rows, cols]`` (resized when they differ)."""
    _, n, dim = pos_embed.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"RADIO position table of {n} entries is not square")
    grid = pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if tuple(grid.shape[-2:]) != tuple(table.shape[-2:]):
        grid = F.interpolate(grid.float(), size=tuple(table.shape[-2:]), mode="bilinear", align_corners=False)
    return grid.to(table.dtype)


def radio_student_state(radio: Mapping[str, torch.Tensor], student: nn.Module) -> dict[str, torch.Tensor]:
    """``student``'s state dict with its backbone (and prefix tokens) taken from ``radio``.

    Raises ValueError naming the keys when the backbones differ (another width, depth or
    patch size): every ``blocks.*`` / ``norm.*`` key must be there with the same shape.
    """
    own = student.state_dict()
    state = dict(own)
    dim, _, patch, _ = own["patch_embed.proj.weight"].shape
    embedder = radio[EMBEDDER]
    if tuple(embedder.shape) != (dim, 3 * patch * patch):
        raise ValueError(
            f"RADIO patch embedding {tuple(embedder.shape)} does not fit a width-{dim}, patch-{patch} student "
            f"(expected ({dim}, {3 * patch * patch})): choose the student backbone of the checkpoint"
        )
    if any(k.startswith("patch_generator.patch_normalizer.") for k in radio):
        raise ValueError("RADIO checkpoints with a patch normalizer are not supported by this student")
    state["patch_embed.proj.weight"] = embedder.reshape(dim, 3, patch, patch)
    state["patch_embed.proj.bias"] = radio.get(EMBEDDER_BIAS, torch.zeros(dim))
    state["cpe.table"] = _position_table(radio[POS_EMBED], own["cpe.table"])
    if CLS_TOKENS in radio:
        tokens, prefix = radio[CLS_TOKENS], own["prefix_tokens"].clone()
        count = min(prefix.shape[1], tokens.shape[0])
        prefix[0, :count] = tokens[:count]
        state["prefix_tokens"] = prefix
        log.info("RADIO init: %d of %d prefix tokens from the checkpoint", count, prefix.shape[1])
    backbone = [k for k in own if k.startswith(("blocks.", "norm."))]
    missing = [k for k in backbone if k not in radio]
    shapes = [
        f"{k} {tuple(radio[k].shape)} vs {tuple(own[k].shape)}"
        for k in backbone
        if k in radio and radio[k].shape != own[k].shape
    ]
    extra = sorted(k for k in radio if k.startswith("blocks.") and k not in own)
    if missing or shapes or extra:
        raise ValueError(
            f"RADIO checkpoint does not match the student backbone: missing {missing[:4]}, "
            f"wrong shape {shapes[:3]}, unexpected {extra[:4]}"
        )
    state.update({k: radio[k] for k in backbone})
    return state


def student_from_radio(path: str | os.PathLike, teachers: Mapping[str, Mapping[str, Any]], **options: Any) -> nn.Module:
    """Our RADIO student (``STUDENTS.build("radio", teachers=..., **options)``) with the
    backbone of the RADIO checkpoint at ``path``; the adaptor heads keep their initialisation."""
    from radiosharp.registry import STUDENTS

    student = STUDENTS.build("radio", teachers=dict(teachers), **options)
    student.load_state_dict(radio_student_state(read_radio_checkpoint(path), student), strict=True)
    return student


def export_radio_init(
    path: str | os.PathLike, run_dir: str | os.PathLike, teachers: Mapping[str, Mapping[str, Any]], **options: Any
) -> Path:
    """Write :func:`student_from_radio` as a student run, the ``init_from`` of a distillation."""
    from radiosharp.student_io import save_student

    return save_student(run_dir, student_from_radio(path, teachers, **options))

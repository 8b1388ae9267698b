"""Qualitative pictures of a dense probe: rows of image | ground truth | prediction.

A dense task (``semseg``, ``depth``, ``normals``) hands its first-seed predictions on the
first few val images to :func:`write_examples`, which writes
``<examples dir>/<task>_examples.png`` when the eval context names a folder
(``ctx.extra["examples_dir"]``; ``eval run`` / ``eval mtl`` use ``RUN/eval/examples``)
and the features carry thumbnails (``FeatureSet.thumbnails``, kept for data with dense
targets). Colours:

- ``mask``: a fixed palette per class id (the same id has the same colour in every
  picture of the project), ignored pixels (255) black;
- ``depth``: viridis on one range per row (the ground truth's valid 2nd-98th percentiles,
  so prediction and truth are comparable), invalid pixels black;
- ``normals``: ``(n + 1) / 2`` as RGB (the usual normal-map colouring), invalid pixels black.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from radiosharp.eval.plots import _figure, save_figure

log = logging.getLogger(__name__)

__all__ = ["EXAMPLES", "colourize", "examples_figure", "write_examples"]

EXAMPLES = 4  # rows per picture
KINDS = ("mask", "depth", "normals")
IGNORE_INDEX = 255


def _palette(n: int = 256) -> np.ndarray:
    """A fixed colour per class id (golden-ratio hues, seeded: stable across runs)."""
    rng = np.random.default_rng(0)
    hues = (np.arange(n) * 0.618034) % 1.0
    sat = 0.55 + 0.45 * rng.random(n)
    val = 0.65 + 0.35 * rng.random(n)
    from matplotlib.colors import hsv_to_rgb

    rgb = hsv_to_rgb(np.stack([hues, sat, val], 1))
    rgb[IGNORE_INDEX] = 0.0
    return rgb


PALETTE = _palette()


def colourize(
    target: torch.Tensor, kind: str, valid: torch.Tensor | None = None, span: tuple[float, float] | None = None
) -> np.ndarray:
    """An ``[H,W,3]`` float picture in [0,1] of a mask ``[H,W]``, depth ``[H,W]`` or normals ``[3,H,W]``."""
    if kind == "mask":
        ids = target.long().clamp(0, 255).cpu().numpy()
        return PALETTE[ids]
    if kind == "depth":
        depth = target.float().cpu().numpy()
        ok = np.isfinite(depth) if valid is None else valid.cpu().numpy()
        lo, hi = span if span is not None else (float(np.nanmin(depth)), float(np.nanmax(depth)))
        scaled = np.clip((depth - lo) / max(hi - lo, 1e-12), 0, 1)
        rgb = colormaps["viridis"](np.nan_to_num(scaled))[..., :3]
        rgb[~ok] = 0.0
        return rgb
    if kind == "normals":
        n = target.float().cpu().numpy().transpose(1, 2, 0)
        rgb = np.clip((np.nan_to_num(n) + 1) / 2, 0, 1)
        if valid is not None:
            rgb[~valid.cpu().numpy()] = 0.0
        return rgb
    raise ValueError(f"colourize: kind '{kind}' is not valid; valid: {', '.join(KINDS)}")


def _depth_span(truth: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    values = truth[valid].float()
    if values.numel() == 0:
        return 0.0, 1.0
    return float(torch.quantile(values, 0.02)), float(torch.quantile(values, 0.98))


def examples_figure(
    thumbnails: torch.Tensor,
    truth: torch.Tensor,
    prediction: torch.Tensor,
    kind: str,
    valid: torch.Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """One row per image: the image | its ground truth | the probe's prediction.

    ``thumbnails`` [N,3,t,t] uint8; ``truth`` / ``prediction`` [N,H,W] (mask, depth) or
    [N,3,H,W] (normals); ``valid`` [N,H,W] bool (depth, normals) blacks out unmeasured pixels."""
    rows = len(thumbnails)
    if not rows or len(truth) != rows or len(prediction) != rows:
        raise ValueError(
            f"examples: {len(thumbnails)} images, {len(truth)} targets, {len(prediction)} predictions; need equal, > 0"
        )
    fig = _figure(6.6, 2.2 * rows + 0.4)
    for i in range(rows):
        ok = None if valid is None else valid[i]
        if kind == "depth":
            ok = ok if ok is not None else torch.isfinite(truth[i])
            span = _depth_span(truth[i], ok)
            panels = [colourize(truth[i], kind, ok, span), colourize(prediction[i], kind, None, span)]
        else:
            panels = [colourize(truth[i], kind, ok), colourize(prediction[i], kind, ok if kind == "normals" else None)]
        image = thumbnails[i].permute(1, 2, 0).cpu().numpy()
        for j, (picture, name) in enumerate(zip([image, *panels], ("image", "ground truth", "prediction"))):
            ax = fig.add_subplot(rows, 3, 3 * i + j + 1)
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_examples(
    ctx: Any,
    task: str,
    thumbnails: torch.Tensor | None,
    truth: torch.Tensor,
    prediction: torch.Tensor,
    kind: str,
    valid: torch.Tensor | None = None,
) -> Path | None:
    """Write ``<ctx.extra['examples_dir']>/<task>_examples.png`` from the first :data:`EXAMPLES` val
    images; None (nothing written) without a folder or without thumbnails."""
    folder = ctx.extra.get("examples_dir") if isinstance(getattr(ctx, "extra", None), Mapping) else None
    if folder is None or thumbnails is None:
        return None
    n = min(EXAMPLES, len(thumbnails))
    fig = examples_figure(
        thumbnails[:n], truth[:n], prediction[:n], kind, None if valid is None else valid[:n], title=task
    )
    path = save_figure(fig, Path(folder) / f"{task}_examples.png")
    log.info("wrote %s", path)
    return path

"""The self-supervised targets of ``low_to_high``, ``crop_hires`` and ``hires_teacher``.

Each step takes an upsampled teacher (:class:`radiosharp.upsampled.UpsampledTeacher`: its
``featurize`` is the de-biased, PHI-S normalized teacher call) and a batch of images, draws
one random crop per image (the ``views.zoom`` range, as multi-view training does), forms the
target with the frozen teacher and returns ``(loss, extra)``; ``extra`` holds ``pred``,
``target``, ``mask`` (what the loss compared), ``hires``, ``lowres`` and ``base`` (the
upsampler's output, input features and guidance image) for the logged quality metrics.

Images are rendered at ``u x`` the teacher's input (``S = u * native``) and shrunk with an
antialiased resize where a smaller copy is needed, never warped straight to a small size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.images import resize
from radiosharp.multiview.views import ViewConfig, base_crops, warp
from radiosharp.objectives.config import ObjectiveConfig
from radiosharp.objectives.losses import regression_loss

__all__ = ["TARGETS", "crop_hires_step", "draw_bases", "hires_teacher_step", "low_to_high_step"]

Step = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def draw_bases(
    images: torch.Tensor, views: ViewConfig, size: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random zoom-and-crop per image (drawn image by image), rendered at ``size``."""
    crops = torch.cat([base_crops(1, views, generator) for _ in range(len(images))]).to(images.device)
    return warp(images, crops, size)


def _extra(
    pred: torch.Tensor, target: torch.Tensor, hires: torch.Tensor, lowres: torch.Tensor, base: torch.Tensor
) -> dict[str, torch.Tensor]:
    mask = torch.ones_like(target[:, :1])
    return {"pred": pred, "target": target, "mask": mask, "hires": hires, "lowres": lowres, "base": base}


def low_to_high_step(
    up: Any, images: torch.Tensor, objective: ObjectiveConfig, views: ViewConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Featurize the image shrunk ``u`` times, upsample it ``u x`` guided by the image at the
    teacher's size, regress onto the teacher's features of that image."""
    native, u = up.teacher.native_size, up.upsampler.factor
    base = resize(draw_bases(images, views, (u * native, u * native), generator), (native, native))
    target = up.featurize(base)
    (lowres,), _, tiles = up.featurize_batched([resize(base, (native // u, native // u))], base)
    hires = up.upsample(base, lowres, tiles)
    loss = regression_loss(hires, target, None, objective.mse, objective.cosine)
    return loss, _extra(hires, target, hires, lowres, base)


def hires_teacher_step(
    up: Any, images: torch.Tensor, objective: ObjectiveConfig, views: ViewConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Upsample the teacher's features of the image at its size; regress onto the teacher's
    features of the image at ``u x`` that size."""
    native, u = up.teacher.native_size, up.upsampler.factor
    base = draw_bases(images, views, (u * native, u * native), generator)
    target = up.featurize(base)
    (lowres,), _, tiles = up.featurize_batched([resize(base, (native, native))], base)
    hires = up.upsample(base, lowres, tiles)
    loss = regression_loss(hires, target, None, objective.mse, objective.cosine)
    return loss, _extra(hires, target, hires, lowres, base)


def crop_offsets(count: int, cells: int, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[count, 2]`` random (row, column) cell offsets of a ``span``-cell window in a ``cells`` grid."""
    return torch.randint(0, cells - span + 1, (count, 2), generator=generator)


def crop_hires_step(
    up: Any, images: torch.Tensor, objective: ObjectiveConfig, views: ViewConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Upsample the image whole; regress ``crops`` cell-aligned windows of the output onto the
    teacher's features of the same windows of the image (each window is the teacher's input
    size); plus ``consistency`` x the output area-pooled to the low-res grid against the
    low-res features."""
    native, u, patch = up.teacher.native_size, up.upsampler.factor, up.teacher.patch_size
    base = draw_bases(images, views, (u * native, u * native), generator)
    grid, k = native // patch, objective.crops
    offsets = crop_offsets(len(base) * k, u * grid, grid, generator).tolist()
    windows = torch.stack(
        [
            base[i // k, :, r * patch : r * patch + native, c * patch : c * patch + native]
            for i, (r, c) in enumerate(offsets)
        ]
    )
    (lowres, target), _, tiles = up.featurize_batched([resize(base, (native, native)), windows], base)
    hires = up.upsample(base, lowres, tiles)
    pred = torch.stack([hires[i // k, :, r : r + grid, c : c + grid] for i, (r, c) in enumerate(offsets)])
    loss = regression_loss(pred, target, None, objective.mse, objective.cosine)
    if objective.consistency:
        pooled = F.interpolate(hires.float(), size=tuple(lowres.shape[-2:]), mode="area")
        loss = loss + objective.consistency * regression_loss(pooled, lowres, None, objective.mse, objective.cosine)
    return loss, _extra(pred, target, hires, lowres, base)


TARGETS: dict[str, Step] = {
    "low_to_high": low_to_high_step,
    "crop_hires": crop_hires_step,
    "hires_teacher": hires_teacher_step,
}

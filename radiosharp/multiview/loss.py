"""The multi-view consistency loss: draw views of a batch, warp hi-res features, compare.

For an image ``x`` the upsampler gives hi-res features ``F = up(x)``; for each jittered
view ``T_v`` the loss is ``MSE(down(T_v F), teacher(T_v x))`` over the cells the warp
fills. :func:`consistency_step` is one training (or evaluation) pass of an upsampled
teacher. The view geometry is :mod:`radiosharp.multiview.views`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.images import resize
from radiosharp.multiview.views import ViewConfig, base_crops, covered_mask, view_jitters, warp, warp_views
from radiosharp.objectives.losses import masked_mse, regression_loss

__all__ = ["Downsample", "consistency_step", "masked_mse", "multiview_loss", "multiview_views"]


def multiview_views(
    images: torch.Tensor,
    cfg: ViewConfig,
    base_size: tuple[int, int],
    view_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one base crop per image and V jitters of it.

    Returns ``(base [B,3,*base_size], views [B*V,3,*view_size], jitters [B*V,3,3])``:
    the base crop is rendered at the upsampler's guidance size. Each view is warped
    straight from the source image (one resampling, not two) at that same guidance
    size and then shrunk to the teacher's input size with an antialiased resize,
    exactly as the upsampler's own low-res input is made from the base; warping
    directly to the small size would alias (a plain ``grid_sample`` reads one point
    per output pixel). Views are row-major per image: index ``b*V + v``.

    Random numbers are drawn image by image (its crop, then its V jitters), so with a
    seeded generator an image's views do not depend on how the images are batched.
    """
    B, V = len(images), cfg.num_views
    drawn = [(base_crops(1, cfg, generator), view_jitters(V, cfg, generator)) for _ in range(B)]
    crops = torch.cat([c for c, _ in drawn]).to(images.device)
    jit = torch.cat([j for _, j in drawn]).to(images.device)
    base = warp(images, crops, base_size)
    composed = crops.repeat_interleave(V, 0) @ jit
    views = resize(warp_views(images, composed, base_size), view_size)
    return base, views, jit


def multiview_loss(
    hires: torch.Tensor,
    jitters: torch.Tensor,
    view_targets: torch.Tensor,
    downsample: Callable[[torch.Tensor], torch.Tensor],
    reach: int = 7,
    mse: float = 1.0,
    cosine: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The consistency loss of hi-res features [B,C,U,U] against teacher views [B*V,C,h,w].

    Also returns the warped-down predictions and targets (for fidelity) and the mask
    of cells the loss counts (:func:`covered_mask`; ``reach`` = the downsampler's kernel).
    ``mse`` / ``cosine`` weigh the two regression terms (:func:`~radiosharp.objectives.losses.regression_loss`).
    """
    size_hi, size_lo = tuple(hires.shape[-2:]), tuple(view_targets.shape[-2:])
    warped = warp_views(hires, jitters, size_hi)
    pred = downsample(warped)
    if tuple(pred.shape[-2:]) != size_lo:
        pred = F.interpolate(pred, size=size_lo, mode="bilinear", align_corners=False)
    mask = covered_mask(jitters, size_hi, size_lo, reach)
    loss = regression_loss(pred, view_targets, mask, mse, cosine)
    return loss, {"pred": pred, "target": view_targets, "mask": mask}


Downsample = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def consistency_step(
    up: Any,
    images: torch.Tensor,
    cfg: ViewConfig,
    downsample: Downsample,
    generator: torch.Generator | None = None,
    mse: float = 1.0,
    cosine: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One multi-view pass of an upsampled teacher (``radiosharp.upsampled.UpsampledTeacher``).

    Draws a base crop at the upsampler's input size (``u * native``) and V views at the
    teacher's size; the upsampler lifts the base's features, which are warped per view,
    brought to the teacher's grid by ``downsample(features, grid)`` and compared with the
    teacher's (de-biased, PHI-S normalized) features of the views. Returns the loss and
    ``pred``, ``target``, ``mask``, ``hires``, ``lowres``, ``base`` for the metrics.
    """
    native, factor = up.teacher.native_size, up.upsampler.factor
    base, view_images, jitters = multiview_views(
        images, cfg, (native * factor, native * factor), (native, native), generator
    )
    # one teacher call: the base's own view, the V jittered views and (for tile upsamplers) the tiles
    (lowres, targets), _, tiles = up.featurize_batched([resize(base, (native, native)), view_images], base)
    hires = up.upsample(base, lowres, tiles)
    grid = tuple(lowres.shape[-2:])
    reach = int(getattr(downsample, "kernel_size", 1))
    loss, extra = multiview_loss(hires, jitters, targets, lambda f: downsample(f, grid), reach, mse, cosine)
    extra.update(hires=hires, lowres=lowres, base=base)
    return loss, extra

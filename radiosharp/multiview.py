"""FeatUp's multi-view consistency: the training signal (and the fidelity metric) of upsamplers.

For an image ``x`` the upsampler gives hi-res features ``F = up(x)``. For each of V
jittered views ``T_v`` (a small zoom, shift, flip, rotation and perspective warp of
``x``) the hi-res features are warped the same way, brought down to the teacher's
grid by a learned attention downsampler, and compared with what the teacher itself
says about the warped image: ``MSE(down(T_v F), teacher(T_v x))``. An upsampler
whose features are consistent across views explains every view at once.

Warps are 3x3 homographies on normalized coordinates ([-1,1], align_corners=False),
so one matrix warps an image and a feature map of any resolution alike.

:func:`consistency_step` is one training (or evaluation) pass of an upsampled
teacher; :func:`fidelity_eval` scores an upsampled teacher on held-out images with
seeded views (what ``radiosharp.eval``'s ``fidelity`` task and the upsampler run's
``heldout.json`` report).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from radiosharp.images import resize


class ViewConfig(BaseModel):
    """How views are drawn (defaults follow FeatSharp's "Long" recipe)."""

    model_config = ConfigDict(extra="forbid")
    num_views: int = Field(default=5, ge=1)
    zoom: tuple[float, float] = (1.0, 2.0)  # the crop shared by an image's views
    jitter_zoom: float = Field(default=0.1, ge=0)  # each view zooms in by up to this much more
    shift: float = Field(default=0.05, ge=0)  # fraction of the view
    rotate_deg: float = Field(default=5.0, ge=0)
    perspective: float = Field(default=0.05, ge=0)
    hflip: float = Field(default=0.5, ge=0, le=1)  # probability

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 1.0 <= lo <= hi:
            raise ValueError(f"zoom must be [low, high] with 1 <= low <= high (1 = the whole image), got {list(value)}")
        return value


def _eye(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.eye(3, device=device, dtype=dtype).expand(n, 3, 3).clone()


def base_crops(n: int, cfg: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n,3,3] zoom-and-crop homographies (output coords -> source coords), inside the image."""
    lo, hi = cfg.zoom
    zoom = lo + (hi - lo) * torch.rand(n, generator=generator)
    scale = 1.0 / zoom
    centre = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    A = _eye(n)
    A[:, 0, 0], A[:, 1, 1] = scale, scale
    A[:, :2, 2] = centre
    return A


def view_jitters(n: int, cfg: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n,3,3] small random homographies: zoom-in, rotation, shift, flip, perspective."""
    g = generator
    scale = 1.0 / (1 + cfg.jitter_zoom * torch.rand(n, generator=g))
    theta = math.radians(cfg.rotate_deg) * (2 * torch.rand(n, generator=g) - 1)
    flip = torch.where(torch.rand(n, generator=g) < cfg.hflip, -1.0, 1.0)
    shift = cfg.shift * (2 * torch.rand(n, 2, generator=g) - 1)
    persp = cfg.perspective * (2 * torch.rand(n, 2, generator=g) - 1)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    A = _eye(n)
    A[:, 0, 0], A[:, 0, 1] = cos * flip, -sin
    A[:, 1, 0], A[:, 1, 1] = sin * flip, cos
    A[:, :2, 2] = shift
    A[:, 2, :2] = persp
    return A


def homography_grid(A: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid [n,h,w,2] for ``grid_sample`` from homographies [n,3,3]."""
    h, w = size
    ys = (torch.arange(h, device=A.device, dtype=A.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=A.device, dtype=A.dtype) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)  # [hw,3]
    out = pts @ A.transpose(1, 2)  # [n,hw,3]
    grid = out[..., :2] / out[..., 2:].clamp_min(1e-6)
    return grid.reshape(len(A), h, w, 2)


def warp(x: torch.Tensor, A: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Warp [n,C,H,W] by homographies [n,3,3] to ``size``; outside the source reads zeros.

    Sampling runs in float32 whatever the input dtype: a bf16 grid is off by up to
    half a pixel at 256 px, which would blur every view under mixed precision.
    """
    if len(A) != len(x):
        raise ValueError(f"warp: {len(A)} homographies for {len(x)} maps; give one per map")
    return warp_views(x, A, size, mode)


def warp_views(x: torch.Tensor, A: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Warp each of the B maps [B,C,H,W] by its V homographies ``A`` [B*V,3,3] (row ``b*V + v``).

    Returns [B*V,C,*size]. The V grids of a map are stacked along height and sampled
    in one ``grid_sample``, so the maps are never repeated V times (autograd would
    keep that copy for backward); each output value is computed as :func:`warp` does.
    """
    B, (h, w) = len(x), size
    if B == 0 or len(A) % B:
        raise ValueError(f"warp: {len(A)} homographies for {B} maps; give one per map, or V per map")
    V = len(A) // B
    grid = homography_grid(A.to(x.device, torch.float32), size).view(B, V * h, w, 2)
    out = F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = out.view(B, x.shape[1], V, h, w).transpose(1, 2).reshape(B * V, x.shape[1], h, w)
    return out.to(x.dtype)


def valid_mask(A: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[n,1,h,w] 1 where the warped cell centre lies inside the source, else 0."""
    grid = homography_grid(A.float(), size)
    return (grid.abs() <= 1).all(-1, keepdim=True).permute(0, 3, 1, 2).float()


def covered_mask(A: torch.Tensor, size_hi: tuple[int, int], size_lo: tuple[int, int], reach: int = 7
                 ) -> torch.Tensor:
    """[n,1,h,w] 1 for low-res cells whose downsampling reads only warped-in content.

    Warping hi-res features by ``A`` fills what lies outside the source with zeros
    (fading in over the last pixel). A low-res cell is kept only if no hi-res pixel
    within ``reach`` (the downsampler's kernel) of its footprint is such padding;
    otherwise the loss would teach the upsampler to darken its borders.
    """
    ones = torch.ones(len(A), 1, *size_hi, device=A.device)
    outside = (warp(ones, A, size_hi) < 1 - 1e-3).float()
    if reach > 1:
        outside = F.max_pool2d(outside, reach, stride=1, padding=reach // 2)
    return (F.adaptive_max_pool2d(outside, size_lo) == 0).float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over channels and valid cells of (pred - target)^2."""
    err = (pred - target).pow(2).mean(1, keepdim=True)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def multiview_views(images: torch.Tensor, cfg: ViewConfig, base_size: tuple[int, int],
                    view_size: tuple[int, int], generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The consistency loss of hi-res features [B,C,U,U] against teacher views [B*V,C,h,w].

    Also returns the warped-down predictions and targets (for fidelity) and the mask
    of cells the loss counts (:func:`covered_mask`; ``reach`` = the downsampler's kernel).
    """
    size_hi, size_lo = tuple(hires.shape[-2:]), tuple(view_targets.shape[-2:])
    warped = warp_views(hires, jitters, size_hi)
    pred = downsample(warped)
    if tuple(pred.shape[-2:]) != size_lo:
        pred = F.interpolate(pred, size=size_lo, mode="bilinear", align_corners=False)
    mask = covered_mask(jitters, size_hi, size_lo, reach)
    loss = masked_mse(pred, view_targets, mask)
    return loss, {"pred": pred, "target": view_targets, "mask": mask}


Downsample = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def consistency_step(up: Any, images: torch.Tensor, cfg: ViewConfig, downsample: Downsample,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One multi-view pass of an upsampled teacher (``radiosharp.upsampled.UpsampledTeacher``).

    Draws a base crop at the upsampler's input size (``u * native``) and V views at the
    teacher's size; the upsampler lifts the base's features, which are warped per view,
    brought to the teacher's grid by ``downsample(features, grid)`` and compared with the
    teacher's (de-biased, PHI-S normalized) features of the views. Returns the loss and
    ``pred``, ``target``, ``mask``, ``hires``, ``lowres``, ``base`` for the metrics.
    """
    native, factor = up.teacher.native_size, up.upsampler.factor
    base, view_images, jitters = multiview_views(images, cfg, (native * factor, native * factor),
                                                 (native, native), generator)
    # one teacher call: the base's own view, the V jittered views and (for tile upsamplers) the tiles
    (lowres, targets), _, tiles = up.featurize_batched([resize(base, (native, native)), view_images], base)
    hires = up.upsample(base, lowres, tiles)
    grid = tuple(lowres.shape[-2:])
    reach = int(getattr(downsample, "kernel_size", 1))
    loss, extra = multiview_loss(hires, jitters, targets, lambda f: downsample(f, grid), reach)
    extra.update(hires=hires, lowres=lowres, base=base)
    return loss, extra


def _sample_tokens(x: torch.Tensor, limit: int = 1024, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` seeded random ``[C]`` tokens of an NCHW map (MMD is quadratic in them)."""
    tokens = x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1]).float()
    if len(tokens) > limit:
        g = torch.Generator(device="cpu").manual_seed(seed)
        tokens = tokens[torch.randperm(len(tokens), generator=g)[:limit].to(tokens.device)]
    return tokens


@torch.no_grad()
def quality_metrics(extra: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fidelity, TV, CRF and MMD (low-res vs hi-res tokens) of one :func:`consistency_step`."""
    from radiosharp.eval import metrics as M

    return {
        "fidelity": float(M.fidelity(extra["target"], extra["pred"], extra["mask"])),
        "tv": float(M.total_variation(extra["hires"].float())),
        "crf": float(M.crf_loss(extra["hires"].float(), extra["base"])),
        "mmd": float(M.mmd_rbf(_sample_tokens(extra["lowres"]), _sample_tokens(extra["hires"]))),
    }


@torch.no_grad()
def fidelity_eval(up: Any, images: torch.Tensor, generator: torch.Generator | None = None,
                  views: ViewConfig | Mapping[str, Any] | None = None,
                  downsampler: Callable[..., torch.Tensor] | None = None,
                  batch_size: int = 4) -> dict[str, float]:
    """Multi-view metrics of an upsampled teacher over ``images`` [N,3,H,W].

    ``fidelity`` is pooled over all images (one ratio of sums, not a mean of ratios);
    ``loss``, ``tv``, ``crf`` and ``mmd`` are image-weighted means of the per-batch
    values. ``generator`` seeds the views, so upsamplers scored with the same seed see
    the same views. ``downsampler``: the run's trained attention downsampler (called
    as ``downsampler(features, grid)``); by default a fixed antialiased bilinear
    resize, the same for every upsampler. The model is put in eval mode for the call.
    """
    from radiosharp.eval import metrics as M

    cfg = views if isinstance(views, ViewConfig) else ViewConfig.model_validate(dict(views or {}))
    down = downsampler if downsampler is not None else resize
    modules = [m for m in (up, downsampler) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    n = len(images)
    if n == 0:
        raise ValueError("fidelity_eval: no images")
    sums: dict[str, float] = {}
    preds, targets, masks = [], [], []
    try:
        for start in range(0, n, batch_size):
            batch = images[start: start + batch_size]
            loss, extra = consistency_step(up, batch, cfg, down, generator)
            weight = len(batch) / n
            for key, value in {"loss": float(loss), **quality_metrics(extra)}.items():
                if key != "fidelity":
                    sums[key] = sums.get(key, 0.0) + weight * value
            preds.append(extra["pred"].float().cpu())
            targets.append(extra["target"].float().cpu())
            masks.append(extra["mask"].cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    sums["fidelity"] = float(M.fidelity(torch.cat(targets), torch.cat(preds), torch.cat(masks)))
    return sums


class NoImagesError(ValueError):
    """A data source gave no readable image to score on."""


def first_images(dataset: Any, n: int) -> torch.Tensor:
    """The first ``n`` readable images [n,3,H,W] of a map-style or streaming (webdataset) source.

    Read in data order through the project's loader, so unreadable samples are skipped
    (and logged) for both kinds of source. Raises :class:`NoImagesError` when there are none.
    """
    from radiosharp.data.loader import make_loader

    images, count = [], 0
    for batch in make_loader(dataset, max(1, min(n, 16)), shuffle=False):
        if batch:
            images.append(batch["image"].float())
            count += len(images[-1])
        if count >= n:
            break
    if not images:
        raise NoImagesError("the data source gave no images")
    return torch.cat(images)[:n]

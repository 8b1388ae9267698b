"""View geometry of multi-view consistency: how views are drawn and how maps are warped.

Warps are 3x3 homographies on normalized coordinates ([-1,1], align_corners=False),
so one matrix warps an image and a feature map of any resolution alike. This module
draws the homographies (:func:`base_crops`, :func:`view_jitters`), samples with them
(:func:`warp`, :func:`warp_views`) and says which cells a warp fills
(:func:`valid_mask`, :func:`covered_mask`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ViewConfig",
    "base_crops",
    "covered_mask",
    "homography_grid",
    "valid_mask",
    "view_jitters",
    "warp",
    "warp_views",
]


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


def _eye(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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


def covered_mask(A: torch.Tensor, size_hi: tuple[int, int], size_lo: tuple[int, int], reach: int = 7) -> torch.Tensor:
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

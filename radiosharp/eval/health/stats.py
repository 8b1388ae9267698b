"""The token statistics of eval health: high-norm outlier tokens and tile-seam energy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

OUTLIER_K = 6.0
TILE_COUNTS = (2, 3, 4)
SEAM_WINDOW = 2  # tokens each side of a boundary whose differences are the seam baseline


def outlier_mask(norms: torch.Tensor, k: float = OUTLIER_K) -> torch.Tensor:
    """Bool ``[B,h,w]``: tokens whose norm exceeds ``median + k * MAD`` of their own image.

    ``norms`` is ``[B,h,w]``. The MAD has a floor of ``1e-6 * median`` so that a map of
    (numerically) equal norms flags only the tokens above it.
    """
    flat = norms.flatten(1).double()
    median = flat.median(dim=1, keepdim=True).values
    mad = (flat - median).abs().median(dim=1, keepdim=True).values
    mad = torch.maximum(mad, 1e-6 * median.abs() + 1e-12)
    return (flat > median + k * mad).view_as(norms)


def outlier_stats(backbone: torch.Tensor, k: float = OUTLIER_K) -> dict[str, Any]:
    """Outlier tokens of backbone tokens ``[B,D,h,w]``: counts, fraction, max norm / median norm."""
    norms = backbone.double().norm(dim=1)
    mask = outlier_mask(norms, k)
    median = norms.flatten(1).median(dim=1).values.clamp_min(1e-12)
    ratios = norms.flatten(1).max(dim=1).values / median
    return {
        "outliers": int(mask.sum()),
        "tokens": int(mask.numel()),
        "fraction": int(mask.sum()) / mask.numel(),
        "max_norm_ratio": float(ratios.max()),
        "median_norm": float(median.mean()),
    }


def difference_profile(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared difference of adjacent tokens of ``[B,C,h,w]``, per offset.

    Returns (along the width ``[w-1]``, along the height ``[h-1]``): entry ``j`` is the
    mean over images, channels and the other axis of ``(x[j+1] - x[j])**2``.
    """
    x = features.double()
    dx = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(0, 1, 2))
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(0, 1, 3))
    return dx, dy


def boundary_offsets(n: int, tiles: int) -> list[int]:
    """Indices into an ``n``-token axis's ``n-1`` adjacent differences that cross a tile boundary."""
    return sorted({int(round(j * n / tiles)) - 1 for j in range(1, tiles) if 0 < round(j * n / tiles) < n})


def seam_ratio_from_profiles(dx: torch.Tensor, dy: torch.Tensor, tiles: int, window: int = SEAM_WINDOW) -> float | None:
    """Mean difference energy across the ``tiles`` boundaries over the mean at the other offsets
    within ``window`` tokens of a boundary (both axes); None where a tile is under two tokens wide.

    The baseline is local so that content that is not spread evenly over the image (photos
    put their subject in the middle, on the t=2 boundary) does not read as a seam.
    """
    on, off = [], []
    for profile in (dx, dy):
        n = profile.numel() + 1
        if n < 2 * tiles:  # a tile of one token has no inside
            return None
        boundaries = boundary_offsets(n, tiles)
        near = {o for b in boundaries for o in range(b - window, b + window + 1) if 0 <= o < profile.numel()}
        on.append(profile[boundaries])
        off.append(profile[sorted(near - set(boundaries))])
    on_mean, off_mean = float(torch.cat(on).mean()), float(torch.cat(off).mean())
    if off_mean <= 0.0:  # a map constant off the boundaries: undefined if it steps at them, else no seam
        return None if on_mean > 0.0 else 1.0
    return on_mean / off_mean


def seam_ratios(features: torch.Tensor, tile_counts: Sequence[int] = TILE_COUNTS) -> dict[str, float | None]:
    """``{"t": ratio}`` of a feature map ``[B,C,h,w]`` (None where a tile would be one token wide)."""
    dx, dy = difference_profile(features)
    return {str(t): seam_ratio_from_profiles(dx, dy, t) for t in tile_counts}

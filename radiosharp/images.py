"""The one resize every part uses (images and feature maps); a leaf module."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of images or feature maps ``[..., H, W]``,
    antialiased when shrinking (in float32 for half-precision input); a no-op at equal size."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    if shrink and x.dtype in (torch.float16, torch.bfloat16):  # the antialiased kernel has no half-precision CPU build
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)

"""Square crops at a fixed side for images, class masks and depth maps.

Every source returns ``S x S`` samples: the shorter side is scaled to ``S`` and the
centre is cropped square. We crop the centre square first and resize it second, which
is the same geometry and touches fewer pixels. Images are resized bilinearly with
antialiasing (no aliasing when a 4000 px photo becomes 224 px). Class masks use nearest
neighbour, so no pixel gets a class that mixes two neighbours. Depth uses nearest by
default for the same reason (a bilinear blend across an object edge is a depth that
exists nowhere in the scene, and it smears the 0 = "no measurement" holes of NYU-style
maps into valid pixels); ``bilinear`` is available for smooth, hole-free depth.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from radiosharp.data.errors import DataError
from radiosharp.images import resize

DepthResize = Literal["nearest", "bilinear"]
DEPTH_RESIZE_MODES = ("nearest", "bilinear")


def center_square(t: torch.Tensor) -> torch.Tensor:
    """The centred ``min(H,W)`` square of ``[..., H, W]``."""
    h, w = t.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return t[..., top : top + side, left : left + side]


def check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise DataError(f"data size must be a positive integer (the output side in pixels), got {size!r}")
    return size


def image_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3,H,W]`` (uint8 0..255 or float 0..1) -> float ``[3,size,size]`` in [0,1]."""
    square = center_square(image)  # crop the uint8 pixels first: fewer of them to convert to float
    square = square.float().div_(255.0) if square.dtype == torch.uint8 else square.float()
    # out of place: a float input that is already square must not be clamped under its owner
    return resize(square[None], (size, size))[0].clamp(0.0, 1.0).contiguous()


def mask_to_square(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``[H,W]`` integer class mask -> long ``[size,size]`` (nearest neighbour)."""
    square = center_square(mask)
    if square.shape[-1] != size:
        square = F.interpolate(square[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0]
    return square.long().contiguous()


def check_depth_resize(mode: str, where: str = "") -> None:
    """A DataError naming ``where`` and the valid modes unless ``mode`` is one of :data:`DEPTH_RESIZE_MODES`."""
    if mode not in DEPTH_RESIZE_MODES:
        at = f"{where}: " if where else ""
        raise DataError(f"{at}depth_resize '{mode}' is not valid; valid: {', '.join(DEPTH_RESIZE_MODES)}")


def depth_to_square(depth: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """``[H,W]`` depth -> float ``[size,size]``; ``mode`` is ``nearest`` or ``bilinear``."""
    check_depth_resize(mode)
    square = center_square(depth.float())
    if square.shape[-1] != size:
        if mode == "nearest":
            square = F.interpolate(square[None, None], size=(size, size), mode="nearest-exact")[0, 0]
        else:
            square = resize(square[None, None], (size, size))[0, 0]
    return square.contiguous()


class LabelledSource:
    """``class_names`` / ``num_classes`` for sources with a ``classes`` list (empty: unlabelled)."""

    classes: list[str]

    @property
    def class_names(self) -> list[str] | None:
        return self.classes or None

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) or None

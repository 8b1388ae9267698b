"""The input geometry of a distillation partition, step by step: size, aspect ratio, mosaic.

A ``kind: distill`` partition gives the student's input size either as one ``size`` (a
side, or ``[H, W]``) or as a set ``sizes`` to draw from at every step (stochastic
multi-resolution training, RADIO Amplified / C-RADIOv4); optionally ``aspect_ratios``
(a set of W/H drawn per step; the drawn side's area is kept and each side rounded to a
multiple of the patch size) and ``mosaic`` (a set of grid sides k drawn per step: the
input is then a k x k mosaic of downscaled images of the batch, RADIO Amplified's
mosaic augmentation, so that a hi-res partition shows the student many small objects).

Every draw is a pure function of ``(recipe seed, step, partition index, what is drawn)``:
each comes from its own ``torch.Generator`` seeded from a hash of those, never from the
global random state. A resumed run draws what the uninterrupted run drew, and every
process draws the same plan, so all DDP ranks build graphs of one shape.

:func:`partition_inputs` turns a plan into the two images of a partition: a non-square
plan first centre-crops each image to its aspect (nothing is stretched; a square plan
leaves the dataset's square images untouched), the student input is that crop resized to
``[H, W]``, and a mosaic is composed directly at ``[H, W]``. The teachers get the image
the student input was made from (the crop, or the very mosaic) and resize it to their
own input size as they always do; the loss resizes their maps to the student's grid.

A mosaic is composed from one process's share of the partition's images (every image
once per tile position, so the batch keeps its size): with ``mosaic``, N processes draw
the same plan as one process but group other images into each mosaic (resume stays
exact). Sizes and aspect ratios are independent of the number of processes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from radiosharp.contracts import check_image_size, nearest_multiples
from radiosharp.images import resize

__all__ = [
    "InputPlan",
    "ResolutionOptions",
    "check_partition_sizes",
    "compose_mosaic",
    "crop_to_aspect",
    "draw_generator",
    "mosaic_sources",
    "partition_inputs",
    "plan_partition",
]

Size = int | tuple[int, int]
T = TypeVar("T")


class ResolutionOptions(Protocol):
    """The geometry keys of a partition (``distill.partitions[*]``)."""

    size: Size | None
    sizes: list[Size] | None
    aspect_ratios: list[float] | None
    mosaic: list[int] | None


@dataclass(frozen=True)
class InputPlan:
    """One step's geometry of one partition: the student input ``[H, W]`` and the mosaic side k."""

    size: tuple[int, int]
    mosaic: int = 1


def as_hw(size: Size) -> tuple[int, int]:
    """``384 -> (384, 384)``; ``[384, 512] -> (384, 512)`` ([H, W])."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def draw_generator(seed: int, step: int, index: int, what: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, partition index, what)`` alone.

    A hash mixes the four, so neighbouring steps get unrelated streams and one draw (the
    size, say) does not change when another option (a mosaic) is added to the recipe.
    """
    digest = hashlib.sha256(f"radiosharp.resolution:{seed}:{step}:{index}:{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _pick(options: Sequence[T], generator: torch.Generator) -> T:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def with_aspect(side: int, aspect: float, patch_size: int) -> tuple[int, int]:
    """``[H, W]`` of about ``side**2`` pixels with ``W / H`` about ``aspect``, in whole patches."""
    height = max(patch_size, round(side / math.sqrt(aspect) / patch_size) * patch_size)
    width = max(patch_size, round(side * math.sqrt(aspect) / patch_size) * patch_size)
    return (height, width)


def plan_partition(options: ResolutionOptions, patch_size: int, seed: int, step: int, index: int) -> InputPlan:
    """The partition's geometry at ``step``: a pure function of its arguments."""
    if options.sizes is not None:
        size = as_hw(_pick(options.sizes, draw_generator(seed, step, index, "size")))
    else:
        assert options.size is not None  # the config's validator: exactly one of size / sizes
        size = as_hw(options.size)
    if options.aspect_ratios:
        aspect = float(_pick(options.aspect_ratios, draw_generator(seed, step, index, "aspect")))
        size = with_aspect(size[0], aspect, patch_size)
    mosaic = int(_pick(options.mosaic, draw_generator(seed, step, index, "mosaic"))) if options.mosaic else 1
    return InputPlan(size, mosaic)


def check_partition_sizes(options: ResolutionOptions, patch_size: int) -> None:
    """Every size a partition can draw must be whole patches; a ValueError starting with the key otherwise."""
    if options.size is not None:
        height, width = as_hw(options.size)
        try:
            check_image_size(height, width, patch_size, "student")
        except ValueError as err:
            raise ValueError(f"size: {err}") from None
        return
    bad = [s for s in options.sizes or [] if any(side % patch_size for side in as_hw(s))]
    if bad:
        shown = ", ".join(str(s if isinstance(s, int) else list(s)) for s in bad)
        sides = sorted({side for s in bad for side in as_hw(s) if side % patch_size})
        nearest = ", ".join(
            str(n) for n in sorted({n for side in sides[:3] for n in nearest_multiples(side, patch_size)})
        )
        raise ValueError(
            f"sizes: {shown} {'is' if len(bad) == 1 else 'are'} not a multiple of the student patch size "
            f"{patch_size} (every size of the set must be; nearest valid sides: {nearest})"
        )


def crop_to_aspect(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The largest centred crop of ``images [..., H, W]`` with the aspect of ``size`` ([H, W]).

    Images already of that aspect (square images for a square size) are returned as they are.
    """
    height, width = images.shape[-2:]
    want_h, want_w = size
    if height * want_w == width * want_h:
        return images
    if height * want_w > width * want_h:  # too tall: keep the width
        crop = max(1, round(width * want_h / want_w))
        top = (height - crop) // 2
        return images[..., top : top + crop, :]
    crop = max(1, round(height * want_w / want_h))
    left = (width - crop) // 2
    return images[..., :, left : left + crop]


def mosaic_sources(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Which image fills each tile: ``[batch, k*k]`` indices into the batch (tiles row-major).

    Each tile position is a permutation of the batch, so every image appears once per
    tile position (``k*k`` times in all) and the batch keeps its size.
    """
    if k * k == 1:
        return torch.arange(batch)[:, None]
    return torch.stack([torch.randperm(batch, generator=generator) for _ in range(k * k)], dim=1)


def _bounds(length: int, k: int) -> list[int]:
    return [round(i * length / k) for i in range(k + 1)]


def compose_mosaic(images: torch.Tensor, sources: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mosaics ``[len(sources), C, H, W]``: tile ``j`` (row-major) of mosaic ``i`` is image
    ``sources[i, j]`` of ``images``, cropped to the aspect of ``size`` and downscaled to the tile.

    ``sources`` is ``[N, k*k]``; the tile edges are ``round(r * H / k)`` and ``round(c * W / k)``,
    so tiles differ by at most one pixel when ``k`` does not divide ``H`` or ``W``.
    """
    k = math.isqrt(sources.shape[1])
    if k * k != sources.shape[1] or k < 1:
        raise ValueError(f"sources must be [N, k*k], got {tuple(sources.shape)}")
    height, width = size
    if height < k or width < k:
        raise ValueError(f"a {k}x{k} mosaic needs at least {k} pixels a side, got {height}x{width}")
    cropped = crop_to_aspect(images, size)
    rows, cols = _bounds(height, k), _bounds(width, k)
    scaled: dict[tuple[int, int], torch.Tensor] = {}
    out = images.new_empty((sources.shape[0], images.shape[1], height, width))
    for r in range(k):
        for c in range(k):
            tile = (rows[r + 1] - rows[r], cols[c + 1] - cols[c])
            if tile not in scaled:
                scaled[tile] = resize(cropped, tile)
            out[:, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = scaled[tile][sources[:, r * k + c]]
    return out


def partition_inputs(
    images: torch.Tensor, plan: InputPlan, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(student input [B,3,H,W], teacher input)`` of a partition's images under ``plan``.

    Without a mosaic the teachers get the images (cropped to the plan's aspect) and the
    student gets them resized to the plan's size; with one, both get the same composed
    mosaic (``generator`` draws which image fills which tile).
    """
    if plan.mosaic > 1:
        if generator is None:
            raise ValueError("a mosaic plan needs a generator to draw the tiles' images")
        mosaic = compose_mosaic(
            images, mosaic_sources(len(images), plan.mosaic, generator).to(images.device), plan.size
        )
        return mosaic, mosaic
    source = crop_to_aspect(images, plan.size)
    return resize(source, plan.size), source

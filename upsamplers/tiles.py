"""``tiles`` (a u x u mosaic of teacher calls) and ``s2`` (its blend with bilinear).

Tiling is what gives an upsampler new detail: each tile is seen by the teacher at its
full input resolution, so the mosaic holds what the teacher can resolve at ``u x``
the input, at the cost of ``u^2`` teacher calls and seams between tiles (no overlap,
as in NVlabs/FeatSharp). All tiles of all images go through ONE ``featurize`` call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler, UpsampleSpec
from upsamplers._mosaic import cut_tiles, stitch_tiles, tile_mosaic  # noqa: F401 (re-exported)


class TilesUpsampler(Upsampler):
    """The ``u x u`` mosaic; at ``u = 1`` it is the teacher itself (one call on the resized image)."""

    uses_tiles = True

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        return self.tile_mosaic(images, lowres, featurize, tile_features)


class S2Upsampler(Upsampler):
    """S2-style blend: ``beta * bilinear(lowres) + (1 - beta) * tiles``."""

    def __init__(self, spec: UpsampleSpec = UpsampleSpec(), beta: float = 0.5) -> None:
        super().__init__(spec)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"s2: beta must be in [0, 1], got {beta}")
        self.beta = beta

    uses_tiles = True

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        tiles = self.tile_mosaic(images, lowres, featurize, tile_features)
        smooth = torch.nn.functional.interpolate(lowres, size=tiles.shape[-2:], mode="bilinear", align_corners=False)
        return self.beta * smooth + (1 - self.beta) * tiles

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


# the classes are the builders (their options: the UpsampleSpec's, and s2's beta)
build_tiles = UPSAMPLERS.register("tiles")(TilesUpsampler)
build_s2 = UPSAMPLERS.register("s2")(S2Upsampler)

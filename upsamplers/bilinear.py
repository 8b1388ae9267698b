"""``bilinear``: the training-free baseline every learned upsampler must beat."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler


class BilinearUpsampler(Upsampler):
    """``F.interpolate(lowres, scale u, bilinear, align_corners=False)``; ignores the image."""

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        if self.factor == 1:
            return lowres
        return F.interpolate(lowres, size=self.output_size(lowres), mode="bilinear", align_corners=False)


# the class is the builder: its options are the UpsampleSpec's (factor, dim, patch_size)
build_bilinear = UPSAMPLERS.register("bilinear")(BilinearUpsampler)

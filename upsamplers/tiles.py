"""``tiles`` (a u x u mosaic of teacher calls) and ``s2`` (its blend with bilinear).

Tiling is what gives an upsampler new detail: each tile is seen by the teacher at its
full input resolution, so the mosaic holds what the teacher can resolve at ``u x``
the input, at the cost of ``u^2`` teacher calls and seams between tiles (no overlap,
as in NVlabs/FeatSharp). All tiles of all images go through ONE ``featurize`` call.
"""
from __future__ import annotations

import torch

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler, recorded, resize


def cut_tiles(images: torch.Tensor, u: int, tile_size: tuple[int, int]) -> torch.Tensor:
    """The ``u x u`` tiles of ``images`` [B,3,H,W], each resized to ``tile_size``: ``[B*u*u,3,th,tw]``.

    Tile (i,j) of image b is row ``b*u*u + i*u + j``. If H or W is not a multiple of u
    the image is first resized to ``u * tile_size``.
    """
    if u < 1:
        raise ValueError(f"tile_mosaic: u must be >= 1, got {u}")
    b, c, height, width = images.shape
    th, tw = int(tile_size[0]), int(tile_size[1])
    if height % u or width % u:
        images = resize(images, (u * th, u * tw))
        height, width = u * th, u * tw
    tiles = (images.reshape(b, c, u, height // u, u, width // u)
             .permute(0, 2, 4, 1, 3, 5)
             .reshape(b * u * u, c, height // u, width // u))
    return resize(tiles, (th, tw))


def stitch_tiles(feats: torch.Tensor, batch: int, u: int) -> torch.Tensor:
    """``[B*u*u,C,h,w]`` tile features (order of :func:`cut_tiles`) -> one ``[B,C,u*h,u*w]`` map."""
    if feats.ndim != 4 or feats.shape[0] != batch * u * u:
        raise ValueError(f"tile_mosaic: got tile features {tuple(feats.shape)} for {batch * u * u} tiles; "
                         f"expected [{batch * u * u},C,h,w]")
    fc, fh, fw = feats.shape[1:]
    return (feats.reshape(batch, u, u, fc, fh, fw)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(batch, fc, u * fh, u * fw))


def tile_mosaic(images: torch.Tensor, u: int, featurize: Featurize, tile_size: tuple[int, int],
                tile_features: torch.Tensor | None = None) -> torch.Tensor:
    """Features of a ``u x u`` tiling of ``images``, stitched back into one map.

    All ``B*u*u`` tiles go through a single ``featurize`` call, unless the caller
    already featurized :func:`cut_tiles` of these images together with other teacher
    inputs and passes the result as ``tile_features`` (one teacher call per step).
    """
    if tile_features is None:
        tile_features = featurize(cut_tiles(images, u, tile_size))
    return stitch_tiles(tile_features, images.shape[0], u)


class TilesUpsampler(Upsampler):
    """The ``u x u`` mosaic; at ``u = 1`` it is the teacher itself (one call on the resized image)."""

    uses_tiles = True

    def forward(self, images: torch.Tensor, lowres: torch.Tensor, featurize: Featurize,
                tile_features: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(images, lowres)
        return self.tile_mosaic(images, lowres, featurize, tile_features)


class S2Upsampler(Upsampler):
    """S2-style blend: ``beta * bilinear(lowres) + (1 - beta) * tiles``."""

    def __init__(self, factor: int, dim: int, patch_size: int, beta: float = 0.5) -> None:
        super().__init__(factor, dim, patch_size)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"s2: beta must be in [0, 1], got {beta}")
        self.beta = beta

    uses_tiles = True

    def forward(self, images: torch.Tensor, lowres: torch.Tensor, featurize: Featurize,
                tile_features: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(images, lowres)
        tiles = self.tile_mosaic(images, lowres, featurize, tile_features)
        smooth = torch.nn.functional.interpolate(lowres, size=tiles.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        return self.beta * smooth + (1 - self.beta) * tiles

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


@UPSAMPLERS.register("tiles")
def build_tiles(factor: int = 2, dim: int = 0, patch_size: int = 14) -> TilesUpsampler:
    return recorded("tiles", TilesUpsampler(factor, dim, patch_size))


@UPSAMPLERS.register("s2")
def build_s2(factor: int = 2, dim: int = 0, patch_size: int = 14, beta: float = 0.5) -> S2Upsampler:
    return recorded("s2", S2Upsampler(factor, dim, patch_size, beta), beta=beta)

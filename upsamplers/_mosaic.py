"""The tile mosaic: cut images into ``u x u`` tiles, featurize them in one call, stitch the maps.

A leaf module: the upsampler base class (:mod:`upsamplers._base`) and the ``tiles`` /
``s2`` / ``featsharp`` upsamplers all build on it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from radiosharp.images import resize

Featurize = Callable[[Tensor], Tensor]


def cut_tiles(images: Tensor, u: int, tile_size: tuple[int, int]) -> Tensor:
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
    tiles = (
        images.reshape(b, c, u, height // u, u, width // u)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b * u * u, c, height // u, width // u)
    )
    return resize(tiles, (th, tw))


def stitch_tiles(feats: Tensor, batch: int, u: int) -> Tensor:
    """``[B*u*u,C,h,w]`` tile features (order of :func:`cut_tiles`) -> one ``[B,C,u*h,u*w]`` map."""
    if feats.ndim != 4 or feats.shape[0] != batch * u * u:
        raise ValueError(
            f"tile_mosaic: got tile features {tuple(feats.shape)} for {batch * u * u} tiles; "
            f"expected [{batch * u * u},C,h,w]"
        )
    fc, fh, fw = feats.shape[1:]
    return feats.reshape(batch, u, u, fc, fh, fw).permute(0, 3, 1, 4, 2, 5).reshape(batch, fc, u * fh, u * fw)


def tile_mosaic(
    images: Tensor, u: int, featurize: Featurize, tile_size: tuple[int, int], tile_features: Tensor | None = None
) -> Tensor:
    """Features of a ``u x u`` tiling of ``images``, stitched back into one map.

    All ``B*u*u`` tiles go through a single ``featurize`` call, unless the caller
    already featurized :func:`cut_tiles` of these images together with other teacher
    inputs and passes the result as ``tile_features`` (one teacher call per step).
    """
    if tile_features is None:
        tile_features = featurize(cut_tiles(images, u, tile_size))
    return stitch_tiles(tile_features, images.shape[0], u)

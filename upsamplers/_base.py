"""The upsampler contract and the small helpers every upsampler shares.

An upsampler lifts a teacher's low-res features ``[B,C,h,w]`` to ``[B,C,u*h,u*w]``
for an integer factor ``u >= 1``. It sees three things: the image (the guidance, at
any resolution at least the teacher's input), the low-res features of that image,
and ``featurize``, the (de-biased, normalized) teacher call, so tile-based
upsamplers can run the teacher on crops. The teacher's input size is implied:
``(h*p, w*p)`` with ``p`` the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from radiosharp.factors import prime_factors  # noqa: F401 (the upsamplers import it from here)
from radiosharp.images import resize  # noqa: F401 (the upsamplers and their users import it from here)
from upsamplers._mosaic import Featurize, cut_tiles, tile_mosaic


@dataclass(frozen=True)
class UpsampleSpec:
    """What the system gives every upsampler (an option group: builders show it as the flat options
    ``factor``, ``dim``, ``patch_size``, the registry's structural options, filled from the teacher):
    the integer factor ``u >= 1``, the teacher's feature width (0: any width) and its patch size (the
    pixels of the teacher's input per low-res cell)."""

    factor: int = 2
    dim: int = 0
    patch_size: int = 14

    def __post_init__(self) -> None:
        if not isinstance(self.factor, int) or isinstance(self.factor, bool) or self.factor < 1:
            raise ValueError(f"upsampler factor must be an integer >= 1, got {self.factor!r}")
        if self.patch_size < 1:
            raise ValueError(f"upsampler patch_size must be >= 1, got {self.patch_size}")


class Upsampler(nn.Module):
    """Base of every upsampler: ``forward(images, lowres, featurize, tile_features=None) -> [B,C,u*h,u*w]``.

    Built from an :class:`UpsampleSpec` (kept as ``factor``, ``dim`` and ``patch_size``) and the
    upsampler's own options: ``__init__(self, spec: UpsampleSpec = UpsampleSpec(), <options>)``, the
    class registered as its builder. ``build_config`` (set by the registry when the module is
    built) holds the registry name and recipe options, so an export can rebuild it. ``trainable`` says whether the
    upsampler has weights to learn (bilinear, tiles and S2 do not).

    ``uses_tiles`` upsamplers (tiles, s2, featsharp) run the teacher on the ``u x u``
    tiles of the image (:meth:`tile_mosaic`). ``tile_features`` are the teacher's
    features of :meth:`tile_inputs`, for callers that batch the tiles into the same
    teacher call as their other inputs (the global view, the training views); the
    other upsamplers ignore them.

    ``bounded_forward(images, lowres, featurize, max_memory_mb, tile_batch=None)``, the same output
    within a working-memory budget, is attached by :mod:`upsamplers._chunked` (which needs the
    concrete upsamplers, so it cannot be imported from here).
    """

    trainable: bool = False
    uses_tiles: bool = False

    def __init__(self, spec: UpsampleSpec = UpsampleSpec()) -> None:
        super().__init__()
        self.factor, self.dim, self.patch_size = spec.factor, spec.dim, spec.patch_size
        self.build_config: dict[str, Any] = {}

    def check_inputs(self, images: Tensor, lowres: Tensor) -> None:
        """Clear errors for inputs that break the contract (shapes, batch, channels)."""
        name = type(self).__name__
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{name}: expected images [B,3,H,W], got {tuple(images.shape)}")
        if lowres.ndim != 4 or lowres.shape[0] != images.shape[0]:
            raise ValueError(
                f"{name}: expected low-res features [B,C,h,w] with B={images.shape[0]}, got {tuple(lowres.shape)}"
            )
        if self.dim and lowres.shape[1] != self.dim:
            raise ValueError(f"{name}: built for {self.dim}-channel features, got {lowres.shape[1]} channels")

    def teacher_input_size(self, lowres: Tensor) -> tuple[int, int]:
        """The teacher's input size implied by the low-res grid: ``(h*p, w*p)``."""
        return lowres.shape[-2] * self.patch_size, lowres.shape[-1] * self.patch_size

    def tile_inputs(self, images: Tensor, teacher_size: tuple[int, int]) -> Tensor:
        """The tiles this upsampler would featurize for ``images`` (``[B*u*u,3,*teacher_size]``)."""
        return cut_tiles(images, self.factor, teacher_size)

    def tile_mosaic(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        """The teacher's features of the ``u x u`` tiles of ``images``, stitched into ``[B,C,u*h,u*w]``.

        ``tile_features``: the caller's features of :meth:`tile_inputs` (else featurized here).
        """
        return tile_mosaic(images, self.factor, featurize, self.teacher_input_size(lowres), tile_features)

    def output_size(self, lowres: Tensor) -> tuple[int, int]:
        return lowres.shape[-2] * self.factor, lowres.shape[-1] * self.factor

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"factor={self.factor}, dim={self.dim}, patch_size={self.patch_size}"

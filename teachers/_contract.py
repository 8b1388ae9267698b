"""The teacher contract as the families here build it: option checks, shapes, the frozen base.

Sizes: ``real`` (the named model with its weights), ``tiny`` (a small seeded model of
the same family, for tests and demos) and ``random``: the real architecture, built
from the library's own config (timm, open_clip, SAM's published encoder shapes) with
seeded random weights and nothing read from disk or the network. ``random`` is for
measuring speed and memory at real sizes (``python -m radiosharp.bench``) on machines
without the weights; its features teach nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.contracts import Teacher, TeacherOutput, nearest_multiples
from teachers._weights import check_weights_path

SIZES = ("tiny", "real", "random")


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class WeightOptions:
    """The options every teacher builder takes (an option group, :mod:`radiosharp.option_groups`).

    ``size``: ``real``, ``tiny`` or ``random`` (module docstring); ``weights``: a local
    state-dict file; ``native_size``: the input side the teacher runs at by default (the
    family's default for ``size`` when None); ``seed``: the random weights of ``tiny`` /
    ``random``. A builder's docstring says what each means for its family.
    """

    size: Literal["tiny", "real", "random"] = "real"
    weights: str | None = None
    native_size: int | None = None
    seed: int = 0

    def check(self, family: str) -> None:
        """``size`` is one of :data:`SIZES`, and ``size: random`` takes no weights."""
        check_size(family, self.size, self.weights)

    def weights_and_native(self, family: str, natives: tuple[int, int], patch_size: int) -> tuple[Path | None, int]:
        """The checked weights file and the native size (:func:`weights_and_native`)."""
        return weights_and_native(family, self.size, self.weights, self.native_size, natives, patch_size)


@dataclass(frozen=True)
class HubWeightOptions(WeightOptions):
    """:class:`WeightOptions` and ``cache_dir``: the Hugging Face cache real weights are read
    from (default HF_HUB_CACHE)."""

    cache_dir: str | None = None

    def request(
        self, model: str, pretrained: str | None, text: bool, layer: int, weights: str | Path | None = None
    ) -> TeacherRequest:
        """These options with the family's own as one :class:`TeacherRequest` (``weights``: a resolved
        weights file in place of ``self.weights``)."""
        chosen = self.weights if weights is None else weights
        return TeacherRequest(
            self.size, model, pretrained, chosen, self.native_size, self.cache_dir, self.seed, text, layer
        )


class TeacherRequest(NamedTuple):
    """A builder's options as one value, passed between a family's build helpers."""

    size: str
    model: str
    pretrained: str | None
    weights: str | Path | None
    native_size: int | None
    cache_dir: str | None
    seed: int = 0
    text: bool = False
    layer: int = -1  # the block whose tokens are the features (check_layer)


def check_choice(family: str, key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{family}: {key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def check_text_layer(family: str, text: bool, layer: int) -> None:
    """A text tower shares the space of the final summary, which an intermediate layer lacks."""
    if text and layer != -1:
        raise ValueError(f"{family}: text: true needs layer: -1 (layer={layer} gives no summary for the text tower)")


def check_random_size(
    family: str,
    size: str,
    weights: Any = None,
    text: bool = False,
    source: str | None = None,
    sources: Sequence[str] = (),
) -> None:
    """``size: random`` takes no weights and no text tower, and needs a source whose
    library holds the architecture's config (``sources``)."""
    if size != "random":
        return
    if weights is not None:
        raise ValueError(f"{family}: size=random builds random weights; drop `weights:` or use size=real")
    if text:
        raise ValueError(f"{family}: size=random has no text tower; text: true needs size=real (or tiny)")
    if source is not None and source not in sources:
        raise ValueError(
            f"{family}: size=random needs a library that holds the architecture's config: "
            f"source={source!r} reads it from the model's files; use source: {' or '.join(sources)}"
        )


def check_size(family: str, size: str, weights: Any = None) -> None:
    """``size`` is one of :data:`SIZES`, and ``size: random`` takes no weights (:func:`check_random_size`)."""
    check_choice(family, "size", size, SIZES)
    check_random_size(family, size, weights)


def weights_and_native(
    family: str, size: str, weights: Any, native_size: int | None, natives: tuple[int, int], patch_size: int
) -> tuple[Path | None, int]:
    """The checked ``weights:`` file (before any build) and the native size: ``native_size``, else
    ``natives`` (the tiny, the real default) by ``size`` (:func:`resolve_native_size`)."""
    weights_path = check_weights_path(family, weights)
    tiny, real = natives
    return weights_path, resolve_native_size(family, native_size, tiny if size == "tiny" else real, patch_size)


def resolve_native_size(family: str, native_size: int | None, default: int, patch_size: int) -> int:
    """The input side the teacher runs at; must be a positive multiple of the patch size."""
    size = default if native_size is None else native_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % patch_size:
        nearest = nearest_multiples(size, patch_size) if isinstance(size, int) else []
        if len(nearest) < 2:  # below one patch (or not a number): the two smallest valid sizes
            nearest = [patch_size, 2 * patch_size]
        raise ValueError(
            f"{family}: native_size={native_size!r} must be a positive multiple of the patch size "
            f"{patch_size}; nearest valid: {' or '.join(map(str, nearest))}"
        )
    return size


# ----------------------------------------------------------------------------- shapes


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch tokens ``[B, h*w, C]`` (row-major) -> feature map ``[B, C, h, w]``."""
    b, n, c = tokens.shape
    if n != height * width:
        raise ValueError(f"{n} tokens cannot form a {height}x{width} grid")
    return tokens.transpose(1, 2).reshape(b, c, height, width)


def resize_pos_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a position table laid out as ``[1, gh, gw, C]`` to ``[1, h, w, C]``.

    The identity when the size already matches, so native-size outputs are exactly
    the library's own.
    """
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    dtype = grid.dtype
    resized = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=size, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(dtype)


class FrozenTeacher(Teacher):
    """A teacher around one library module held as ``self.model``.

    ``forward`` runs without autograd: teacher outputs are targets, never a path for
    gradients, so they carry no ``grad_fn`` even for inputs that require grad.
    """

    model: nn.Module

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        with torch.no_grad():
            return super().forward(images)

    # A CLIP-like teacher built with ``text: true`` holds its frozen text tower as the
    # submodule ``text_tower`` (``teachers/_text.py``). The zero-shot task looks for a
    # callable ``encode_text`` and ``tokenize``: both are None without a text tower, so
    # a teacher without one is never mistaken for a CLIP.

    @property
    def text_tower(self) -> nn.Module | None:
        return self._modules.get("text_tower")

    @text_tower.setter
    def text_tower(self, tower: nn.Module | None) -> None:
        self._modules["text_tower"] = tower

    @property
    def encode_text(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Token ids ``[K, L]`` -> text embeddings ``[K, summary_dim]`` in the summary's space."""
        return None if self.text_tower is None else self.text_tower.encode_text

    @property
    def tokenize(self) -> Callable[[Sequence[str]], torch.Tensor] | None:
        """Prompts -> token ids ``[K, L]`` for :attr:`encode_text`."""
        return None if self.text_tower is None else self.text_tower.tokenize

    def attach_text_tower(self, tower: nn.Module) -> None:
        """Hold ``tower`` (frozen) as this teacher's text tower; its width must be ``summary_dim``."""
        if getattr(tower, "output_dim", None) != self.summary_dim:
            raise ValueError(
                f"{self.name}: the text tower gives {getattr(tower, 'output_dim', None)}-d "
                f"embeddings but the image summary is {self.summary_dim}-d; they must share a space"
            )
        self.text_tower = tower

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, patch_size={self.patch_size}, native_size={self.native_size}, "
            f"embed_dim={self.embed_dim}, summary_dim={self.summary_dim}"
        )


def jitter_zero_tables(module: nn.Module, names: Sequence[str], std: float = 0.02) -> None:
    """Give zero-initialised position tables small random values (random-weight models).

    Some libraries start position tables at zero; a tiny random model then ignores
    position, and resizing the table would go untested.
    """
    for name, param in module.named_parameters():
        if any(name.endswith(n) for n in names):
            with torch.no_grad():
                param.normal_(0.0, std)


# ----------------------------------------------------------------------------- intermediate layers

FINAL_LAYER = -1


def check_layer(family: str, layer: int, depth: int) -> int:
    """The 0-based block index of ``layer`` in a ``depth``-block model.

    ``layer`` counts like a Python index: ``-1`` is the last block (the teacher's usual
    output), ``-4`` the fourth from last, ``0`` the first block. Anything else is a
    one-line ValueError naming the valid range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
        raise ValueError(
            f"{family}: layer={layer!r} is out of range for a {depth}-block model; "
            f"valid: -{depth}..-1 (from the last block) or 0..{depth - 1}"
        )
    return layer % depth

"""The shapes that travel between the parts (see DESIGN.md, "Contracts").

Images are float tensors ``[B,3,H,W]``, RGB in [0,1]; every model normalizes inside
itself. Features are ``[B,C,h,w]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass
class TeacherOutput:
    """``summary`` [B,Ds] (None for teachers without one, e.g. SAM); ``features`` [B,C,h,w]."""

    summary: torch.Tensor | None
    features: torch.Tensor


@dataclass
class StudentOutput:
    """Per-teacher adaptor outputs plus the raw backbone tokens."""

    summary: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    backbone: torch.Tensor | None = None


def nearest_multiples(size: int, multiple: int) -> list[int]:
    """The one or two positive multiples of ``multiple`` closest to ``size``."""
    low = (size // multiple) * multiple
    return [m for m in (low, low + multiple) if m > 0]


def check_image_size(height: int, width: int, patch_size: int, who: str = "model") -> None:
    """Raise a ValueError naming the size, the patch size and the nearest valid sizes."""
    if height % patch_size == 0 and width % patch_size == 0 and height > 0 and width > 0:
        return
    hs, ws = nearest_multiples(height, patch_size), nearest_multiples(width, patch_size)
    choices = ", ".join(f"{h}x{w}" for h in hs for w in ws)
    raise ValueError(
        f"{who}: image size {height}x{width} (HxW) is not a multiple of the patch size "
        f"{patch_size}; nearest valid sizes: {choices}"
    )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (a model build) on the CPU generator seeded with ``seed``, then restore it.

    Only the CPU generator is forked and seeded (the builds run on the CPU), so the
    caller's CPU and CUDA random streams are exactly as they were before.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


class FrozenModule(nn.Module):
    """A module that never trains: :meth:`freeze` turns its gradients off, and ``train()``
    keeps it (and its children) in eval mode, so a trainer's ``model.train()`` cannot
    switch on its dropout or batch-norm updates."""

    def freeze(self) -> FrozenModule:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenModule:  # noqa: ARG002 - frozen modules stay in eval
        return super().train(False)


class Teacher(FrozenModule):
    """A frozen feature extractor: ``forward(images) -> TeacherOutput``.

    Subclasses set the attributes below and implement ``extract`` on normalized
    input; ``forward`` checks the size and normalizes. Teachers never train: all
    parameters are frozen and ``train()`` keeps them in eval mode.
    """

    name: str = "teacher"
    patch_size: int
    native_size: int
    embed_dim: int
    summary_dim: int | None

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def check_size(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B,3,H,W], got {tuple(images.shape)}")
        check_image_size(images.shape[-2], images.shape[-1], self.patch_size, self.name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        """Run the network on normalized pixels; subclasses implement this."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """Features of ``images`` in [0, 1]; a teacher cast to bf16/fp16 takes float32 images too."""
        self.check_size(images)
        pixels = self.normalize(images)
        weight = next(self.parameters(), None)
        if weight is not None and weight.is_floating_point() and pixels.dtype != weight.dtype:
            pixels = pixels.to(weight.dtype)
        return self.extract(pixels)

    @property
    def feature_grid(self) -> int:
        """Side of the feature map at the native input size."""
        return self.native_size // self.patch_size

"""Pieces the image-guided neighbourhood-attention upsamplers (naf, anyup) share: the two-branch
image encoder, value heads that interleave channels (a channel's filter depends on its index only,
for any width), RoPE per head, the Gaussian prior over window offsets, and the options they share
(:class:`WindowOptions`, an option group: :mod:`radiosharp.option_groups`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radiosharp.images import resize
from upsamplers._attention import ImageNormalize, grid_positions, rope_2d
from upsamplers._base import Featurize, Upsampler, UpsampleSpec
from upsamplers._kernels import neighborhood_attention, window_offsets


@dataclass(frozen=True)
class WindowOptions:
    """What every image-guided window upsampler takes: the window side ``kernel_size`` (odd), the
    image encoding's width ``encoder_dim`` (a multiple of 4 per head, for the RoPE), ``num_heads``,
    ``encoder_blocks`` residual blocks per branch, the RoPE base ``rope_base`` and ``image_scale``
    (the encoder runs on the image resized to that many times the output grid)."""

    kernel_size: int = 9
    encoder_dim: int = 64
    num_heads: int = 4
    encoder_blocks: int = 2
    rope_base: float = 100.0
    image_scale: int = 1

    def check(self, name: str) -> None:
        """One-line errors naming upsampler ``name`` and the option that is out of range."""
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (e.g. 5, 7, 9), got {self.kernel_size}")
        if self.num_heads < 1 or self.encoder_dim < 1 or self.encoder_dim % (4 * self.num_heads):
            raise ValueError(
                f"{name}: encoder_dim={self.encoder_dim} must be a positive multiple of 4 * "
                f"num_heads={self.num_heads} (each head's RoPE needs a multiple of 4 channels)"
            )
        if self.encoder_blocks < 0 or self.image_scale < 1:
            raise ValueError(
                f"{name}: need encoder_blocks >= 0 and image_scale >= 1, got {self.encoder_blocks}, {self.image_scale}"
            )


def group_count(channels: int, most: int = 8) -> int:
    """The largest divisor of ``channels`` that is at most ``most`` (GroupNorm groups)."""
    return max(g for g in range(1, most + 1) if channels % g == 0)


class ConvBlock(nn.Module):
    """``x + conv(silu(gn(conv(silu(gn(x))))))`` with ``k x k`` convs (replicate padding)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(group_count(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="replicate")
        self.norm2 = nn.GroupNorm(group_count(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="replicate")

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(y)))


def conv_branch(in_channels: int, channels: int, kernel_size: int, num_blocks: int) -> nn.Sequential:
    """A stem conv then ``num_blocks`` :class:`ConvBlock`, all ``k x k``."""
    stem = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="replicate")
    return nn.Sequential(stem, *(ConvBlock(channels, kernel_size) for _ in range(num_blocks)))


class ImageEncoder(nn.Module):
    """Standardized RGB -> ``[B,width,H,W]``: a 1x1 (colour) and a 3x3 (texture) branch, concatenated."""

    def __init__(self, width: int, num_blocks: int = 2) -> None:
        super().__init__()
        half = width // 2
        self.pixel = conv_branch(3, half, 1, num_blocks)
        self.local = conv_branch(3, width - half, 3, num_blocks)
        self.normalize = ImageNormalize()

    def forward(self, images: Tensor, size: tuple[int, int], scale: int = 1) -> Tensor:
        """Encode ``images`` (any size, float in [0, 1]) on the ``size`` grid (computed at ``scale x``)."""
        x = self.normalize(resize(images.float(), (size[0] * scale, size[1] * scale)))
        x = x.to(self.pixel[0].weight.dtype)  # the weights' dtype (bf16 too)
        x = torch.cat([self.pixel(x), self.local(x)], dim=1)
        return F.adaptive_avg_pool2d(x, size) if scale > 1 else x


def split_heads(values: Tensor, heads: int) -> Tensor:
    """``[B,C,H,W] -> [B,heads,ceil(C/heads),H,W]``: channel ``c`` goes to head ``c mod heads``."""
    b, c, h, w = values.shape
    padded = -(-c // heads) * heads
    if padded != c:
        values = F.pad(values, (0, 0, 0, 0, 0, padded - c))
    return values.view(b, padded // heads, heads, h, w).transpose(1, 2)


def merge_heads(out: Tensor, channels: int) -> Tensor:
    """Inverse of :func:`split_heads`: ``[B,heads,G,H,W] -> [B,channels,H,W]``."""
    b, heads, g, h, w = out.shape
    return out.transpose(1, 2).reshape(b, heads * g, h, w)[:, :channels]


def gaussian_offset_bias(heads: int, kernel_size: int, sigma: float) -> Tensor:
    """``[heads, k*k]`` logits ``-|o|^2 / (2 sigma^2)`` of each window offset (the init of the position bias)."""
    dist_sq = torch.tensor([float(dy * dy + dx * dx) for dy, dx in window_offsets(kernel_size)])
    return (-dist_sq / (2 * sigma**2)).expand(heads, -1).clone()


def rotary_heads(x: Tensor, heads: int, base: float) -> Tensor:
    """``[B,D,H,W] -> [B,heads,D/heads,H,W]`` with 2-D RoPE by pixel position on the ``H x W`` grid."""
    b, d, h, w = x.shape
    tokens = x.reshape(b, heads, d // heads, h * w).transpose(-1, -2)  # [B,heads,HW,d]
    tokens = rope_2d(tokens, grid_positions(h, w, x.device), base)
    return tokens.transpose(-1, -2).reshape(b, heads, d // heads, h, w)


class ImageGuidedWindowUpsampler(Upsampler):
    """``k x k`` neighbourhood attention over the bilinearly lifted features, with queries and keys
    from :meth:`attention_inputs` (the subclass's) and a learned per-head offset bias.

    Feature-agnostic: the values are never projected, so any width passes (the spec's ``dim`` is stored as 0).
    """

    trainable = True

    def __init__(self, name: str, spec: UpsampleSpec, window: WindowOptions) -> None:
        super().__init__(replace(spec, dim=0))
        window.check(name)
        self.kernel_size, self.num_heads = window.kernel_size, window.num_heads
        self.rope_base, self.image_scale = float(window.rope_base), window.image_scale
        self.position_bias = nn.Parameter(
            gaussian_offset_bias(window.num_heads, window.kernel_size, float(spec.factor))
        )

    def attention_inputs(self, images: Tensor, lowres: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Rotated queries and keys ``[B,heads,D/heads,H,W]`` on the output grid ``size``."""
        raise NotImplementedError

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        size = self.output_size(lowres)
        q, k = self.attention_inputs(images, lowres, size)
        values = split_heads(resize(lowres, size), self.num_heads)
        bias = self.position_bias.to(q.dtype)
        out = neighborhood_attention(q, k, values, self.kernel_size, bias, scale=q.shape[2] ** -0.5)
        return merge_heads(out, lowres.shape[1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, num_heads={self.num_heads}"

"""``anyup``: AnyUp (Wimmer et al. 2025), one trained upsampler for features of any width.

The width problem is solved at the input: a feature-agnostic layer turns ``[B,C,h,w]``
features of any ``C`` into an ``M``-channel map by convolving EVERY channel with the same
learned basis of ``M`` 3x3 kernels, taking a softmax over the basis and averaging over
the channels::

    f = sqrt(C) * normalize_C(lowres)                    # unit RMS per pixel, any C
    a[m] = mean_c softmax_m( basis_m * f_c )             # [B,M,h,w], independent of C

Queries come from the image, keys from the image AND the features, values are the
features themselves (never projected)::

    e = E(standardize(image resized to H x W))           # [B,D,H,W] image encoding
    q = RoPE(Q(e))                                       # output grid
    k = RoPE(up(A([pool_hw(K(e)), a])))                  # low-res grid, lifted to H x W
    out[i] = sum_o softmax_o(q[i] . k[i+o] / sqrt(d) + b[o]) * bilinear(lowres)[i+o]

with ``E``, ``Q``, ``K`` small conv stacks (stem + residual GroupNorm/SiLU blocks) and
``A`` the 3x3 aggregation of image and feature evidence. Heads split ``q`` and ``k``;
feature channel ``c`` goes to head ``c mod heads`` (zero-padded to a multiple, as in
``upsamplers.naf``), so any width works. ``dim`` is accepted (any, 0 included) and
stored as 0: the same parameters serve every teacher.

Departures from the paper / wimmerth/anyup, on purpose: the attention is ``k x k``
neighbourhood attention on the output grid (the project's memory-lean kernel, out-of-map
keys masked) over keys bilinearly lifted from the low-res grid, instead of AnyUp's
window of ``window_ratio`` of the image over the low-res keys, with a learned per-head
offset bias ``b[o]`` initialized to a Gaussian of std ``u`` output pixels (as in
``upsamplers.naf``; AnyUp has none); RoPE rotates ``q`` and ``k`` at their output-grid
positions (AnyUp rotates the image encoding before the encoders); the basis kernels are
3x3 (AnyUp's code defaults to 5x5); the features are scaled to unit RMS per pixel (AnyUp: unit L2 norm, so the
basis responses shrink as ``1/sqrt(C)``); the basis convolution uses replicate padding
(AnyUp: zero padding renormalized by the tap count) and keeps the (channel, basis)
axes apart; widths default smaller (D = 64, M = 32; AnyUp: 128 and 128) to stay
CPU-sized. The agnostic layer keeps a ``[B,C,M,h,w]`` softmax on the low-res grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import UpsampleSpec, resize
from upsamplers._image_guided import (
    ConvBlock,
    ImageEncoder,
    ImageGuidedWindowUpsampler,
    WindowOptions,
    conv_branch,
    rotary_heads,
)


class FeatureUnification(nn.Module):
    """``[B,C,h,w] -> [B,M,h,w]`` for any ``C``: a shared basis of ``M`` kernels, softmax, channel mean."""

    def __init__(self, basis_size: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        if basis_size < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"need basis_size >= 1 and an odd kernel_size, got {basis_size}, {kernel_size}")
        self.basis_size, self.kernel_size = basis_size, kernel_size
        self.basis = nn.Parameter(torch.randn(basis_size, 1, kernel_size, kernel_size) / kernel_size)

    def forward(self, features: Tensor) -> Tensor:
        b, c, h, w = features.shape
        x = F.normalize(features.float(), dim=1) * math.sqrt(c)  # unit RMS over channels at every pixel
        x = x.to(self.basis.dtype).reshape(b * c, 1, h, w)
        pad = self.kernel_size // 2
        responses = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), self.basis)  # [B*C,M,h,w]
        weights = responses.float().view(b, c, self.basis_size, h, w).softmax(dim=2)
        return weights.mean(dim=1).to(self.basis.dtype)

    def extra_repr(self) -> str:
        return f"basis_size={self.basis_size}, kernel_size={self.kernel_size}"


class AnyUpUpsampler(ImageGuidedWindowUpsampler):
    """Image queries, image+feature keys, feature values, ``k x k`` window (module docstring)."""

    def __init__(
        self, spec: UpsampleSpec = UpsampleSpec(), window: WindowOptions = WindowOptions(), basis_size: int = 32
    ) -> None:
        super().__init__("anyup", spec, window)  # feature-agnostic: any width passes
        encoder_dim, encoder_blocks = window.encoder_dim, window.encoder_blocks
        self.image_encoder = ImageEncoder(encoder_dim, encoder_blocks)
        self.query_encoder = conv_branch(encoder_dim, encoder_dim, 1, 1)
        self.key_encoder = conv_branch(encoder_dim, encoder_dim, 1, 1)
        self.unification = FeatureUnification(basis_size)
        self.aggregation = nn.Sequential(
            nn.Conv2d(encoder_dim + basis_size, encoder_dim, 3, padding=1, padding_mode="replicate"),
            *(ConvBlock(encoder_dim, 3) for _ in range(max(encoder_blocks, 1))),
        )

    def attention_inputs(self, images: Tensor, lowres: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Rotated queries and keys ``[B,heads,D/heads,H,W]`` on the output grid."""
        enc = self.image_encoder(images, size, self.image_scale)
        q = self.query_encoder(enc)
        image_keys = F.adaptive_avg_pool2d(self.key_encoder(enc), lowres.shape[-2:])
        k = self.aggregation(torch.cat([image_keys, self.unification(lowres)], dim=1))
        k = resize(k, size)
        return rotary_heads(q, self.num_heads, self.rope_base), rotary_heads(k, self.num_heads, self.rope_base)


# the class is the builder (one signature); the registry records its options as build_config
build_anyup = UPSAMPLERS.register("anyup")(AnyUpUpsampler)

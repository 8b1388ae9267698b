"""``loftup``: LoftUp (Huang et al. 2025) — coordinate-based queries cross-attending to low-res tokens.

Each output pixel is described by *what* and *where* it is: its RGB and its (y, x)
position, lifted by Fourier features and a small conv stem. It then attends over the
low-res feature tokens, whose keys carry both the features and the same description of
their own (low-res) pixel:

    P(g)  = [RGB_g, yx_g]  in [-1, 1]                     # on a grid g (image area-pooled to it)
    S(g)  = stem([P, sin(2^i pi P), cos(2^i pi P)]_i)     # 3x3 conv, GELU, 3x3 conv, GELU, 1x1 conv
    Q     = q_proj(LN(S(u*h x u*w)))                      # per-pixel queries at the output grid
    K     = k_proj(LN(f_proj(LN(F)) + S(h x w)))          # low-res tokens: features + their pixel's code
    out   = mean_n(softmax(Q_n . K_n / sqrt(d/heads))) @ F  # [B,C,uh,uw], values = the raw features

The query and the key image codes come from the *same* stem, so the keys live in the
queries' space from the start; the xy Fourier features make the attention position-aware
(no RoPE is needed). Values are the raw low-res features (averaged head maps, as in
``upsamplers.jafar``), so any teacher width works and the output stays in its space.

Departures, on purpose: LoftUp's transformer stacks cross-attention blocks with an FFN
and projects its output back to the feature width; here one attention layer maps the
raw features directly (output in the teacher's space, no projection to learn), and the
image code of the keys is the query stem evaluated on the low-res grid rather than a
separate encoder. Attention runs in float32 over at most ``query_chunk`` queries at a
time (``upsamplers._attention``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radiosharp.images import resize
from radiosharp.registry import UPSAMPLERS
from upsamplers._attention import AttentionOptions, ChannelNorm, GlobalAttentionUpsampler, grid_positions, to_tokens
from upsamplers._base import Featurize, UpsampleSpec


def fourier_features(x: Tensor, num_freqs: int) -> Tensor:
    """``[B,K,H,W]`` -> ``[B, K*(1+2*num_freqs), H, W]``: ``x``, ``sin(2^i pi x)``, ``cos(2^i pi x)`` (float32)."""
    x = x.float()
    scales = 2.0 ** torch.arange(num_freqs, device=x.device, dtype=torch.float32) * torch.pi
    angles = (x.unsqueeze(2) * scales.view(1, 1, -1, 1, 1)).flatten(1, 2)  # [B, K*F, H, W]
    return torch.cat([x, angles.sin(), angles.cos()], dim=1)


def pixel_code(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B,5,H,W]``: the image area-pooled to ``size`` (RGB mapped to [-1, 1]) and the (y, x) pixel centres."""
    rgb = resize(images.float(), size) * 2 - 1
    yx = grid_positions(*size, device=images.device).T.reshape(1, 2, *size).expand(len(images), -1, -1, -1)
    return torch.cat([rgb, yx], dim=1)


class LoftUpUpsampler(GlobalAttentionUpsampler):
    """The LoftUp coordinate cross-attention upsampler (see the module docstring)."""

    def __init__(
        self, spec: UpsampleSpec = UpsampleSpec(), attention: AttentionOptions = AttentionOptions(), num_freqs: int = 6
    ) -> None:
        if num_freqs < 0:
            raise ValueError(f"loftup: num_freqs must be >= 0, got {num_freqs}")
        super().__init__("loftup", spec, attention, head_multiple=1)
        qk_dim, dim, self.num_freqs = attention.qk_dim, spec.dim, num_freqs
        code_dim = 5 * (1 + 2 * num_freqs)
        self.stem = nn.Sequential(
            nn.Conv2d(code_dim, qk_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(qk_dim, qk_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(qk_dim, qk_dim, 1),
        )
        self.query_norm = ChannelNorm(qk_dim)
        self.query_proj = nn.Conv2d(qk_dim, qk_dim, 1)
        self.feature_norm = ChannelNorm(dim)
        self.feature_proj = nn.Conv2d(dim, qk_dim, 1)
        self.key_norm = ChannelNorm(qk_dim)
        self.key_proj = nn.Conv2d(qk_dim, qk_dim, 1)

    def encode(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """``S(size)``: the stem on the Fourier features of the pixel codes of ``size``."""
        code = fourier_features(pixel_code(images, size), self.num_freqs)
        return self.stem(code.to(self.query_proj.weight.dtype))

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        (h, w), (oh, ow) = lowres.shape[-2:], self.output_size(lowres)
        queries = self.query_proj(self.query_norm(self.encode(images, (oh, ow))))
        lr_code = self.encode(images, (h, w))
        tokens = self.feature_proj(self.feature_norm(lowres.to(lr_code.dtype))) + lr_code
        keys = self.key_proj(self.key_norm(tokens))
        q, k = to_tokens(queries, self.num_heads), to_tokens(keys, self.num_heads)
        return self.attend(q, k, lowres, (oh, ow))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_freqs={self.num_freqs}"


# the class is the builder (one signature); the registry records its options as build_config
build_loftup = UPSAMPLERS.register("loftup")(LoftUpUpsampler)

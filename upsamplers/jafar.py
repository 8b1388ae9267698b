"""``jafar``: JAFAR (Couairon et al. 2025) — attention from image queries to modulated low-res keys.

Every output pixel is a softmax-weighted mean of the low-res features; the weights come from
the image alone on the query side and from the image *and* the features on the key side:

    E   = encoder(standardized RGB)                      # a few 3x3 convs, at encoder_scale x the output grid
    Q   = q_proj(LN(resize(E, u*h x u*w)))               # [B,d,uh,uw]  high-res queries
    K0  = resize(E, h x w)                               # the same encoding on the low-res grid
    K   = k_proj(LN(K0 * (1 + gamma(LN(F))) + beta(LN(F))))   # SFT: gamma, beta = 1x1 convs C -> d
    A_n = softmax(rope(Q_n) . rope(K_n) / sqrt(d/heads))  # per head n, 2-D RoPE on both sides
    out = mean_n(A_n) @ F                                # [B,C,uh,uw]

``F`` (the low-res features) are the values and are never projected, so the module works
at any teacher width and its output lives in the teacher's own feature space. The heads
differ only in their attention maps; averaging the maps (JAFAR does the same) lets every
head read all ``C`` channels. RoPE positions are pixel centres in [-1, 1] on each grid, so
a query and a key at the same place in the image share a position.

Departures, on purpose: the encoder runs on the image *resized* to ``encoder_scale`` times
the output grid (default 1: the output grid itself), not at full input resolution, which
bounds its cost at any image size; LayerNorm (per pixel, over channels) is the
normalization everywhere; one attention layer, no output projection or refinement convs;
attention runs in float32 over at most ``query_chunk`` queries at a time
(``upsamplers._attention``), so bf16 models work and memory stays bounded.
"""

from __future__ import annotations

from torch import Tensor, nn

from radiosharp.images import resize
from radiosharp.registry import UPSAMPLERS
from upsamplers._attention import (
    AttentionOptions,
    ChannelNorm,
    GlobalAttentionUpsampler,
    ImageNormalize,
    grid_positions,
    image_encoder,
    rope_2d,
    to_tokens,
)
from upsamplers._base import Featurize, UpsampleSpec


class JafarUpsampler(GlobalAttentionUpsampler):
    """The JAFAR attention upsampler (see the module docstring)."""

    def __init__(
        self,
        spec: UpsampleSpec = UpsampleSpec(),
        attention: AttentionOptions = AttentionOptions(),
        encoder_depth: int = 3,
        encoder_scale: int = 1,
        rope_base: float = 100.0,
    ) -> None:
        if encoder_depth < 1 or encoder_scale < 1:
            raise ValueError(
                f"jafar: encoder_depth and encoder_scale must be >= 1, got {encoder_depth}, {encoder_scale}"
            )
        super().__init__("jafar", spec, attention)
        qk_dim, dim = attention.qk_dim, spec.dim
        self.encoder_scale, self.rope_base = encoder_scale, rope_base
        self.normalize = ImageNormalize()
        self.encoder = image_encoder(qk_dim, encoder_depth)
        self.query_norm = ChannelNorm(qk_dim)
        self.query_proj = nn.Conv2d(qk_dim, qk_dim, 1)
        self.feature_norm = ChannelNorm(dim, affine=False)
        self.gamma = nn.Conv2d(dim, qk_dim, 1)
        self.beta = nn.Conv2d(dim, qk_dim, 1)
        self.key_norm = ChannelNorm(qk_dim)
        self.key_proj = nn.Conv2d(qk_dim, qk_dim, 1)

    def encode(self, images: Tensor, out_size: tuple[int, int]) -> Tensor:
        """The image encoding at ``encoder_scale`` x the output grid (never above the image's size)."""
        s = self.encoder_scale
        work = (min(images.shape[-2], s * out_size[0]), min(images.shape[-1], s * out_size[1]))
        guidance = resize(self.normalize(images), work).to(self.query_proj.weight.dtype)
        return self.encoder(guidance)

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        (h, w), (oh, ow) = lowres.shape[-2:], self.output_size(lowres)
        encoded = self.encode(images, (oh, ow))
        queries = self.query_proj(self.query_norm(resize(encoded, (oh, ow))))
        feats = self.feature_norm(lowres.to(encoded.dtype))
        keys = resize(encoded, (h, w)) * (1 + self.gamma(feats)) + self.beta(feats)
        keys = self.key_proj(self.key_norm(keys))
        q = rope_2d(to_tokens(queries, self.num_heads), grid_positions(oh, ow, lowres.device), self.rope_base)
        k = rope_2d(to_tokens(keys, self.num_heads), grid_positions(h, w, lowres.device), self.rope_base)
        return self.attend(q, k, lowres, (oh, ow))


# the class is the builder (one signature); the registry records its options as build_config
build_jafar = UPSAMPLERS.register("jafar")(JafarUpsampler)

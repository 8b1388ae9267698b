"""Attention pieces the attention-based upsamplers (jafar, loftup) share: 2-D rotary position
embedding, query-chunked cross-attention (peak memory bounded at any output size), head-averaged
attention over shared values, the small image encoder and norms around them, and the options both
take (:class:`AttentionOptions`, an option group: :mod:`radiosharp.option_groups`).

Both run their arithmetic in float32 and return the input dtype, so a bf16 model works
(JAFAR's upstream RoPE fails in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from upsamplers._base import Upsampler, UpsampleSpec

DEFAULT_QUERY_CHUNK = 4096  # queries per attention call: [chunk x keys] logits per head at most


def grid_positions(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``[H*W, 2]`` (y, x) pixel-centre coordinates in [-1, 1], row-major: the same physical
    place gets the same position on grids of any resolution."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def rope_2d(x: Tensor, positions: Tensor, base: float = 100.0) -> Tensor:
    """Rotate ``x [..., N, D]`` by its ``positions [N, 2]``: the first half of the channels
    by y, the second by x, each as ``D/4`` frequency pairs ``base^(-i/(D/4))`` (``D % 4 == 0``)."""
    d = x.shape[-1]
    if d % 4:
        raise ValueError(f"rope_2d: the head dim must be a multiple of 4, got {d}")
    quarter = d // 4
    freqs = base ** (-torch.arange(quarter, device=x.device, dtype=torch.float32) / quarter) * torch.pi
    angles = torch.cat([positions[:, :1] * freqs, positions[:, 1:] * freqs], dim=-1)  # [N, D/2]
    cos, sin = angles.cos(), angles.sin()
    pairs = x.float().unflatten(-1, (d // 2, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return rotated.to(x.dtype)


def chunked_cross_attention(q: Tensor, k: Tensor, v: Tensor, query_chunk: int | None = DEFAULT_QUERY_CHUNK) -> Tensor:
    """``softmax(q k^T / sqrt(D)) v`` for ``q [B,h,Nq,D]``, ``k [B,h,Nk,D]``, ``v [B,h,Nk,Dv]``,
    over at most ``query_chunk`` queries at a time (None: all at once). Exact: each query's
    softmax is over all keys, so chunking changes memory, not the result."""
    if query_chunk is not None and query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1 or None, got {query_chunk}")
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    if query_chunk is None or q.shape[-2] <= query_chunk:
        return F.scaled_dot_product_attention(q, k, v).to(dtype)
    parts = [F.scaled_dot_product_attention(part, k, v) for part in q.split(query_chunk, dim=-2)]
    return torch.cat(parts, dim=-2).to(dtype)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a ``[B,C,H,W]`` map (each pixel on its own)."""

    def __init__(self, dim: int, affine: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ImageNormalize(nn.Module):
    """``[0,1]`` RGB -> ImageNet-standardized RGB in the module's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean.float()) / self.std.float()


def to_tokens(x: Tensor, num_heads: int) -> Tensor:
    """``[B, heads*D, H, W]`` -> ``[B, heads, H*W, D]``."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w).transpose(-1, -2)


def head_averaged_attention(
    q: Tensor, k: Tensor, values: Tensor, query_chunk: int | None = DEFAULT_QUERY_CHUNK
) -> Tensor:
    """``mean_n(softmax(q_n k_n^T / sqrt(D))) @ values`` for ``q [B,n,Nq,D]``, ``k [B,n,Nk,D]``,
    ``values [B,Nk,C]`` -> ``[B,Nq,C]`` float32. The values are shared by every head; at most
    ``query_chunk`` queries are in flight at once, so the ``[B,n,chunk,C]`` per-head outputs
    (not ``[B,n,Nq,C]``) bound the memory."""
    if query_chunk is not None and query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1 or None, got {query_chunk}")
    k = k.float()
    v = values.float().unsqueeze(1).expand(-1, q.shape[1], -1, -1)  # a view: no copy per head
    chunks = [q] if query_chunk is None else q.split(query_chunk, dim=-2)
    return torch.cat([chunked_cross_attention(part, k, v, None).mean(1) for part in chunks], dim=-2)


def image_encoder(dim: int, depth: int) -> nn.Sequential:
    """``depth`` 3x3 convs (3 -> dim -> ... -> dim) with GELU between them."""
    layers: list[nn.Module] = [nn.Conv2d(3, dim, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class AttentionOptions:
    """What every global-attention upsampler takes: the query/key width ``qk_dim``, split into
    ``num_heads`` heads, and ``query_chunk``, the most queries one attention call scores (None:
    all at once)."""

    qk_dim: int = 64
    num_heads: int = 4
    query_chunk: int | None = DEFAULT_QUERY_CHUNK

    def check(self, name: str, dim: int, head_multiple: int = 4) -> None:
        """One-line errors naming upsampler ``name``: the feature width ``dim`` must be >= 1, and
        ``qk_dim`` must split into heads of a multiple of ``head_multiple`` channels (2-D RoPE needs 4)."""
        heads, qk_dim, chunk = self.num_heads, self.qk_dim, self.query_chunk
        if dim < 1:
            raise ValueError(f"{name}: dim must be >= 1 (the teacher's feature width), got {dim}")
        if heads < 1 or qk_dim < 1 or qk_dim % (head_multiple * heads):
            raise ValueError(
                f"{name}: qk_dim={qk_dim} must be a positive multiple of "
                f"{head_multiple}*num_heads={head_multiple * heads}"
            )
        if chunk is not None and chunk < 1:
            raise ValueError(f"{name}: query_chunk must be >= 1 or None, got {chunk}")


class GlobalAttentionUpsampler(Upsampler):
    """Base of the global-attention upsamplers (jafar, loftup): every output pixel is a mean over heads
    of softmax-weighted sums of all low-res features, the values never projected (:meth:`attend`).

    ``head_multiple``: the channels per head must be a multiple of it (4 when the heads take 2-D RoPE).
    """

    trainable = True

    def __init__(self, name: str, spec: UpsampleSpec, attention: AttentionOptions, head_multiple: int = 4) -> None:
        attention.check(name, spec.dim, head_multiple)
        super().__init__(spec)
        self.qk_dim, self.num_heads, self.query_chunk = attention.qk_dim, attention.num_heads, attention.query_chunk

    def attend(self, q: Tensor, k: Tensor, lowres: Tensor, out_size: tuple[int, int]) -> Tensor:
        """``[B,C,*out_size]`` in ``lowres``'s dtype: the head-averaged attention of the query tokens
        ``q`` over the key tokens ``k`` (``[B,heads,N,d]``), the values ``lowres``'s pixels."""
        b, c = lowres.shape[:2]
        values = lowres.flatten(2).transpose(1, 2)  # [B, h*w, C]
        out = head_averaged_attention(q, k, values, self.query_chunk)  # [B, oh*ow, C] float32
        return out.transpose(1, 2).reshape(b, c, *out_size).to(lowres.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qk_dim={self.qk_dim}, num_heads={self.num_heads}"

"""``featsharp``: FeatSharp (Ranzinger et al. 2025) — a base upsampler refined with tiles.

The low-res features are lifted twice to the ``u x`` grid: by a base upsampler (smooth,
edge-aware; FeatUp's JBU stack by default, any registered upsampler by ``base:``) and by
a ``u x u`` tile mosaic (detailed, with seams). The buffers named by ``inputs`` are
concatenated on channels (``nC``) and go through ONE pre-norm transformer block:

    x = [base, tiles + tile_pos]                     # [B,H,W,2C] (inputs: [base, tiles])
    x = x + ls1 * proj(NA(LN(x)))                    # 2-D sliding-window attention
    y = x[..., r] + ls2 * swiglu(LN(x))              # SwiGLU nC -> hidden -> C
    out = y                                          # [B,C,H,W]

Only the ``residual`` buffer's ``C`` channels ``r`` keep their residual (the base by
default), so a block whose output projections are zero returns that buffer exactly;
training starts there (LayerScale ``1e-6``, as NVlabs/FeatSharp) and learns to pull in
tile detail. ``residual: none`` keeps no buffer (the block's MLP is the output; its
LayerScale then starts at 1).

The paper's ablation of the block's inputs (table 8) is ``inputs`` x ``residual``:
``[base, tiles]`` x ``base`` is FeatSharp; ``[base]`` x ``base`` refines the base alone;
``[tiles]`` x ``tiles`` de-seams the mosaic alone; ``[base, tiles]`` x ``tiles`` puts the
tiles on the residual path.

Choices (facts from the paper and NVlabs/FeatSharp): window 5 by default (the paper's
ablation finds 3 or 5 best; the reference code defaults to 7); up to 16 heads
(the reference uses 16; here the largest divisor of the block width not above 16 unless
the recipe says otherwise); a 2-D ALiBi-style relative position bias
``-(s_y |dy| + s_x |dx|)`` with learnable per-head slopes, initialized like the
reference (head pairs share slope 1/2, 1/4, ...; even heads look along rows, odd
heads along columns); a learned per-tile position embedding (zeros at init) added
to the mosaic; keys outside the map are masked (see ``upsamplers._kernels``); the
SwiGLU hidden width is ~8C/3 (``mlp_hidden`` sets it). NVlabs' block ends up about twice
as wide: its ``Block`` rebuilds the SwiGLU from ``mlp_ratio`` times the block width 2C
(overriding the ``4C`` the level passes), so ~16C/3 (5464 for C = 1024);
``python -m radiosharp.convert featsharp`` reads the width from the checkpoint.

``attention_backend`` picks the block's sliding-window kernel (``upsamplers._kernels``): ``auto``
(default) runs PyTorch's compiled ``flex_attention`` on CUDA and the pure-PyTorch reference
elsewhere (flex has no backward on CPU); ``reference``, ``reference_tiled``, ``reference_v1``,
``flex`` force one. All give the same attention (parity-tested); the base upsampler's JBU keeps the
reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler, UpsampleSpec
from upsamplers._kernels import BACKENDS, neighborhood_attention, neighborhood_attention_flex, window_offsets
from upsamplers._triton_attention import neighborhood_attention_triton

MAX_AUTO_HEADS = 16
WINDOW_SIZES = (1, 3, 5, 7, 9, 11)


def alibi_slopes_init(num_heads: int) -> Tensor:
    """``[heads, 2]`` (row, column) slopes: head pairs get 1/2, 1/4, ...; even heads rows, odd columns."""
    slopes = torch.zeros(num_heads, 2)
    for h in range(num_heads):
        slopes[h, h % 2] = 1.0 / 2 ** ((h + 2) // 2)
    return slopes


class NeighborhoodAttention(nn.Module):
    """Multi-head 2-D sliding-window self-attention on ``[B,H,W,D]`` maps.

    ``backend``: the kernel (see :func:`upsamplers._kernels.neighborhood_attention`); ``auto`` runs the
    compiled ``flex_attention`` on CUDA and the pure-PyTorch reference elsewhere."""

    def __init__(self, dim: int, num_heads: int, window_size: int, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"featsharp: attention_backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.backend = backend
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.window_size = num_heads, window_size
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.alibi_slopes = nn.Parameter(alibi_slopes_init(num_heads))
        offsets = torch.tensor(window_offsets(window_size), dtype=torch.float32).abs()
        self.register_buffer("abs_offsets", offsets, persistent=False)  # [k*k, 2] = |dy|, |dx|

    def position_bias(self) -> Tensor:
        """``[heads, k*k]`` = ``-(s_y |dy| + s_x |dx|)`` per head and window offset."""
        return -(self.alibi_slopes @ self.abs_offsets.T)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, d = x.shape
        qkv = self.qkv(x).view(b, h, w, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 5, 1, 2)
        out = neighborhood_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            self.window_size,
            self.position_bias(),
            scale=self.head_dim**-0.5,
            backend=self.backend,
        )
        return self.proj(out.permute(0, 3, 4, 1, 2).reshape(b, h, w, d))


class SwiGLU(nn.Module):
    """``w_out(silu(a) * b)`` with ``[a, b] = w_in(x)``."""

    def __init__(self, dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden)
        self.w_out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(a) * b)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class FeatSharpBlock(nn.Module):
    """The pre-norm block on ``[B,H,W,n*C]`` returning ``[B,H,W,C]``.

    ``residual``: which of the ``n`` concatenated ``C``-channel buffers keeps its residual
    (its index), or None for no residual path.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_hidden: int,
        layer_scale_init: float = 1e-6,
        layer_norm: bool = True,
        num_inputs: int = 2,
        residual: int | None = 0,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        width = num_inputs * dim
        self.dim, self.residual = dim, residual
        self.norm1 = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.attn = NeighborhoodAttention(width, num_heads, window_size, attention_backend)
        self.ls1 = LayerScale(width, layer_scale_init)
        self.norm2 = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.mlp = SwiGLU(width, mlp_hidden, dim)
        self.ls2 = LayerScale(dim, layer_scale_init if residual is not None else 1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        out = self.ls2(self.mlp(self.norm2(x)))
        if self.residual is None:
            return out
        start = self.residual * self.dim
        return x[..., start : start + self.dim] + out

    @torch.no_grad()
    def zero_output_projections(self) -> None:
        """Zero the attention and MLP output layers: the block then passes the residual buffer through."""
        for layer in (self.attn.proj, self.mlp.w_out):
            layer.weight.zero_()
            layer.bias.zero_()


def default_heads(width: int) -> int:
    """The largest divisor of ``width`` that is at most 16."""
    return max(h for h in range(1, MAX_AUTO_HEADS + 1) if width % h == 0)


def default_mlp_hidden(dim: int) -> int:
    """SwiGLU hidden width ~ 8C/3 rounded up to a multiple of 8 (timm/DINOv2 SwiGLU rule for 4C)."""
    return (int(8 * dim / 3) + 7) // 8 * 8


BUFFERS = ("base", "tiles")
RESIDUALS = ("base", "tiles", "none")


def check_buffers(inputs: tuple[str, ...] | list[str], residual: str) -> tuple[tuple[str, ...], int | None]:
    """The block's input buffers and the index of the residual one (None: no residual)."""
    names = tuple(inputs)
    if not names or len(set(names)) != len(names) or any(n not in BUFFERS for n in names):
        raise ValueError(f"featsharp: inputs must be distinct names from {list(BUFFERS)}, got {list(names)}")
    if residual not in RESIDUALS:
        raise ValueError(f"featsharp: residual must be one of {list(RESIDUALS)}, got {residual!r}")
    if residual != "none" and residual not in names:
        raise ValueError(f"featsharp: residual '{residual}' is not one of the block's inputs {list(names)}")
    return names, None if residual == "none" else names.index(residual)


def build_base(base: str | dict[str, Any], spec: UpsampleSpec, jbu_kernel_size: int, key_dim: int) -> Upsampler:
    """The residual-path upsampler: a registered upsampler's name or ``{name: ..., options}``.

    ``featup`` given by name takes ``jbu_kernel_size`` / ``key_dim`` (the options FeatSharp
    recipes have always used); a mapping carries its own options.
    """
    from radiosharp.builders import build_upsampler

    name = base if isinstance(base, str) else base.get("name")
    if name == "featsharp":
        raise ValueError("featsharp: base cannot be featsharp itself; choose a guided upsampler, e.g. featup or jafar")
    if isinstance(base, str):
        cfg: str | dict[str, Any] = (
            {"name": "featup", "kernel_size": jbu_kernel_size, "key_dim": key_dim} if base == "featup" else base
        )
    else:
        cfg = dict(base)
    if name != "featup" and (jbu_kernel_size, key_dim) != (7, 32):
        raise ValueError(
            f"featsharp: jbu_kernel_size/key_dim apply to base featup only; give {name}'s options as "
            f"base: {{name: {name}, ...}}"
        )
    return build_upsampler(cfg, "featsharp.base", factor=spec.factor, dim=spec.dim, patch_size=spec.patch_size)


class FeatSharpUpsampler(Upsampler):
    """Base upsampler + tile mosaic -> one :class:`FeatSharpBlock` (see the module docstring)."""

    trainable = True
    uses_tiles = True
    # the block's kernel and its backends, for `python -m radiosharp.bench attention` (the core reaches
    # plug-ins through the registry only)
    attention_kernel = staticmethod(neighborhood_attention)
    attention_kernel_flex = staticmethod(neighborhood_attention_flex)
    attention_kernel_triton = staticmethod(neighborhood_attention_triton)
    attention_backends = BACKENDS

    def __init__(
        self,
        spec: UpsampleSpec = UpsampleSpec(),
        base: str | dict[str, Any] = "featup",
        inputs: tuple[str, ...] = BUFFERS,
        residual: str = "base",
        num_heads: int | None = None,
        window_size: int = 5,
        jbu_kernel_size: int = 7,
        key_dim: int = 32,
        mlp_hidden: int | None = None,
        layer_scale_init: float = 1e-6,
        layer_norm: bool = True,
        checkpoint_activations: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__(spec)
        factor, dim = spec.factor, spec.dim
        if attention_backend not in BACKENDS:
            raise ValueError(
                f"featsharp: attention_backend must be one of {', '.join(BACKENDS)}; got {attention_backend!r}"
            )
        if not isinstance(checkpoint_activations, bool):
            raise ValueError(f"featsharp: checkpoint_activations must be true or false; got {checkpoint_activations!r}")
        # under autograd the block (and a featup base's JBU stages) run under torch.utils.checkpoint
        self.checkpoint_activations = checkpoint_activations
        if dim < 1:
            raise ValueError("featsharp: needs the feature width dim >= 1 (the teacher's embed_dim)")
        if window_size not in WINDOW_SIZES:
            raise ValueError(
                f"featsharp: window_size must be odd, one of {WINDOW_SIZES} "
                f"(the paper finds 3 or 5 best), got {window_size}"
            )
        self.inputs, residual_index = check_buffers(inputs, residual)
        width = len(self.inputs) * dim
        heads = default_heads(width) if num_heads is None else num_heads
        if heads < 1 or width % heads:
            valid = [h for h in range(1, 65) if width % h == 0]
            raise ValueError(
                f"featsharp: num_heads={num_heads} does not divide the block width {len(self.inputs)}*dim={width}; "
                f"valid choices: {', '.join(map(str, valid))}"
            )
        uses_base = "base" in self.inputs
        self.base = build_base(base, spec, jbu_kernel_size, key_dim) if uses_base else None
        self.tile_pos = nn.Parameter(torch.zeros(1, dim, factor, factor)) if "tiles" in self.inputs else None
        self.block = FeatSharpBlock(
            dim,
            heads,
            window_size,
            mlp_hidden or default_mlp_hidden(dim),
            layer_scale_init,
            layer_norm,
            num_inputs=len(self.inputs),
            residual=residual_index,
            attention_backend=attention_backend,
        )
        if checkpoint_activations and self.base is not None and hasattr(self.base, "jbu"):
            self.base.jbu.checkpoint_activations = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # exports before the base option held the JBU stack at `jbu.`; it is now the base's `jbu.`
        for key in [k for k in state_dict if k.startswith(prefix + "jbu.")]:
            state_dict[prefix + "base." + key[len(prefix) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def tile_buffer(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        """The tile mosaic plus each tile's learned position embedding."""
        tiles = self.tile_mosaic(images, lowres, featurize, tile_features)
        if self.tile_pos is None:
            return tiles
        (b, c), (h, w), u = tiles.shape[:2], lowres.shape[-2:], self.factor
        # tile (i, j) covers rows i*h.. and columns j*w..: broadcast its embedding over that block
        pos = self.tile_pos.view(1, c, u, 1, u, 1).to(tiles.dtype)
        return (tiles.reshape(b, c, u, h, u, w) + pos).view(b, c, u * h, u * w)

    def base_buffer(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        """The base upsampler's output (it gets the tile features too if it uses tiles)."""
        assert self.base is not None
        if getattr(self.base, "uses_tiles", False):
            return self.base(images, lowres, featurize, tile_features=tile_features)
        return self.base(images, lowres, featurize)

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        make = {"base": self.base_buffer, "tiles": self.tile_buffer}
        buffers = [make[name](images, lowres, featurize, tile_features) for name in self.inputs]
        dtype = self.block.ls2.gamma.dtype  # PHI-S features are float32; a bf16 block takes its own dtype
        # concatenated straight into the block's [B,H,W,nC] layout (LayerNorm then reads it as is)
        x = torch.cat([b.to(dtype).permute(0, 2, 3, 1) for b in buffers], dim=-1)
        if self.checkpoint_activations and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False).permute(0, 3, 1, 2)
        return self.block(x).permute(0, 3, 1, 2)


# the class is the builder (one signature); the registry records its options as build_config
build_featsharp = UPSAMPLERS.register("featsharp")(FeatSharpUpsampler)

"""Bounded-memory upsampling: every registered upsampler, run in chunks, gives its unbounded output.

``chunked_upsample(upsampler, images, lowres, featurize, max_memory_mb=..., max_pixels=...)`` returns
``upsampler(images, lowres, featurize)`` (to float rounding, ~1e-6) while holding only one chunk's
working memory at a time. How each upsampler is split (its *strategy*, :func:`plan_chunks`):

- ``local`` (bilinear, featup): the output is cut into square tiles of ``t x t`` low-res cells; each
  tile runs the upsampler itself on the crop of the low-res map and of the image that covers the
  tile plus a *halo* of low-res cells, and keeps the tile's inner part. The halo is the receptive
  field: one cell for bilinear interpolation (two for bicubic), and for the JBU stack, walking the
  stages from the last, each stage's window radius ``r`` (in its output pixels) plus its
  interpolation support (in its input pixels). Inside the halo every window, interpolation and
  pooling cell sees exactly what it sees on the whole map; the map's own borders are the crop's
  borders, so border masking (and ``border: reflect``) acts where it always does.
- ``window`` (naf, anyup): their image encoders hold GroupNorms (statistics over the whole map), so
  the queries and keys (``D`` = 64 channels by default, not ``C``) are computed once on the whole
  output grid; the ``k x k`` neighbourhood attention over the ``C``-channel values, which is what
  costs, runs per tile with a halo of ``ceil(r / u) + 1`` cells (the window plus the bilinear lift).
- ``queries`` (jafar, loftup): global attention from every output pixel to every low-res token is
  exact under query chunking; ``query_chunk`` is set from the budget for the call.
- ``featsharp``: the tile mosaic (the teacher on ``u x u`` tiles, ``tile_batch`` tiles per teacher
  call) is written straight into one ``[B,C,uh,uw]`` buffer with its position embedding; the base
  upsampler (its own strategy: local bases per tile, others once) and the block (LayerNorm, a
  ``window_size`` neighbourhood attention, SwiGLU) then run per tile with the block's window
  radius as extra halo.
- ``tiles`` / ``s2``: the teacher runs on ``tile_batch`` tiles per call, each written into its block
  of the output (s2 adds its bilinear part per block).

The batch is split too: images go one at a time.

How the chunk size follows from the budget: each strategy has a per-output-pixel cost ``bytes_px``
of the region a chunk works on (halo included) and a ``fixed`` cost held for the whole call (the
mosaic buffer of featsharp, the queries and keys of naf/anyup). Both are linear in the feature
width ``C`` and the element size, with coefficients measured with the CPU profiler
(:mod:`radiosharp.bench.measure`) on the unbounded call and rounded up (:data:`COST`). Then, per
image::

    max_pixels = (budget - fixed) / bytes_px        # output pixels of one chunk's working region
    t = floor(sqrt(max_pixels) / u) - 2 * halo      # tile side in low-res cells, at least 1

(``queries``: ``query_chunk = (budget - fixed) / bytes_per_query``.) Where the neighbourhood-attention
kernel bounds its own row-tile workspace (``upsamplers._kernels.TILE_ELEMENTS``), a quarter of the
budget (at most the kernel's default) is set aside for it and the kernel is held to it for the call.
``max_pixels`` can also be given directly. The budget is for the upsampler's working memory: it does
not count the inputs, the returned ``[B,C,uh,uw]`` output, nor the teacher's own memory for its
calls (``tile_batch`` bounds how many tiles one teacher call sees). A budget below ``fixed`` runs
with the smallest chunk (``t = 1``) and says so in the plan (``within_budget: False``).

Exactness is tested to 1e-5 for every registered upsampler, border tiles included
(``tests/test_chunked.py``). Under autograd the result and its gradients are the same, but every
chunk's graph is kept: bounded memory is an inference feature (training bounds memory with the
upsamplers' ``checkpoint_activations`` option instead).

Third-party upsamplers can take part by defining ``chunked_forward(images, lowres, featurize,
max_pixels, tile_features)``; others run unchunked, with a warning.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from radiosharp.images import resize
from upsamplers._base import Upsampler

Featurize = Callable[[Tensor], Tensor]
MB = 2**20

# Working memory of a chunk, in elements per output pixel of its region (halo included):
# ``per_c * C + per_d * D`` (D: the key / encoder width); ``fixed_*``: held for the whole call, per
# output pixel of the whole map. Measured with the CPU profiler (float32, C = 32 and 128, 4x) on the
# unbounded and the chunked calls, and rounded up.
COST: dict[str, dict[str, float]] = {
    "bilinear": {"per_c": 2.0, "per_d": 0.0, "fixed_c": 0.0, "fixed_d": 0.0},
    "featup": {"per_c": 6.0, "per_d": 6.0, "fixed_c": 0.0, "fixed_d": 0.0},
    "window": {"per_c": 5.0, "per_d": 3.0, "fixed_c": 0.0, "fixed_d": 4.0},
    "featsharp": {"per_c": 20.0, "per_d": 0.0, "fixed_c": 1.0, "fixed_d": 0.0},
    "tiles": {"per_c": 4.0, "per_d": 0.0, "fixed_c": 0.0, "fixed_d": 0.0},
    "queries": {"per_c": 0.0, "per_d": 0.0, "fixed_c": 1.5, "fixed_d": 3.0},
}


@dataclass
class ChunkPlan:
    """How a call is split (see the module docstring); :meth:`as_dict` gives a JSON-able record."""

    strategy: str
    budget_bytes: int | None
    max_pixels: int | None
    tile_cells: int | None = None  # tile side in low-res cells (every strategy but queries)
    halo_cells: int = 0  # the widest halo of the chunk's regions
    query_chunk: int | None = None  # queries strategy
    tile_batch: int | None = None  # teacher tiles per featurize call (tiles, s2, featsharp)
    fixed_bytes: int = 0  # held for the whole call (estimate)
    kernel_workspace_bytes: int | None = None  # the neighbourhood-attention kernel's tile workspace cap
    chunk_bytes: int = 0  # one chunk's working memory at tile_cells (estimate)
    within_budget: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- strategies


def _jbu_halo(stack: nn.Module) -> int:
    """Low-res cells a JBU stack's output depends on beyond its own cell (stages walked from the last)."""
    need = 0.0  # in the current stage's output pixels
    for stage in reversed(list(stack.stages)):
        support = 2 if stage.pre_upsample == "bicubic" else 1
        need = math.ceil((need + stage.kernel_size // 2) / stage.factor) + support
    return int(need)


def _strategy(up: nn.Module) -> str:
    from upsamplers.anyup import AnyUpUpsampler
    from upsamplers.bilinear import BilinearUpsampler
    from upsamplers.featsharp import FeatSharpUpsampler
    from upsamplers.jafar import JafarUpsampler
    from upsamplers.jbu import FeatUpUpsampler
    from upsamplers.loftup import LoftUpUpsampler
    from upsamplers.naf import NafUpsampler
    from upsamplers.tiles import S2Upsampler, TilesUpsampler

    if getattr(up, "factor", 1) == 1 and isinstance(up, (BilinearUpsampler,)):
        return "whole"
    table: list[tuple[tuple[type, ...], str]] = [
        ((BilinearUpsampler,), "bilinear"),
        ((FeatUpUpsampler,), "featup"),
        ((NafUpsampler, AnyUpUpsampler), "window"),
        ((JafarUpsampler, LoftUpUpsampler), "queries"),
        ((FeatSharpUpsampler,), "featsharp"),
        ((TilesUpsampler, S2Upsampler), "tiles"),
    ]
    for classes, name in table:
        if type(up) in classes:  # exact types: a subclass may change the maths
            return name
    if hasattr(up, "chunked_forward"):
        return "custom"
    return "whole"


def halo_cells(up: nn.Module) -> int:
    """The halo (low-res cells) of a tile-local strategy; 0 for the others."""
    strategy = _strategy(up)
    if strategy == "bilinear":
        return 1
    if strategy == "featup":
        return _jbu_halo(up.jbu)
    if strategy == "window":
        return math.ceil((up.kernel_size // 2) / up.factor) + 1
    if strategy == "featsharp":
        block_halo = math.ceil((up.block.attn.window_size // 2) / up.factor)
        return block_halo + (halo_cells(up.base) if up.base is not None and _is_local(up.base) else 0)
    if strategy == "tiles":
        return 1  # s2's bilinear part
    return 0


def _is_local(up: nn.Module) -> bool:
    return _strategy(up) in ("bilinear", "featup")


def _key_dim(up: nn.Module, strategy: str) -> int:
    if strategy == "featup":
        return max(stage.range_proj[-1].out_channels for stage in up.jbu.stages)
    if strategy == "window":
        return _encoder_dim(up)
    if strategy == "queries":
        return int(up.qk_dim)
    return 0


def _encoder_dim(up: nn.Module) -> int:
    for name in ("to_q", "query_encoder"):
        layer = getattr(up, name, None)
        if layer is not None:
            first = layer if isinstance(layer, nn.Conv2d) else layer[0]
            return int(first.out_channels)
    return 64


def _terms(up: nn.Module, strategy: str, c: int, elt: int) -> tuple[float, list[tuple[float, int]]]:
    """(fixed bytes per output pixel, [(bytes per pixel of a region, its halo in cells)]) of one call."""
    cost = COST.get(strategy)
    if cost is None:
        return 0.0, []
    d = _key_dim(up, strategy)
    fixed = (cost["fixed_c"] * c + cost["fixed_d"] * d) * elt
    if strategy == "window" and hasattr(up, "unification"):
        fixed += 2 * d * elt  # anyup: its key and aggregation encoders besides naf's
    per = (cost["per_c"] * c + cost["per_d"] * d) * elt
    if strategy == "featsharp":
        block_halo = math.ceil((up.block.attn.window_size // 2) / up.factor)
        terms = [(per, block_halo)]
        if up.base is not None and _is_local(up.base):
            sub_fixed, sub_terms = _terms(up.base, _strategy(up.base), c, elt)
            fixed += sub_fixed
            terms += [(b, block_halo + h) for b, h in sub_terms]
        return fixed, terms
    if strategy == "tiles" and not hasattr(up, "beta"):
        return fixed, []
    return fixed, [(per, halo_cells(up))]


def _kernel_workspace(budget: int | None) -> int | None:
    """The cap on the neighbourhood-attention kernel's row-tile workspace under ``budget``: a quarter of
    it, at most the kernel's own (``upsamplers._kernels.TILE_ELEMENTS`` float32 elements, where it has one)."""
    import upsamplers._kernels as _kernels

    default = getattr(_kernels, "TILE_ELEMENTS", None)
    if budget is None or default is None:
        return None
    return int(min(default * 4, max(budget // 4, 4)))


@contextlib.contextmanager
def _workspace(plan: ChunkPlan) -> Iterator[None]:
    """The kernel's tile workspace lowered to the plan's cap for the call (module-level: not thread-safe)."""
    import upsamplers._kernels as _kernels

    if plan.kernel_workspace_bytes is None or not hasattr(_kernels, "TILE_ELEMENTS"):
        yield
        return
    saved = _kernels.TILE_ELEMENTS
    _kernels.TILE_ELEMENTS = max(1, min(saved, plan.kernel_workspace_bytes // 4))
    try:
        yield
    finally:
        _kernels.TILE_ELEMENTS = saved


def plan_chunks(
    up: nn.Module,
    lowres: Tensor,
    max_memory_mb: float | None = None,
    max_pixels: int | None = None,
    tile_batch: int | None = None,
) -> ChunkPlan:
    """The split of one image's call (see the module docstring for the derivation)."""
    if max_memory_mb is not None and max_memory_mb <= 0:
        raise ValueError(f"max_memory_mb must be > 0, got {max_memory_mb}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    strategy = _strategy(up)
    _, c, h, w = lowres.shape
    u = int(up.factor)
    elt = max(lowres.element_size(), 4)  # the kernels accumulate in float32
    fixed_px, terms = _terms(up, strategy, c, elt)
    fixed = int(math.ceil(fixed_px * u * h * u * w))
    budget = None if max_memory_mb is None else int(max_memory_mb * MB)
    workspace = _kernel_workspace(budget)
    if budget is not None and workspace is not None:
        budget -= workspace
    halo = max((t[1] for t in terms), default=halo_cells(up))
    plan = ChunkPlan(strategy, budget, max_pixels, halo_cells=halo, fixed_bytes=fixed)
    plan.kernel_workspace_bytes = workspace
    if budget is not None and workspace is not None:
        plan.budget_bytes = budget + workspace
    if strategy in ("tiles", "featsharp"):
        plan.tile_batch = tile_batch or 1

    def chunk_bytes(t: int) -> int:
        return int(sum(b * (min(t + 2 * hc, h) * u) * (min(t + 2 * hc, w) * u) for b, hc in terms))

    if strategy == "queries":
        heads = int(getattr(up, "num_heads", 1))
        per_query = (2 * heads * (h * w + c) + 2 * c) * elt  # logits, softmax, per-head outputs
        if max_pixels is not None:
            plan.query_chunk = int(max_pixels)
        elif budget is not None:
            plan.within_budget = budget > fixed + per_query
            plan.query_chunk = int(max(1, (budget - fixed) // per_query))
        plan.chunk_bytes = int(per_query * (plan.query_chunk or u * h * u * w))
        return plan
    side = max(h, w)
    if max_pixels is not None:
        t = math.isqrt(int(max_pixels)) // u - 2 * halo
        plan.within_budget = t >= 1
    elif budget is not None:
        t = side  # the largest tile whose estimate fits (chunk_bytes grows with t)
        while t > 1 and fixed + chunk_bytes(t) > budget:
            t = max(1, min(t - 1, int(t * 0.9)))
        plan.within_budget = fixed + chunk_bytes(t) <= budget
    else:
        t = side
    plan.tile_cells = max(1, min(t, side))
    plan.chunk_bytes = chunk_bytes(plan.tile_cells)
    return plan


# ----------------------------------------------------------------------------- driver


def _boxes(h: int, w: int, t: int, halo: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """(work rows, work cols, inner rows, inner cols) per tile, in low-res cells; inner is relative to work."""
    for i0 in range(0, h, t):
        i1 = min(i0 + t, h)
        a0, a1 = max(i0 - halo, 0), min(i1 + halo, h)
        for j0 in range(0, w, t):
            j1 = min(j0 + t, w)
            b0, b1 = max(j0 - halo, 0), min(j1 + halo, w)
            yield slice(a0, a1), slice(b0, b1), slice(i0 - a0, i1 - a0), slice(j0 - b0, j1 - b0)


def _scaled(s: slice, k: int) -> slice:
    return slice(s.start * k, s.stop * k)


def _absolute(work: slice, inner: slice) -> slice:
    return slice(work.start + inner.start, work.start + inner.stop)


def _image_cell(images: Tensor, lowres: Tensor) -> tuple[int, int] | None:
    """Image pixels per low-res cell, or None when the image is no whole multiple of the grid."""
    (hh, ww), (h, w) = images.shape[-2:], lowres.shape[-2:]
    if hh % h or ww % w:
        return None
    return hh // h, ww // w


def _crop_call(up: nn.Module, images: Tensor, lowres: Tensor, featurize: Featurize, rows: slice, cols: slice) -> Tensor:
    """The upsampler's own call on the crop of the low-res map (and the image) over ``rows x cols`` cells."""
    cell = _image_cell(images, lowres)
    assert cell is not None
    crop = images[..., _scaled(rows, cell[0]), _scaled(cols, cell[1])]
    return up(crop, lowres[..., rows, cols], featurize)


def _local_region(up: nn.Module, images: Tensor, lowres: Tensor, featurize: Featurize, rows: slice, cols: slice):
    """A tile-local upsampler's output over the cells ``rows x cols`` (exact: crops with its halo)."""
    h, w = lowres.shape[-2:]
    halo, u = halo_cells(up), up.factor
    a = slice(max(rows.start - halo, 0), min(rows.stop + halo, h))
    b = slice(max(cols.start - halo, 0), min(cols.stop + halo, w))
    out = _crop_call(up, images, lowres, featurize, a, b)
    return out[
        ...,
        _scaled(slice(rows.start - a.start, rows.stop - a.start), u),
        _scaled(slice(cols.start - b.start, cols.stop - b.start), u),
    ]


def _run_local(up, images, lowres, featurize, plan, tile_features):
    h, w = lowres.shape[-2:]
    u, out = up.factor, None
    for rows, cols, ri, ci in _boxes(h, w, plan.tile_cells, plan.halo_cells):
        piece = _crop_call(up, images, lowres, featurize, rows, cols)
        if out is None:
            out = piece.new_empty(*piece.shape[:2], u * h, u * w)
        out[..., _scaled(_absolute(rows, ri), u), _scaled(_absolute(cols, ci), u)] = piece[
            ..., _scaled(ri, u), _scaled(ci, u)
        ]
    return out


def _by_rows(fn: Callable[[Tensor], Tensor], x: Tensor, rows: int, halo: int = 1) -> Tensor:
    """``fn(x)`` for a map-to-map ``fn`` with a ``(2 halo + 1)``-row support, ``rows`` rows at a time."""
    h = x.shape[-2]
    if rows >= h:
        return fn(x)
    parts = []
    for i0 in range(0, h, rows):
        i1 = min(i0 + rows, h)
        a0, a1 = max(i0 - halo, 0), min(i1 + halo, h)
        parts.append(fn(x[..., a0:a1, :])[..., i0 - a0 : i1 - a0, :])
    return torch.cat(parts, dim=-2)


def _window_inputs(up: nn.Module, images: Tensor, lowres: Tensor, size: tuple[int, int], plan: ChunkPlan):
    """naf/anyup queries and keys on the whole output grid; anyup's feature unification (a
    ``[B,C,M,h,w]`` softmax on the low-res grid, 3x3 support) runs a few low-res rows at a time."""
    from upsamplers._image_guided import rotary_heads
    from upsamplers.anyup import AnyUpUpsampler

    if type(up) is not AnyUpUpsampler:
        return up.attention_inputs(images, lowres, size)
    c, w = lowres.shape[1], lowres.shape[-1]
    elt = max(lowres.element_size(), 4)
    per_row = 3 * c * up.unification.basis_size * w * elt
    if plan.budget_bytes is not None:
        allowed = plan.budget_bytes - plan.fixed_bytes - (plan.kernel_workspace_bytes or 0)
    else:
        allowed = (plan.max_pixels or 1) * c * elt
    rows = max(1, int(allowed // per_row))
    enc = up.image_encoder(images, size, up.image_scale)
    q = up.query_encoder(enc)
    image_keys = torch.nn.functional.adaptive_avg_pool2d(up.key_encoder(enc), lowres.shape[-2:])
    unified = _by_rows(up.unification, lowres, rows, halo=up.unification.kernel_size // 2)
    k = resize(up.aggregation(torch.cat([image_keys, unified], dim=1)), size)
    return rotary_heads(q, up.num_heads, up.rope_base), rotary_heads(k, up.num_heads, up.rope_base)


def _run_window(up, images, lowres, featurize, plan, tile_features):
    from upsamplers._image_guided import merge_heads, split_heads
    from upsamplers._kernels import neighborhood_attention

    up.check_inputs(images, lowres)
    (b, c, h, w), u = lowres.shape, up.factor
    size = up.output_size(lowres)
    q, k = _window_inputs(up, images, lowres, size, plan)
    bias = up.position_bias.to(q.dtype)
    scale = q.shape[2] ** -0.5
    out = None
    for rows, cols, ri, ci in _boxes(h, w, plan.tile_cells, plan.halo_cells):
        py, px = _scaled(rows, u), _scaled(cols, u)
        crop = lowres[..., rows, cols]
        values = split_heads(resize(crop, (crop.shape[-2] * u, crop.shape[-1] * u)), up.num_heads)
        piece = neighborhood_attention(q[..., py, px], k[..., py, px], values, up.kernel_size, bias, scale=scale)
        piece = merge_heads(piece, c)
        if out is None:
            out = piece.new_empty(b, c, u * h, u * w)
        out[..., _scaled(_absolute(rows, ri), u), _scaled(_absolute(cols, ci), u)] = piece[
            ..., _scaled(ri, u), _scaled(ci, u)
        ]
    return out


@contextlib.contextmanager
def _query_chunk(up: nn.Module, chunk: int | None) -> Iterator[None]:
    saved = up.query_chunk
    if chunk is not None:
        up.query_chunk = int(chunk)
    try:
        yield
    finally:
        up.query_chunk = saved


def _run_queries(up, images, lowres, featurize, plan, tile_features):
    with _query_chunk(up, plan.query_chunk):
        return up(images, lowres, featurize)


def _tile_features(up, images, lowres, featurize, tile_features, tile_batch: int) -> Iterator[tuple[int, Tensor]]:
    """(tile index, [n,C,h,w] teacher features of tiles index..index+n) in groups of ``tile_batch``."""
    if tile_features is not None:
        yield 0, tile_features
        return
    tiles = up.tile_inputs(images, up.teacher_input_size(lowres))
    for start in range(0, len(tiles), tile_batch):
        yield start, featurize(tiles[start : start + tile_batch])


def _mosaic_into(up, images, lowres, featurize, tile_features, tile_batch, pos: Tensor | None) -> Tensor:
    """The ``u x u`` tile mosaic written block by block into one map (plus ``pos`` per tile)."""
    (b, _, h, w), u = lowres.shape, up.factor
    mosaic = None
    for start, feats in _tile_features(up, images, lowres, featurize, tile_features, tile_batch):
        if feats.shape[-2:] != (h, w):
            raise ValueError(f"tile features {tuple(feats.shape)} do not match the low-res grid {h}x{w}")
        if mosaic is None:
            mosaic = feats.new_empty(b, feats.shape[1], u * h, u * w)
        for n in range(len(feats)):
            t = start + n
            img, i, j = t // (u * u), (t // u) % u, t % u
            block = feats[n]
            if pos is not None:
                block = block + pos[0, :, i, j].to(block.dtype).view(-1, 1, 1)
            mosaic[img, :, i * h : (i + 1) * h, j * w : (j + 1) * w] = block
    assert mosaic is not None
    return mosaic


def _run_tiles(up, images, lowres, featurize, plan, tile_features):
    from upsamplers.tiles import S2Upsampler

    up.check_inputs(images, lowres)
    mosaic = _mosaic_into(up, images, lowres, featurize, tile_features, plan.tile_batch or 1, None)
    if not isinstance(up, S2Upsampler):
        return mosaic
    # s2: beta * bilinear + (1 - beta) * tiles, block by block
    (h, w), u = lowres.shape[-2:], up.factor
    for rows, cols, ri, ci in _boxes(h, w, plan.tile_cells or max(h, w), plan.halo_cells):
        crop = lowres[..., rows, cols]
        smooth = torch.nn.functional.interpolate(
            crop, size=(crop.shape[-2] * u, crop.shape[-1] * u), mode="bilinear", align_corners=False
        )
        py, px = _scaled(_absolute(rows, ri), u), _scaled(_absolute(cols, ci), u)
        mosaic[..., py, px] = (
            up.beta * smooth[..., _scaled(ri, u), _scaled(ci, u)] + (1 - up.beta) * mosaic[..., py, px]
        )
    return mosaic


def _run_featsharp(up, images, lowres, featurize, plan, tile_features):
    up.check_inputs(images, lowres)
    (b, _, h, w), u = lowres.shape, up.factor
    dtype = up.block.ls2.gamma.dtype
    tiles = None
    if "tiles" in up.inputs:
        tiles = _mosaic_into(up, images, lowres, featurize, tile_features, plan.tile_batch or 1, up.tile_pos)
    base_full = None
    if up.base is not None and not _is_local(up.base):
        base_mb = None if plan.budget_bytes is None else plan.budget_bytes / MB
        base_full = chunked_upsample(
            up.base, images, lowres, featurize, base_mb, plan.max_pixels, tile_features, plan.tile_batch
        )
    block_halo = math.ceil((up.block.attn.window_size // 2) / u)
    out = None
    for rows, cols, ri, ci in _boxes(h, w, plan.tile_cells, block_halo):
        py, px = _scaled(rows, u), _scaled(cols, u)
        buffers = []
        for name in up.inputs:
            if name == "tiles":
                assert tiles is not None
                buffers.append(tiles[..., py, px])
            elif base_full is not None:
                buffers.append(base_full[..., py, px])
            else:
                buffers.append(_local_region(up.base, images, lowres, featurize, rows, cols))
        x = torch.cat([t.to(dtype).permute(0, 2, 3, 1) for t in buffers], dim=-1)
        piece = up.block(x).permute(0, 3, 1, 2)
        if out is None:
            out = piece.new_empty(b, piece.shape[1], u * h, u * w)
        out[..., _scaled(_absolute(rows, ri), u), _scaled(_absolute(cols, ci), u)] = piece[
            ..., _scaled(ri, u), _scaled(ci, u)
        ]
    return out


RUNNERS = {
    "bilinear": _run_local,
    "featup": _run_local,
    "window": _run_window,
    "queries": _run_queries,
    "featsharp": _run_featsharp,
    "tiles": _run_tiles,
}


def chunked_upsample(
    upsampler: nn.Module,
    images: Tensor,
    lowres: Tensor,
    featurize: Featurize,
    max_memory_mb: float | None = None,
    max_pixels: int | None = None,
    tile_features: Tensor | None = None,
    tile_batch: int | None = None,
) -> Tensor:
    """``upsampler(images, lowres, featurize, tile_features)`` within a memory budget (module docstring).

    ``max_memory_mb``: the working-memory budget of one call (per image); ``max_pixels``: the output
    pixels of one chunk's working region (halo included) instead; with neither, the call is unchunked.
    ``tile_batch``: teacher tiles per featurize call (tiles, s2, featsharp; default 1).
    """
    if max_memory_mb is None and max_pixels is None:
        if tile_features is not None and getattr(upsampler, "uses_tiles", False):
            return upsampler(images, lowres, featurize, tile_features=tile_features)
        return upsampler(images, lowres, featurize)
    b = lowres.shape[0]
    if b > 1:
        per = None if tile_features is None else len(tile_features) // b
        outs = []
        for i in range(b):
            tf = None if tile_features is None or per is None else tile_features[i * per : (i + 1) * per]
            one = chunked_upsample(
                upsampler, images[i : i + 1], lowres[i : i + 1], featurize, max_memory_mb, max_pixels, tf, tile_batch
            )
            outs.append(one)
        return torch.cat(outs)
    plan = plan_chunks(upsampler, lowres, max_memory_mb, max_pixels, tile_batch)
    if plan.strategy == "custom":
        return upsampler.chunked_forward(images, lowres, featurize, plan.max_pixels, tile_features)
    needs_cells = plan.strategy in ("bilinear", "featup", "featsharp", "window")
    if plan.strategy == "whole" or (needs_cells and _image_cell(images, lowres) is None):
        if plan.strategy == "whole" and getattr(upsampler, "factor", 1) != 1:
            warnings.warn(
                f"chunked_upsample: {type(upsampler).__name__} has no chunked form; running it unbounded", stacklevel=2
            )
        if tile_features is not None and getattr(upsampler, "uses_tiles", False):
            return upsampler(images, lowres, featurize, tile_features=tile_features)
        return upsampler(images, lowres, featurize)
    with _workspace(plan):
        return RUNNERS[plan.strategy](upsampler, images, lowres, featurize, plan, tile_features)


def bounded_forward(
    self: nn.Module,
    images: Tensor,
    lowres: Tensor,
    featurize: Callable[[Tensor], Tensor],
    max_memory_mb: float,
    tile_batch: int | None = None,
) -> Tensor:
    """``forward`` within a working-memory budget: :func:`chunked_upsample` as a method of every
    upsampler (the core calls ``upsampler.bounded_forward``, never this module)."""
    return chunked_upsample(self, images, lowres, featurize, max_memory_mb, tile_batch=tile_batch)


Upsampler.bounded_forward = bounded_forward  # type: ignore[attr-defined]

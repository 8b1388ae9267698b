"""2-D neighbourhood attention without unfolding: the kernel under JBU and FeatSharp.

Both the joint bilateral upsampler (FeatUp's JBU) and FeatSharp's sliding-window
attention compute, for every pixel ``i`` of a map and every offset ``o`` of a
``k x k`` window around it::

    out[i] = sum_o softmax_o(scale * q[i] . k[i+o] + bias[o]) * v[i+o]

JBU is the case of one head with ``q = k = h(guidance)`` (times ``1/sigma_range^2``)
and ``bias[o] = -|o|^2 / (2 sigma_spatial^2)``: the product "range softmax times
spatial Gaussian, renormalized" of the paper equals one softmax over the summed
logits, because the range softmax's own normalizer cancels. FeatSharp's block is
the multi-head case with an ALiBi-style ``bias[h, o] = -slope_h . |o|``.

Border convention: keys outside the map are MASKED (they get zero weight and the
softmax renormalizes over the keys that exist), so a corner pixel of a 5x5 window
attends to 3x3 keys. We chose masking over natten's clamped windows because the
position bias then stays a function of the true offset, JBU and attention share one
kernel, and any map size (even smaller than the window) works. The naive reference
:func:`neighborhood_attention_reference` follows the same convention.

Memory: a naive implementation unfolds keys and values into ``[B,N,D,k*k,H,W]``
(``k^2`` times the map; 49x for JBU's 7x7 window) and autograd keeps those copies
for backward. Here the forward loops over the ``k*k`` offsets, reading shifted
slices (views) of a zero-padded map, with an online softmax (running max,
denominator and numerator, flash-attention style). The custom autograd Function
saves only its inputs, the output and the per-pixel log-sum-exp; backward recomputes
each offset's weights from them. Extra memory, forward or backward, is a few maps of
the output's size (the padded copies of k and v, one product temporary, the
accumulators), independent of ``k``. Measured on CPU (``torch.profiler`` with
``profile_memory``, summing self allocations) for forward + backward on one
``[1,1,64,64,64]`` float32 map: peak extra memory 4.1x the map (3x3 window) and 4.4x
(7x7) for this kernel, against 28x and 150x for the unfold reference.
``tests/test_kernels.py`` checks what autograd keeps (saved-tensor hooks): at most
~4x the map for any window here, 25x more than that for the 7x7 unfold version.

Backends (:func:`neighborhood_attention`'s ``backend``):

- ``reference_tiled``: the row-tiled kernel. Per tile of T rows it computes all ``k*k`` logits
  at once from a window VIEW of the padded keys (``Tensor.unfold``, no copy), one softmax, and one
  weighted sum over a window view of the values: about 10 ops a tile instead of about 12 per window
  offset, so a busy 2-thread CPU does not stall ~600 times a call. The weights are computed once per
  tile from the keys alone (JBU's small range keys); backward recomputes them and scatters the key
  and value gradients with ``F.fold``. T keeps one tile's ``[B,N,max(D,Dv),T,W,k,k]`` products near
  :data:`TILE_ELEMENTS` (16 MiB in float32; at least the map itself), so temporaries stay bounded
  whatever the map size; saved tensors are the same as the first kernel's.
- ``reference_v1``: the first kernel described above (one online-softmax pass per offset).
- ``reference`` (default): the tiled kernel for JBU-like calls (one head, values >= 4x wider than the
  keys), where it measured faster, the first kernel otherwise (:func:`prefers_tiles`).
- ``flex``: ``torch.nn.attention.flex_attention`` compiled (``dynamic=False``), on the map flattened
  row-major to ``H*W`` tokens, with a sliding-window block mask (keys whose row and column are within
  ``r``: keys outside the map simply do not exist, i.e. the masking convention above, not clamped
  windows) and a ``score_mod`` adding ``bias[head, offset]``. On CUDA the head dims are zero-padded to
  a power of two (>= 16) for the fused kernel. flex has no backward on CPU; a failed compile is
  logged once and the reference runs from then on.
- ``flex_eager``: flex without compile (materializes all ``[B,N,HW,HW]`` scores; tests only).
- ``triton``: the Triton kernels of :mod:`upsamplers._triton_attention` (forward, and a gather backward
  that fills every tap's bias gradient): one program per block of pixels walks the window in registers.
  CUDA only (or Triton's CPU interpreter, ``TRITON_INTERPRET=1``, which the tests use); float64 and a
  failed compile run the reference and log why, once.
- ``auto``: on CUDA, ``triton`` for JBU-like calls (:func:`prefers_tiles`: one head, wide values) and
  ``flex`` for multi-head ones; the reference elsewhere.

Tests: ``tests/test_kernels.py`` (the kernel against unfold) and ``tests/test_attention_backends.py``
(every backend against the others, fp32 and bf16, border pixels included; CUDA ones marked ``gpu``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKENDS",
    "neighborhood_attention",
    "neighborhood_attention_flex",
    "neighborhood_attention_reference",
    "prefers_tiles",
    "resolve_backend",
    "triton_unavailable",
    "window_offsets",
]


def window_offsets(kernel_size: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets of a ``k x k`` window in row-major order (index = bias column)."""
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _check(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1 (e.g. 3, 5, 7), got {kernel_size}")
    if q.ndim != 5 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B,heads,D,H,W]; got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.ndim != 5 or v.shape[:2] != q.shape[:2] or v.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"v must be [B,heads,Dv,H,W] matching q {tuple(q.shape)}; got {tuple(v.shape)}")
    if bias is not None and tuple(bias.shape) != (q.shape[1], kernel_size * kernel_size):
        raise ValueError(
            f"bias must be [heads, kernel_size^2] = [{q.shape[1]}, {kernel_size**2}], got {tuple(bias.shape)}"
        )


def _outside(h: int, w: int, r: int, device: torch.device) -> Tensor:
    """[H+2r, W+2r] bool, True on the padding: the keys each offset must mask are its shifted slice.

    Built once per call; per-offset slices are views, so masking needs no host sync
    (no data-dependent "is this offset inside?" test) and no per-offset allocation.
    """
    inside = F.pad(torch.ones(h, w, dtype=torch.bool, device=device), (r, r, r, r))
    return ~inside


def _center_first(kernel_size: int) -> list[tuple[int, int, int]]:
    """(index, dy, dx) with the centre first: it is always inside the map, so the running max starts finite."""
    offsets = list(enumerate(window_offsets(kernel_size)))
    centre = len(offsets) // 2
    return [(i, dy, dx) for i, (dy, dx) in [offsets[centre]] + offsets[:centre] + offsets[centre + 1 :]]


def _logits(
    qs: Tensor, k_pad: Tensor, bias: Tensor | None, outside: Tensor, o: int, dy: int, dx: int, r: int, h: int, w: int
) -> Tensor:
    """[B,N,H,W] logits of offset (dy,dx): scaled q . shifted k + bias, -inf outside the map."""
    window = (slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
    logits = torch.linalg.vecdot(qs, k_pad[(...,) + window], dim=2)
    if bias is not None:
        logits = logits + bias[:, o].view(1, -1, 1, 1)
    if dy or dx:  # the centre key is always inside the map
        logits = logits.masked_fill(outside[window], float("-inf"))
    return logits


def _accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _NeighborhoodAttentionV1(torch.autograd.Function):
    """The first kernel (``backend="reference_v1"``): one online-softmax pass per window offset forward,
    recompute backward (see the module docstring). Kept to measure and test the tiled kernel against."""

    @staticmethod
    def forward(ctx, q, k, v, bias, kernel_size: int, scale: float):  # type: ignore[override]
        with torch.autocast(device_type=q.device.type, enabled=False):  # accumulate in >= float32
            return _NeighborhoodAttentionV1._forward(ctx, q, k, v, bias, kernel_size, scale)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        with torch.autocast(device_type=dout.device.type, enabled=False):
            return _NeighborhoodAttentionV1._backward(ctx, dout)

    @staticmethod
    def _forward(ctx, q, k, v, bias, kernel_size: int, scale: float):
        out_dtype = v.dtype
        acc = _accumulation_dtype(q, k, v)
        r, (h, w) = kernel_size // 2, q.shape[-2:]
        qs = _scaled(q.to(acc), scale)
        k_pad = F.pad(k.to(acc), (r, r, r, r))
        v_pad = F.pad(v.to(acc), (r, r, r, r))
        bias_acc = bias.to(acc) if bias is not None else None
        outside = _outside(h, w, r, q.device)
        m = den = num = None
        for o, dy, dx in _center_first(kernel_size):
            logits = _logits(qs, k_pad, bias_acc, outside, o, dy, dx, r, h, w)
            v_o = v_pad[..., r + dy : r + dy + h, r + dx : r + dx + w]
            if m is None:
                m, den, num = logits, torch.ones_like(logits), v_o.clone()
                continue
            m_new = torch.maximum(m, logits)
            decay = torch.exp(m - m_new)
            p = torch.exp(logits - m_new)
            den = den * decay + p
            num.mul_(decay.unsqueeze(2)).addcmul_(p.unsqueeze(2), v_o)
            m = m_new
        out = num.div_(den.unsqueeze(2))
        lse = m + torch.log(den)
        # The inputs are saved in the caller's dtype (a bf16 map is not kept twice, once
        # upcast) and upcast again in backward; out and lse stay in the accumulation dtype.
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.kernel_size, ctx.scale = kernel_size, scale
        return out.to(out_dtype)

    @staticmethod
    def _backward(ctx, dout):
        q_in, k_in, v_in, bias_in, out, lse = ctx.saved_tensors
        kernel_size, scale = ctx.kernel_size, ctx.scale
        acc = out.dtype
        r, (h, w) = kernel_size // 2, q_in.shape[-2:]
        dout = dout.to(acc)
        need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
        qs = _scaled(q_in.to(acc), scale)
        k_pad = F.pad(k_in.to(acc), (r, r, r, r))
        v_pad = F.pad(v_in.to(acc), (r, r, r, r))
        bias = bias_in.to(acc) if bias_in is not None else None
        outside = _outside(h, w, r, dout.device)
        delta = torch.linalg.vecdot(dout, out, dim=2)  # sum_o p_o (dout . v_o)
        dq = torch.zeros_like(qs) if need_q else None
        dk_pad = torch.zeros_like(k_pad) if need_k else None
        dv_pad = torch.zeros_like(v_pad) if need_v else None
        dbias = torch.zeros_like(bias) if (need_bias and bias is not None) else None
        for o, dy, dx in _center_first(kernel_size):
            window = (..., slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
            p = torch.exp(_logits(qs, k_pad, bias, outside, o, dy, dx, r, h, w) - lse)
            if dv_pad is not None:
                dv_pad[window].addcmul_(p.unsqueeze(2), dout)
            if dq is None and dk_pad is None and dbias is None:
                continue
            ds = p * (torch.linalg.vecdot(dout, v_pad[window], dim=2) - delta)
            if dq is not None:
                dq.addcmul_(ds.unsqueeze(2), k_pad[window])
            if dk_pad is not None:
                dk_pad[window].addcmul_(ds.unsqueeze(2), qs)
            if dbias is not None:
                dbias[:, o] = ds.sum((0, 2, 3))
        dq, dk, dv, dbias = _finish_grads(dq, dk_pad, dv_pad, dbias, (q_in, k_in, v_in, bias_in), scale, r, h, w)
        return dq, dk, dv, dbias, None, None


def _finish_grads(
    dq: Tensor | None,
    dk_pad: Tensor | None,
    dv_pad: Tensor | None,
    dbias: Tensor | None,
    inputs: tuple[Tensor, Tensor, Tensor, Tensor | None],
    scale: float,
    r: int,
    h: int,
    w: int,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The backward passes' common end: the query gradient scaled, the key / value gradients cut
    from their padded maps, each cast back to its input's dtype."""
    q_in, k_in, v_in, bias_in = inputs
    inner = (..., slice(r, r + h), slice(r, r + w))
    if dq is not None and scale != 1.0:
        dq.mul_(scale)
    return (
        dq.to(q_in.dtype) if dq is not None else None,
        dk_pad[inner].to(k_in.dtype) if dk_pad is not None else None,
        dv_pad[inner].to(v_in.dtype) if dv_pad is not None else None,
        dbias.to(bias_in.dtype) if dbias is not None and bias_in is not None else None,
    )


def _scaled(x: Tensor, scale: float) -> Tensor:
    """``x * scale``, without the pass (and the copy autograd would not need) when scale is 1 (JBU)."""
    return x if scale == 1.0 else x * scale


# ----------------------------------------------------------------------------- tiled reference

TILE_ELEMENTS = 1 << 22  # elements of one tile's [.., D, T, W, k, k] window temporary (16 MiB in float32)


def tile_rows(b: int, n: int, d: int, h: int, w: int, kernel_size: int, tile_elements: int | None = None) -> int:
    """Rows per tile: the ``[B,heads,max(D,Dv),T,W,k,k]`` temporaries of one tile stay near ``tile_elements``
    (default :data:`TILE_ELEMENTS`, and at least the map itself), so their memory does not grow with the map."""
    budget = max(TILE_ELEMENTS if tile_elements is None else tile_elements, b * n * d * h * w)
    per_row = b * n * d * w * kernel_size * kernel_size
    return max(1, min(h, budget // max(per_row, 1)))


def _windows(x_pad: Tensor, y0: int, rows: int, kernel_size: int) -> Tensor:
    """``[B,N,C,T,W,k,k]`` view (no copy) of the k x k windows of rows ``y0 .. y0+T`` of a padded map."""
    band = x_pad[..., y0 : y0 + rows + kernel_size - 1, :]
    return band.unfold(-2, kernel_size, 1).unfold(-2, kernel_size, 1)


def _inside_windows(h: int, w: int, kernel_size: int, device: torch.device) -> Tensor:
    """``[H, W, k*k]`` bool: which window offsets of each pixel land inside the map (one byte per tap)."""
    ones = torch.ones(1, 1, h, w, device=device)
    cols = F.unfold(ones, kernel_size, padding=kernel_size // 2)
    return cols.view(kernel_size * kernel_size, h, w).permute(1, 2, 0) > 0


def _window_add(inside: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[heads or 1, H, W, k*k]`` added to the logits: the bias, and -inf where the key is outside the map.
    Built once per call (``k*k`` values a pixel per head: about half a FeatSharp q map, 1/8 of JBU's values)."""
    base = torch.zeros((), dtype=dtype, device=inside.device) if bias is None else bias.view(bias.shape[0], 1, 1, -1)
    add = torch.where(inside, base, torch.full((), float("-inf"), dtype=dtype, device=inside.device))
    return add if add.ndim == 4 else add.unsqueeze(0)


def _tile_logits(qs_t: Tensor, k_pad: Tensor, add: Tensor, y0: int, rows: int, kernel_size: int) -> Tensor:
    """``[B,N,T,W,k*k]`` logits of one row tile: ``(scale q) . k`` over every window offset, plus ``add``
    (:func:`_window_add`)."""
    kwin = _windows(k_pad, y0, rows, kernel_size)  # [B,N,D,T,W,k,k] view
    dots = (qs_t[..., None, None] * kwin).sum(2).flatten(-2)
    return dots.add_(add[:, y0 : y0 + rows])


def _offsets_first(x: Tensor, kernel_size: int) -> Tensor:
    """``[B,N,T,W,k*k]`` -> contiguous ``[B,N,1,k,k,T,W]`` (the layout ``F.fold`` reads; small: no channels)."""
    return x.unflatten(-1, (kernel_size, kernel_size)).permute(0, 1, 4, 5, 2, 3).unsqueeze(2).contiguous()


def _fold_add(target_pad: Tensor, contrib: Tensor, y0: int, rows: int, kernel_size: int) -> None:
    """Scatter-add ``contrib [B,N,C,k,k,T,W]`` (value of each tile pixel's window offset) into the padded map."""
    b, n, c = contrib.shape[:3]
    w_pad = target_pad.shape[-1]
    folded = F.fold(
        contrib.reshape(b * n, c * kernel_size * kernel_size, -1), (rows + kernel_size - 1, w_pad), kernel_size
    )
    target_pad[..., y0 : y0 + rows + kernel_size - 1, :] += folded.view(b, n, c, rows + kernel_size - 1, w_pad)


class _NeighborhoodAttentionTiled(torch.autograd.Function):
    """Row-tiled kernel (``backend="reference_tiled"``; what ``reference`` runs for JBU-like calls):
    per tile of T rows, all k*k logits at once from a window view of the keys, one softmax (the
    weights are computed once, from the keys alone, as JBU needs), one weighted sum over a window view
    of the values. About 10 ops per tile forward (the first kernel: about 12 per window offset).

    Same saved tensors as the first kernel (inputs, output, log-sum-exp); backward recomputes each tile's
    weights and scatters the key and value gradients with ``F.fold``. Temporary memory: one tile's
    ``[B,N,max(D,Dv),T,W,k,k]`` products, held near :data:`TILE_ELEMENTS` by :func:`tile_rows`.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, kernel_size: int, scale: float, tile_elements):  # type: ignore[override]
        with torch.autocast(device_type=q.device.type, enabled=False):
            return _NeighborhoodAttentionTiled._forward(ctx, q, k, v, bias, kernel_size, scale, tile_elements)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        with torch.autocast(device_type=dout.device.type, enabled=False):
            return _NeighborhoodAttentionTiled._backward(ctx, dout)

    @staticmethod
    def _forward(ctx, q, k, v, bias, kernel_size: int, scale: float, tile_elements):
        acc = _accumulation_dtype(q, k, v)
        (b, n, d, h, w), dv = q.shape, v.shape[2]
        r = kernel_size // 2
        qs = _scaled(q.to(acc), scale)
        k_pad = F.pad(k.to(acc), (r, r, r, r))
        v_pad = F.pad(v.to(acc), (r, r, r, r))
        bias_acc = bias.to(acc) if bias is not None else None
        add = _window_add(_inside_windows(h, w, kernel_size, q.device), bias_acc, acc)
        out = torch.empty(b, n, dv, h, w, dtype=acc, device=q.device)
        lse = torch.empty(b, n, h, w, dtype=acc, device=q.device)
        rows = tile_rows(b, n, max(d, dv), h, w, kernel_size, tile_elements)
        for y0 in range(0, h, rows):
            t = min(rows, h - y0)
            logits = _tile_logits(qs[..., y0 : y0 + t, :], k_pad, add, y0, t, kernel_size)
            lse[..., y0 : y0 + t, :] = torch.logsumexp(logits, dim=-1)
            p = torch.softmax(logits, dim=-1).unflatten(-1, (kernel_size, kernel_size))
            torch.sum(p.unsqueeze(2) * _windows(v_pad, y0, t, kernel_size), (-2, -1), out=out[..., y0 : y0 + t, :])
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.kernel_size, ctx.scale, ctx.rows = kernel_size, scale, rows
        return out.to(v.dtype)

    @staticmethod
    def _backward(ctx, dout):
        q_in, k_in, v_in, bias_in, out, lse = ctx.saved_tensors
        kernel_size, scale, rows = ctx.kernel_size, ctx.scale, ctx.rows
        acc = out.dtype
        n, (h, w), kk = q_in.shape[1], q_in.shape[-2:], kernel_size * kernel_size
        r = kernel_size // 2
        need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
        dout = dout.to(acc)
        qs = _scaled(q_in.to(acc), scale)
        k_pad = F.pad(k_in.to(acc), (r, r, r, r))
        v_pad = F.pad(v_in.to(acc), (r, r, r, r))
        bias = bias_in.to(acc) if bias_in is not None else None
        add = _window_add(_inside_windows(h, w, kernel_size, dout.device), bias, acc)
        delta = torch.linalg.vecdot(dout, out, dim=2)  # sum_o p_o (dout . v_o)
        dq = torch.empty_like(qs) if need_q else None
        dk_pad = torch.zeros_like(k_pad) if need_k else None
        dv_pad = torch.zeros_like(v_pad) if need_v else None
        dbias = torch.zeros(n, kk, dtype=acc, device=dout.device) if (need_bias and bias_in is not None) else None
        for y0 in range(0, h, rows):
            t = min(rows, h - y0)
            tile = (..., slice(y0, y0 + t), slice(None))
            qs_t, dout_t = qs[tile], dout[tile]
            p = torch.exp(_tile_logits(qs_t, k_pad, add, y0, t, kernel_size) - lse[tile].unsqueeze(-1))
            if dv_pad is not None:  # [B,N,1,k,k,T,W] * [B,N,Dv,1,1,T,W]
                _fold_add(dv_pad, _offsets_first(p, kernel_size) * dout_t[:, :, :, None, None], y0, t, kernel_size)
            if dq is None and dk_pad is None and dbias is None:
                continue
            vdot = (dout_t[..., None, None] * _windows(v_pad, y0, t, kernel_size)).sum(2).flatten(-2)
            ds = p * (vdot - delta[tile].unsqueeze(-1))  # [B,N,T,W,k*k]
            if dq is not None:
                ds_w = ds.unflatten(-1, (kernel_size, kernel_size)).unsqueeze(2)
                torch.sum(ds_w * _windows(k_pad, y0, t, kernel_size), (-2, -1), out=dq[tile])
            if dk_pad is not None:
                _fold_add(dk_pad, _offsets_first(ds, kernel_size) * qs_t[:, :, :, None, None], y0, t, kernel_size)
            if dbias is not None:
                dbias += ds.sum((0, 2, 3))
        dq, dk, dv, dbias = _finish_grads(dq, dk_pad, dv_pad, dbias, (q_in, k_in, v_in, bias_in), scale, r, h, w)
        return dq, dk, dv, dbias, None, None, None


# ----------------------------------------------------------------------------- flex_attention backend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "reference_tiled", "reference_v1", "flex", "flex_eager", "triton")
_FLEX_STATE: dict[str, Any] = {"compiled": None, "broken": None, "warned": set(), "masks": {}}
_TRITON_STATE: dict[tuple, str | None] = {}  # (device, kernel_size, bias?) -> None (works) or why not


def _triton_module():
    import upsamplers._triton_attention as triton_attention

    return triton_attention


def triton_unavailable(q: Tensor, kernel_size: int, with_bias: bool) -> str | None:
    """None when the Triton backend runs this call, else why not. The first call per (device, window,
    bias) compiles and runs a tiny forward + backward, so a kernel that fails to build is found before a
    training step depends on its backward."""
    if q.dtype == torch.float64:
        return "the triton kernels accumulate in float32; float64 runs the reference"
    module = _triton_module()
    why = module.triton_unavailable(q)
    if why:
        return why
    key = (str(q.device), kernel_size, with_bias)
    if key not in _TRITON_STATE:
        try:
            x = torch.randn(1, 1, 2, 3, 3, device=q.device, requires_grad=True)
            b = torch.zeros(1, kernel_size * kernel_size, device=q.device, requires_grad=True) if with_bias else None
            module.neighborhood_attention_triton(x, x, x, kernel_size, b).sum().backward()
            _TRITON_STATE[key] = None
        except Exception as err:
            _TRITON_STATE[key] = f"the triton kernels failed: {type(err).__name__}: {str(err)[:300]}"
    return _TRITON_STATE[key]


def flex_available() -> str | None:
    """None when ``torch.nn.attention.flex_attention`` can be imported, else why not."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as err:  # pragma: no cover - torch < 2.5
        return f"torch {torch.__version__} has no flex_attention ({type(err).__name__}: {err})"
    return None


def _warn_once(key: str, message: str) -> None:
    if key not in _FLEX_STATE["warned"]:
        _FLEX_STATE["warned"].add(key)
        log.warning(message)


def _flex_mask(h: int, w: int, kernel_size: int, device: torch.device):
    """The sliding-window BlockMask of an ``H x W`` map flattened row-major (cached per shape and device).

    Key ``j`` is in query ``i``'s window when their rows and columns differ by at most ``r``; keys outside
    the map do not exist in the flattened sequence, which is exactly the reference's masking convention.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    key = (h, w, kernel_size, str(device))
    mask = _FLEX_STATE["masks"].get(key)
    if mask is None:
        r = kernel_size // 2

        def window(b, head, q_idx, kv_idx):
            dy = kv_idx // w - q_idx // w
            dx = kv_idx % w - q_idx % w
            return (dy >= -r) & (dy <= r) & (dx >= -r) & (dx <= r)

        mask = create_block_mask(window, B=None, H=None, Q_LEN=h * w, KV_LEN=h * w, device=device)
        _FLEX_STATE["masks"][key] = mask
    return mask


def _flex_score_mod(bias: Tensor | None, w: int, kernel_size: int):
    """``score + bias[head, offset]`` with the offset of key ``j`` from query ``i`` in row-major window order."""
    if bias is None:
        return None
    r = kernel_size // 2

    def add_bias(score, b, head, q_idx, kv_idx):
        dy = (kv_idx // w - q_idx // w + r).clamp(0, kernel_size - 1)  # clamped: masked taps read a valid index
        dx = (kv_idx % w - q_idx % w + r).clamp(0, kernel_size - 1)
        return score + bias[head, dy * kernel_size + dx]

    return add_bias


def _compiled_flex():
    if _FLEX_STATE["compiled"] is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX_STATE["compiled"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX_STATE["compiled"]


def _flex_dtype(q: Tensor, k: Tensor, v: Tensor) -> torch.dtype:
    """The dtype flex runs in: the inputs' on CUDA when half precision (the fused kernel accumulates in
    float32), else the reference's accumulation dtype."""
    if q.is_cuda and q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16):
        return q.dtype
    return _accumulation_dtype(q, k, v)


def _next_pow2(x: int) -> int:
    return 1 << max(4, (x - 1).bit_length())


def neighborhood_attention_flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    bias: Tensor | None = None,
    scale: float = 1.0,
    compile: bool = True,
    pad_head_dim: bool | None = None,
) -> Tensor:
    """The same attention through ``torch.nn.attention.flex_attention`` on the map flattened to ``H*W`` tokens:
    a sliding-window block mask (:func:`_flex_mask`) and a ``score_mod`` adding ``bias[head, offset]``.

    ``compile``: through ``torch.compile`` (the fused kernel); False runs flex's eager path, which
    materializes the ``[B,heads,HW,HW]`` scores (tests only). ``pad_head_dim`` (default: on CUDA) zero-pads
    the head dims to a power of two >= 16 (the fused GPU kernel's block sizes; zeros change no dot product).
    No backward on CPU (torch raises NotImplementedError): use the reference there.
    """
    from torch.nn.attention.flex_attention import flex_attention

    _check(q, k, v, bias, kernel_size)
    (b, n, d, h, w), dv = q.shape, v.shape[2]
    dtype = _flex_dtype(q, k, v)

    def tokens(x: Tensor, width: int) -> Tensor:  # [B,N,C,H,W] -> [B,N,HW,C'] contiguous
        x = x.to(dtype).flatten(3).transpose(-1, -2)
        if width > x.shape[-1]:
            x = F.pad(x, (0, width - x.shape[-1]))
        return x.contiguous()

    pad = q.is_cuda if pad_head_dim is None else pad_head_dim
    dq, dvp = (_next_pow2(d), _next_pow2(dv)) if pad else (d, dv)
    score_mod = _flex_score_mod(
        bias.to(torch.float32 if dtype != torch.float64 else dtype) if bias is not None else None, w, kernel_size
    )
    fn = _compiled_flex() if compile else flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = fn(
            tokens(q, dq),
            tokens(k, dq),
            tokens(v, dvp),
            score_mod=score_mod,
            block_mask=_flex_mask(h, w, kernel_size, q.device),
            scale=float(scale),
        )
    return out[..., :dv].transpose(-1, -2).reshape(b, n, dv, h, w).to(v.dtype)


def prefers_tiles(q: Tensor, v: Tensor) -> bool:
    """Whether ``reference`` runs the row-tiled kernel: for JBU-like calls (one head, values at least 4x
    wider than the keys: the weights, computed once from the small keys, serve many value channels).
    Measured on a busy 2-thread CPU (``python -m radiosharp.bench attention``): tiled / first kernel
    0.61x forward and 0.94x forward+backward at JBU's shape, but 1.2-1.8x at FeatSharp's multi-head
    blocks (head dims 48, 128; 5x5 window), where the first kernel stays the faster reference."""
    return q.shape[1] == 1 and v.shape[2] >= 4 * q.shape[2]


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def resolve_backend(
    backend: str,
    q: Tensor,
    *grad_inputs: Tensor | None,
    v: Tensor | None = None,
    kernel_size: int = 3,
    with_bias: bool = True,
) -> tuple[str, str]:
    """``(backend that runs, why)`` for a requested one (see :func:`neighborhood_attention`); ``v``,
    ``kernel_size`` and ``with_bias`` describe the call for ``triton`` and ``auto``."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend in ("reference", "reference_tiled", "reference_v1"):
        return backend, "requested"
    if backend == "triton":
        reason = triton_unavailable(q, kernel_size, with_bias)
        return ("reference", reason) if reason else ("triton", "requested")
    jbu_like = v is not None and prefers_tiles(q, v)
    if backend == "auto" and q.is_cuda and jbu_like and not triton_unavailable(q, kernel_size, with_bias):
        return "triton", "auto on CUDA, a JBU-like call (one head, wide values)"
    reason = flex_available()
    if backend != "flex_eager":
        reason = reason or _FLEX_STATE["broken"]
    if backend == "auto":
        if reason:
            return "reference", reason
        if not q.is_cuda:
            return "reference", "auto picks the reference off CUDA (flex on CPU has no backward, compiles per shape)"
        return "flex", "auto on CUDA"
    if reason:
        return "reference", reason
    if not q.is_cuda and _needs_grad(q, *grad_inputs):
        return "reference", "flex_attention has no backward on CPU"
    return backend, "requested"


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    bias: Tensor | None = None,
    scale: float = 1.0,
    backend: str = "reference",
) -> Tensor:
    """Sliding-window attention on a 2-D map, without materializing the windows.

    q, k: ``[B,heads,D,H,W]``; v: ``[B,heads,Dv,H,W]``; bias: ``[heads, k*k]`` added to
    the logit of each window offset (row-major, see :func:`window_offsets`), or None.
    Returns ``[B,heads,Dv,H,W]``. Keys outside the map are masked (module docstring).
    Differentiable in q, k, v and bias; half-precision inputs are accumulated in float32.

    ``backend``: ``reference`` (default; the faster pure-PyTorch kernel for the call, see
    :func:`prefers_tiles`), ``reference_tiled`` (the row-tiled kernel), ``reference_v1`` (the first,
    one-pass-per-offset kernel), ``flex`` (compiled ``flex_attention``),
    ``flex_eager`` (uncompiled flex; materializes all scores, tests only), ``triton`` (the Triton kernels),
    or ``auto`` (on CUDA triton for JBU-like calls and flex otherwise; the reference elsewhere). A flex or
    triton request that cannot run (not in this build, a failed compile, a backward of flex on CPU, a
    float64 triton call) runs the reference and logs why, once.
    """
    _check(q, k, v, bias, kernel_size)
    chosen, why = resolve_backend(backend, q, k, v, bias, v=v, kernel_size=kernel_size, with_bias=bias is not None)
    if chosen != backend and backend != "auto":
        _warn_once(f"{backend}:{why}", f"neighborhood_attention: backend={backend} runs the reference ({why})")
    if chosen == "triton":
        return _triton_module().neighborhood_attention_triton(q, k, v, kernel_size, bias, scale)
    if chosen in ("flex", "flex_eager"):
        try:
            return neighborhood_attention_flex(q, k, v, kernel_size, bias, scale, compile=chosen == "flex")
        except Exception as err:
            if chosen == "flex_eager":
                raise
            _FLEX_STATE["broken"] = f"compiled flex_attention failed: {type(err).__name__}: {str(err)[:300]}"
            _warn_once("broken", f"neighborhood_attention: {_FLEX_STATE['broken']}; using the reference from now on")
    if chosen == "reference_v1" or (chosen == "reference" and not prefers_tiles(q, v)):
        return _NeighborhoodAttentionV1.apply(q, k, v, bias, kernel_size, float(scale))
    return _NeighborhoodAttentionTiled.apply(q, k, v, bias, kernel_size, float(scale), None)


def neighborhood_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int, bias: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """The naive version (unfold every window; memory ``k*k`` times the map). For tests only."""
    _check(q, k, v, bias, kernel_size)
    b, n, d, h, w = q.shape
    kk, r = kernel_size * kernel_size, kernel_size // 2

    def windows(x: Tensor) -> Tensor:  # [B,N,D,H,W] -> [B,N,D,k*k,H,W]
        c = x.shape[2]
        cols = F.unfold(x.reshape(b * n, c, h, w), kernel_size, padding=r)
        return cols.view(b, n, c, kk, h, w)

    inside = F.unfold(torch.ones(1, 1, h, w, dtype=q.dtype, device=q.device), kernel_size, padding=r)
    inside = inside.view(1, 1, kk, h, w) > 0
    logits = (q.unsqueeze(3) * windows(k)).sum(2) * scale
    if bias is not None:
        logits = logits + bias.view(1, n, kk, 1, 1)
    attn = logits.masked_fill(~inside, float("-inf")).softmax(dim=2)
    return (attn.unsqueeze(2) * windows(v)).sum(3)

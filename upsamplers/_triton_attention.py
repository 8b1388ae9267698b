"""Neighbourhood attention as Triton kernels: the ``triton`` backend of :mod:`upsamplers._kernels`.

The same maths and border convention as the reference (keys outside the map are masked; the softmax
renormalizes over the keys that exist), for any number of heads, key width ``D`` and value width ``Dv``.
It exists for JBU's single-head case on a GPU, where the reference makes ``k*k`` bandwidth-bound passes
over the map and flex_attention pads a 16-channel key to a whole block: here one program reads a block of
pixels' queries once and walks the window in registers.

Kernels (all on ``[B*N, C, H*W]`` maps, pixels contiguous):

- ``_forward``: per block of pixels (and of value channels), the online softmax over the ``k*k`` offsets
  (centre first, so the running max starts finite); writes the output and the per-pixel log-sum-exp.
- ``_backward_query``: per block of query pixels, recomputes every tap's weight ``p`` from the
  log-sum-exp, its ``dp = dout . v`` (looping over value chunks) and ``ds = p (dp - delta)``; writes
  ``dq`` and the ``[B*N, k*k, H*W]`` maps of ``p`` and ``ds``.
- ``_backward_gather`` (twice): per block of KEY pixels, gather from the queries that see each key
  (``i = j - offset``) ``dk = scale sum ds q`` and ``dv = sum p dout``. Gathering instead of scattering
  needs no atomics, so gradients are deterministic.

Every tap's gradient is filled: ``dbias[n, o]`` is the sum of the ``ds`` map of tap ``o`` (FeatUp's CUDA
filter-gradient kernel fills only some taps; ``tests/test_triton_attention.py`` checks all of them against
the reference). Extra memory in backward: the two ``k*k`` tap maps per head (for JBU's 7x7 window and
384 value channels, a quarter of the value map). Accumulation is float32 whatever the input dtype.

On a machine without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module is imported), which is how the fast test suite checks them on CPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # the kernels need triton; the module imports without it, and says why
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as err:  # pragma: no cover - torch builds without triton
    triton, tl, _IMPORT_ERROR = None, None, f"triton is not importable ({type(err).__name__}: {err})"

__all__ = ["interpreted", "neighborhood_attention_triton", "triton_unavailable"]

BLOCK_P = 64  # pixels per program
BLOCK_DV = 64  # value channels per program (forward, dv) or per chunk (dp)


def interpreted() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(x: Tensor) -> str | None:
    """None when the kernels can run on ``x``'s device, else why not."""
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if not x.is_cuda and not interpreted():
        return "the triton kernels need a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)"
    return None


def _pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << (max(x, 1) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _load(ptr, bn, width, hw, cols, ncols, pix, pix_ok):
        """``[pixels, cols]`` float32 of a ``[B*N, width, H*W]`` map (zero where masked)."""
        mask = pix_ok[:, None] & (cols < ncols)[None, :]
        return tl.load(ptr + bn * width * hw + cols[None, :].to(tl.int64) * hw + pix[:, None], mask=mask, other=0.0).to(
            tl.float32
        )

    @triton.jit
    def _store(ptr, bn, width, hw, cols, ncols, pix, pix_ok, value):
        mask = pix_ok[:, None] & (cols < ncols)[None, :]
        tl.store(ptr + bn * width * hw + cols[None, :].to(tl.int64) * hw + pix[:, None], value, mask=mask)

    @triton.jit
    def _pixels(H, W, BLOCK_P: tl.constexpr):
        """This program's block of pixels: flat index, in-map mask, row, column."""
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        return p, p < H * W, p // W, p % W

    @triton.jit
    def _moved(y, x, pix_ok, H, W, dy, dx):
        """The pixel at ``(y + dy, x + dx)``: flat index and whether it is inside the map."""
        yy, xx = y + dy, x + dx
        return yy * W + xx, pix_ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)

    @triton.jit
    def _queries(q_ptr, H, W, D, scale, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's map ``bn``, ``hw = H * W``, its block of pixels (:func:`_pixels`), the key
        channels ``d`` and the scaled ``[pixels, D]`` queries: ``bn, hw, p, p_in, y, x, d, q``."""
        bn = tl.program_id(0).to(tl.int64)
        hw = H * W
        p, p_in, y, x = _pixels(H, W, BLOCK_P)
        d = tl.arange(0, BLOCK_D)
        return bn, hw, p, p_in, y, x, d, _load(q_ptr, bn, D, hw, d, D, p, p_in) * scale

    @triton.jit
    def _logits(q, k_ptr, bias_ptr, bn, N, D, hw, d, j, ok, o, KS: tl.constexpr, HAS_BIAS: tl.constexpr):
        """The scaled ``q . k[j]`` (+ ``bias[head, o]``) of tap ``o``, and the keys read."""
        key = _load(k_ptr, bn, D, hw, d, D, j, ok)
        s = tl.sum(q * key, axis=1)
        if HAS_BIAS:
            s += tl.load(bias_ptr + (bn % N) * KS * KS + o)
        return s, key

    @triton.jit
    def _forward(
        q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr,
        N, H, W, D, DV, scale,
        KS: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):  # fmt: skip
        bn, hw, p, p_in, y, x, d, q = _queries(q_ptr, H, W, D, scale, BLOCK_P, BLOCK_D)
        c = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)
        m = tl.full([BLOCK_P], float("-inf"), tl.float32)
        den = tl.zeros([BLOCK_P], tl.float32)
        acc = tl.zeros([BLOCK_P, BLOCK_DV], tl.float32)
        for t in tl.static_range(KS * KS):
            o = (t + (KS * KS) // 2) % (KS * KS)  # the centre first: always inside the map
            j, ok = _moved(y, x, p_in, H, W, o // KS - KS // 2, o % KS - KS // 2)
            s, _ = _logits(q, k_ptr, bias_ptr, bn, N, D, hw, d, j, ok, o, KS, HAS_BIAS)
            if t == 0:
                s = tl.where(p_in, s, 0.0)
            else:
                s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m, s)
            decay = tl.exp(m - m_new)
            w = tl.exp(s - m_new)
            den = den * decay + w
            acc = acc * decay[:, None] + w[:, None] * _load(v_ptr, bn, DV, hw, c, DV, j, ok)
            m = m_new
        _store(out_ptr, bn, DV, hw, c, DV, p, p_in, acc / den[:, None])
        if tl.program_id(2) == 0:
            tl.store(lse_ptr + bn * hw + p, m + tl.log(den), mask=p_in)

    @triton.jit
    def _backward_query(
        q_ptr, k_ptr, v_ptr, bias_ptr, lse_ptr, delta_ptr, dout_ptr, dq_ptr, p_ptr, ds_ptr,
        N, H, W, D, DV, scale,
        KS: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):  # fmt: skip
        bn, hw, p, p_in, y, x, d, q = _queries(q_ptr, H, W, D, scale, BLOCK_P, BLOCK_D)
        lse = tl.load(lse_ptr + bn * hw + p, mask=p_in, other=0.0)
        delta = tl.load(delta_ptr + bn * hw + p, mask=p_in, other=0.0)
        dq = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
        for o in tl.static_range(KS * KS):
            j, ok = _moved(y, x, p_in, H, W, o // KS - KS // 2, o % KS - KS // 2)
            s, key = _logits(q, k_ptr, bias_ptr, bn, N, D, hw, d, j, ok, o, KS, HAS_BIAS)
            w = tl.where(ok, tl.exp(s - lse), 0.0)
            dp = tl.zeros([BLOCK_P], tl.float32)
            for c0 in range(0, DV, BLOCK_DV):
                c = c0 + tl.arange(0, BLOCK_DV)
                dp += tl.sum(
                    _load(dout_ptr, bn, DV, hw, c, DV, p, p_in) * _load(v_ptr, bn, DV, hw, c, DV, j, ok), axis=1
                )
            ds = w * (dp - delta)
            tl.store(p_ptr + (bn * KS * KS + o) * hw + p, w, mask=p_in)
            tl.store(ds_ptr + (bn * KS * KS + o) * hw + p, ds, mask=p_in)
            dq += ds[:, None] * key
        _store(dq_ptr, bn, D, hw, d, D, p, p_in, dq * scale)

    @triton.jit
    def _backward_gather(
        tap_ptr, src_ptr, dst_ptr, H, W, C, scale,
        KS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """``dst[j] = scale * sum_o tap[o, j - o] * src[j - o]`` per block of KEY pixels ``j``: ``dk`` from
        ``ds`` and the queries, ``dv`` from ``p`` and ``dout`` (the queries that see key ``j`` at tap ``o``)."""
        bn = tl.program_id(0).to(tl.int64)
        hw = H * W
        j, j_in, y, x = _pixels(H, W, BLOCK_P)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        for o in tl.static_range(KS * KS):
            i, ok = _moved(y, x, j_in, H, W, KS // 2 - o // KS, KS // 2 - o % KS)
            tap = tl.load(tap_ptr + (bn * KS * KS + o) * hw + i, mask=ok, other=0.0)
            acc += tap[:, None] * _load(src_ptr, bn, C, hw, c, C, i, ok)
        _store(dst_ptr, bn, C, hw, c, C, j, j_in, acc * scale)


def _blocks(d: int, dv: int) -> tuple[int, int]:
    return _pow2(d), min(BLOCK_DV, _pow2(dv))


class _NeighborhoodAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, kernel_size: int, scale: float):  # type: ignore[override]
        b, n, d, h, w = q.shape
        dv = v.shape[2]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        bias32 = bias.detach().float().contiguous() if bias is not None else q.new_zeros(1, dtype=torch.float32)
        out = torch.empty(b, n, dv, h, w, device=q.device, dtype=torch.float32)
        lse = torch.empty(b, n, h, w, device=q.device, dtype=torch.float32)
        block_d, block_dv = _blocks(d, dv)
        grid = (b * n, triton.cdiv(h * w, BLOCK_P), triton.cdiv(dv, block_dv))
        _forward[grid](
            q, k, v, bias32, out, lse, n, h, w, d, dv, float(scale),
            KS=kernel_size, HAS_BIAS=bias is not None, BLOCK_P=BLOCK_P, BLOCK_D=block_d, BLOCK_DV=block_dv,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.kernel_size, ctx.scale = kernel_size, scale
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, bias, out, lse = ctx.saved_tensors
        ks, scale = ctx.kernel_size, ctx.scale
        b, n, d, h, w = q.shape
        dv_width = v.shape[2]
        dout = dout.float().contiguous()
        delta = torch.linalg.vecdot(dout, out, dim=2).contiguous()  # sum_o p_o (dout . v_o)
        bias32 = bias.detach().float().contiguous() if bias is not None else q.new_zeros(1, dtype=torch.float32)
        dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
        dk = torch.empty(k.shape, device=q.device, dtype=torch.float32)
        dv = torch.empty(v.shape, device=q.device, dtype=torch.float32)
        taps = torch.empty(2, b * n, ks * ks, h * w, device=q.device, dtype=torch.float32)  # p and ds
        block_d, block_dv = _blocks(d, dv_width)
        rows = triton.cdiv(h * w, BLOCK_P)
        _backward_query[(b * n, rows)](
            q, k, v, bias32, lse, delta, dout, dq, taps[0], taps[1], n, h, w, d, dv_width, float(scale),
            KS=ks, HAS_BIAS=bias is not None, BLOCK_P=BLOCK_P, BLOCK_D=block_d, BLOCK_DV=block_dv,
        )  # fmt: skip
        _backward_gather[(b * n, rows, 1)](
            taps[1], q, dk, h, w, d, float(scale), KS=ks, BLOCK_P=BLOCK_P, BLOCK_C=block_d
        )
        _backward_gather[(b * n, rows, triton.cdiv(dv_width, block_dv))](
            taps[0], dout, dv, h, w, dv_width, 1.0, KS=ks, BLOCK_P=BLOCK_P, BLOCK_C=block_dv
        )
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            dbias = taps[1].view(b, n, ks * ks, h * w).sum(dim=(0, 3)).to(bias.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias, None, None


def neighborhood_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int, bias: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """:func:`upsamplers._kernels.neighborhood_attention` through the Triton kernels (same arguments and
    border convention; differentiable in q, k, v and bias). Raises RuntimeError where they cannot run."""
    why = triton_unavailable(q)
    if why:
        raise RuntimeError(why)
    return _NeighborhoodAttentionTriton.apply(q, k, v, bias, kernel_size, float(scale))

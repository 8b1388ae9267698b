"""The backends of ``neighborhood_attention``: the row-tiled reference (default), the first kernel
(``reference_v1``) and ``flex_attention`` (eager here: flex has no backward on CPU and compiles per
shape; the compiled path runs in the slow suite on CPU and in the ``gpu`` tests on CUDA).

Every comparison covers the whole map, border pixels (whose windows are masked) included.
"""

from __future__ import annotations

import logging

import pytest
import torch

import upsamplers._kernels as kernels
from upsamplers._kernels import (
    _NeighborhoodAttentionTiled,
    neighborhood_attention,
    neighborhood_attention_flex,
    neighborhood_attention_reference,
    prefers_tiles,
    resolve_backend,
    tile_rows,
)
from upsamplers.featsharp import FeatSharpBlock

D64 = torch.float64
FLEX_MISSING = kernels.flex_available()
needs_flex = pytest.mark.skipif(FLEX_MISSING is not None, reason=str(FLEX_MISSING))

# (B, heads, D, Dv, H, W, k): non-square maps, maps smaller than the window, a 1x1 window
SHAPES = [
    (2, 3, 4, 5, 6, 7, 3),
    (1, 2, 8, 3, 9, 5, 5),
    (1, 1, 3, 6, 2, 3, 5),
    (2, 2, 4, 4, 11, 8, 7),
    (1, 2, 3, 2, 4, 4, 1),
]


def _inputs(b, n, d, dv, h, w, k, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, key = (torch.randn(b, n, d, h, w, generator=g) for _ in range(2))
    v = torch.randn(b, n, dv, h, w, generator=g)
    bias = torch.randn(n, k * k, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, key, v, bias)]


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out)


# ----------------------------------------------------------------------------- tiled reference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile_elements", [1, 200, None])  # one row a tile, a few rows, the whole map
def test_tiled_kernel_equals_the_unfold_reference_in_float64(shape, tile_elements):
    k, scale = shape[-1], 0.6
    inputs = [t.double() for t in _inputs(*shape, seed=sum(shape))]
    grad_out = torch.randn(*shape[:2], shape[3], *shape[4:6], dtype=D64)
    ours, g_ours = _grads(lambda *a: _NeighborhoodAttentionTiled.apply(*a, k, scale, tile_elements), inputs, grad_out)
    ref, g_ref = _grads(lambda *a: neighborhood_attention_reference(*a[:3], k, a[3], scale), inputs, grad_out)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for name, a, b in zip("q k v bias".split(), g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"grad of {name}")


@pytest.mark.parametrize("with_bias", [True, False])
def test_tiled_kernel_equals_the_first_kernel_in_float32(with_bias):
    """The default backend against today's kernel: equal to 1e-5, forward and backward, several tiles."""
    shape = (2, 2, 16, 24, 13, 10, 5)
    q, key, v, bias = _inputs(*shape, seed=3)
    bias = bias if with_bias else None
    grad_out = torch.randn(2, 2, 24, 13, 10)
    inputs = [q, key, v] + ([bias] if with_bias else [])

    def call(backend):
        return lambda *a: neighborhood_attention(*a[:3], 5, a[3] if with_bias else None, 0.25, backend=backend)

    old_rows = kernels.TILE_ELEMENTS
    kernels.TILE_ELEMENTS = 1  # one row a tile: the map itself is the budget, 13 rows -> several tiles
    try:
        assert tile_rows(2, 2, 24, 13, 10, 5) < 13
        new, g_new = _grads(call("reference_tiled"), inputs, grad_out)
    finally:
        kernels.TILE_ELEMENTS = old_rows
    old, g_old = _grads(call("reference_v1"), inputs, grad_out)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_reference_runs_the_tiled_kernel_for_jbu_like_calls_only():
    q, key, v, _ = _inputs(1, 1, 4, 16, 3, 3, 3)
    assert prefers_tiles(q, v) and not prefers_tiles(q, q)
    many = _inputs(1, 4, 4, 16, 3, 3, 3)
    assert not prefers_tiles(many[0], many[2])


def test_tile_rows_bound_the_window_temporaries():
    assert tile_rows(1, 1, 384, 56, 56, 7) == kernels.TILE_ELEMENTS // (384 * 56 * 49)
    assert tile_rows(1, 1, 4, 3, 3, 3) == 3  # never more rows than the map
    assert tile_rows(1, 16, 48, 56, 56, 5, tile_elements=1) == 2  # at least the map itself: 56*56*768 / (768*56*25)


def test_tiled_gradcheck():
    inputs = [t.double().requires_grad_() for t in _inputs(1, 2, 3, 2, 4, 3, 3, seed=4)]
    assert torch.autograd.gradcheck(lambda q, k, v, b: _NeighborhoodAttentionTiled.apply(q, k, v, b, 3, 0.5, 1), inputs)


def test_tiled_kernel_in_bfloat16_keeps_the_dtype_and_accumulates_in_float32():
    q, key, v, bias = _inputs(1, 2, 8, 4, 6, 6, 5, seed=5)
    ref = neighborhood_attention_reference(q.double(), key.double(), v.double(), 5, bias.double())
    low = [t.bfloat16().requires_grad_() for t in (q, key, v)]
    out = neighborhood_attention(*low, 5, bias, backend="reference_tiled")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in low)


# ----------------------------------------------------------------------------- flex_attention (eager on CPU)


@needs_flex
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_flex_equals_the_reference_forward(shape, with_bias):
    k = shape[-1]
    q, key, v, bias = _inputs(*shape, seed=7 + sum(shape))
    bias = bias if with_bias else None
    with torch.no_grad():
        ref = neighborhood_attention(q, key, v, k, bias, 0.4, backend="reference")
        flex = neighborhood_attention(q, key, v, k, bias, 0.4, backend="flex_eager")
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)


@needs_flex
def test_flex_with_padded_head_dims_and_in_bfloat16():
    """The CUDA path's zero-padding of the head dims changes nothing; bf16 inputs stay within 5e-2."""
    shape = (1, 4, 12, 20, 7, 9, 5)
    q, key, v, bias = _inputs(*shape, seed=8)
    with torch.no_grad():
        ref = neighborhood_attention_reference(q.double(), key.double(), v.double(), 5, bias.double(), 0.3)
        padded = neighborhood_attention_flex(q, key, v, 5, bias, 0.3, compile=False, pad_head_dim=True)
        low = neighborhood_attention(q.bfloat16(), key.bfloat16(), v.bfloat16(), 5, bias, 0.3, backend="flex_eager")
    torch.testing.assert_close(padded.double(), ref, rtol=1e-5, atol=1e-5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), ref, rtol=5e-2, atol=5e-2)


@needs_flex
def test_flex_masks_border_keys_like_the_reference():
    """A huge bias on the top-left offset: the corner pixel, whose top-left key is outside, renormalizes
    over its 4 existing keys in both backends (the reference's masking convention, not clamped windows)."""
    q, key, v, _ = _inputs(1, 1, 2, 3, 4, 4, 3, seed=2)
    bias = torch.zeros(1, 9)
    bias[0, 0] = 60.0
    with torch.no_grad():
        flex = neighborhood_attention(q, key, v, 3, bias, backend="flex_eager")
        ref = neighborhood_attention(q, key, v, 3, bias, backend="reference")
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex[..., 1:, 1:], v[..., :-1, :-1], rtol=1e-5, atol=1e-5)


def test_auto_picks_the_reference_on_cpu_and_flex_with_grad_on_cpu_falls_back(caplog):
    q, key, v, bias = _inputs(1, 2, 4, 4, 5, 5, 3)
    assert resolve_backend("auto", q)[0] == "reference"
    assert resolve_backend("reference_v1", q)[0] == "reference_v1"
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("natten", q)
    if FLEX_MISSING is None:
        assert resolve_backend("flex", q) == ("flex", "requested")
        leaf = key.clone().requires_grad_()
        assert resolve_backend("flex", q, leaf)[0] == "reference"
        kernels._FLEX_STATE["warned"].discard("flex:flex_attention has no backward on CPU")
        with caplog.at_level(logging.WARNING, logger="upsamplers._kernels"):
            out = neighborhood_attention(q, leaf, v, 3, bias, backend="flex")
        assert "no backward on CPU" in caplog.text
        out.sum().backward()  # the reference ran: it has a backward
        assert leaf.grad is not None


def test_a_failed_flex_compile_falls_back_to_the_reference_with_the_reason(monkeypatch, caplog):
    if FLEX_MISSING is not None:
        pytest.skip(FLEX_MISSING)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor says no")

    q, key, v, bias = _inputs(1, 2, 4, 4, 5, 5, 3)
    monkeypatch.setitem(kernels._FLEX_STATE, "compiled", broken)
    monkeypatch.setitem(kernels._FLEX_STATE, "broken", None)
    monkeypatch.setitem(kernels._FLEX_STATE, "warned", set())
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="upsamplers._kernels"):
        out = neighborhood_attention(q, key, v, 3, bias, backend="flex")
        assert resolve_backend("flex", q)[0] == "reference"  # remembered: no second compile attempt
    assert "inductor says no" in caplog.text
    torch.testing.assert_close(out, neighborhood_attention(q, key, v, 3, bias))


@needs_flex
def test_featsharp_block_gives_the_same_output_on_every_backend():
    torch.manual_seed(0)
    block = FeatSharpBlock(8, 4, 5, 16, layer_scale_init=0.5, attention_backend="reference").eval()
    x = torch.randn(2, 6, 7, 16)
    outs = {}
    with torch.no_grad():
        for backend in ("reference", "reference_tiled", "reference_v1", "flex_eager", "auto"):
            block.attn.backend = backend
            outs[backend] = block(x)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], rtol=1e-5, atol=1e-5, msg=backend)


def test_featsharp_rejects_an_unknown_attention_backend():
    from upsamplers._base import UpsampleSpec
    from upsamplers.featsharp import FeatSharpUpsampler

    with pytest.raises(ValueError, match="attention_backend must be one of"):
        FeatSharpUpsampler(UpsampleSpec(2, 8, 4), attention_backend="natten")
    assert FeatSharpUpsampler(UpsampleSpec(2, 8, 4), attention_backend="reference").block.attn.backend == "reference"


@needs_flex
@pytest.mark.slow
def test_compiled_flex_on_cpu_equals_the_reference_forward():
    """torch.compile of flex_attention on CPU (tens of seconds: slow suite)."""
    q, key, v, bias = _inputs(1, 2, 16, 16, 9, 11, 5, seed=9)
    with torch.no_grad():
        flex = neighborhood_attention(q, key, v, 5, bias, 0.25, backend="flex")
        ref = neighborhood_attention(q, key, v, 5, bias, 0.25, backend="reference")
    assert kernels._FLEX_STATE["broken"] is None, kernels._FLEX_STATE["broken"]
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("shape", [(2, 16, 48, 48, 14, 14, 5), (1, 1, 32, 384, 28, 28, 7), (1, 4, 16, 16, 3, 5, 7)])
def test_compiled_flex_on_cuda_equals_the_reference_forward_and_backward(shape, dtype, tol):
    k = shape[-1]
    q, key, v, bias = _inputs(*shape, seed=11, device="cuda")
    low = [t.to(dtype) for t in (q, key, v)] + [bias]
    grad_out = torch.randn(*shape[:2], shape[3], *shape[4:6], device="cuda", dtype=dtype)
    flex, g_flex = _grads(lambda *a: neighborhood_attention(*a[:3], k, a[3], 0.3, backend="flex"), low, grad_out)
    assert kernels._FLEX_STATE["broken"] is None, kernels._FLEX_STATE["broken"]
    ref, g_ref = _grads(lambda *a: neighborhood_attention(*a[:3], k, a[3], 0.3, backend="reference"), low, grad_out)
    assert flex.dtype == dtype
    torch.testing.assert_close(flex.float(), ref.float(), rtol=tol, atol=tol)
    for name, a, b in zip("q k v bias".split(), g_flex, g_ref):
        scale = max(1.0, b.float().abs().max().item())
        torch.testing.assert_close(a.float() / scale, b.float() / scale, rtol=tol, atol=tol, msg=f"grad of {name}")


def test_bench_attention_cli_reports_every_backend_side_by_side(capsys):
    import json

    from radiosharp.bench.cli import main

    code = main(["attention", "--tiny", "--shapes", "jbu", "--backends", "reference", "reference_v1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["phase"], r["backend"]): r for r in report["rows"]}
    assert set(rows) == {(p, b) for p in ("fwd", "fwd+bwd") for b in ("reference", "reference_v1")}
    assert all(r["status"] == "ok" and r["time_s"] > 0 and r["peak_mb"] is not None for r in rows.values())
    assert rows["fwd", "reference"]["time_x_ref"] == 1.0 and rows["fwd", "reference_v1"]["time_x_v1"] == 1.0
    assert main(["attention", "--tiny", "--shapes", "nope"]) == 2

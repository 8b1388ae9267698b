"""The ``triton`` backend of ``neighborhood_attention`` (``upsamplers/_triton_attention.py``).

Without a GPU the kernels run in Triton's CPU interpreter, which is chosen when the module is
imported with ``TRITON_INTERPRET=1``; so the parity checks run in a child process that sets it,
and report back as JSON. Every comparison covers the whole map (border pixels, whose windows are
masked, included) and every tap of the bias gradient: FeatUp's CUDA filter-gradient kernel fills
only some taps, which the all-taps comparison would catch. The CUDA run is in the ``gpu`` tests.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import upsamplers._kernels as kernels
from upsamplers._triton_attention import _IMPORT_ERROR

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(_IMPORT_ERROR is not None, reason=str(_IMPORT_ERROR))

# Run in the child: every case against the float64 unfold reference, forward and backward.
PARITY = r"""
import json, sys
import torch
from upsamplers._kernels import neighborhood_attention, neighborhood_attention_reference, resolve_backend
from upsamplers._triton_attention import neighborhood_attention_triton
from upsamplers.jbu import JointBilateralUpsampler

cases = json.loads(sys.argv[1])
report = []
for b, n, d, dv, h, w, k, with_bias in cases:
    g = torch.Generator().manual_seed(b * 1000 + n * 100 + d + dv + h + w + k)
    q, key = (torch.randn(b, n, d, h, w, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, n, dv, h, w, generator=g, dtype=torch.float64)
    bias = torch.randn(n, k * k, generator=g, dtype=torch.float64) if with_bias else None
    grad_out = torch.randn(b, n, dv, h, w, generator=g, dtype=torch.float64)
    inputs = [t for t in (q, key, v, bias) if t is not None]

    def run(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
        qq, kk, vv = leaves[:3]
        out = fn(qq, kk, vv, k, leaves[3] if with_bias else None, 0.7)
        grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
        return out.double(), [x.double() for x in grads]

    ref, ref_grads = run(neighborhood_attention_reference, torch.float64)
    out, grads = run(neighborhood_attention_triton, torch.float32)
    via, _ = run(lambda *a: neighborhood_attention(*a, backend="triton"), torch.float32)
    row = {
        "case": [b, n, d, dv, h, w, k, with_bias],
        "out": float((out - ref).abs().max()),
        "grads": [float((x - r).abs().max()) for x, r in zip(grads, ref_grads)],
        "scale": [float(r.abs().max()) for r in [ref] + ref_grads],
        "dispatch": float((via - out).abs().max()),
        "chosen": resolve_backend("triton", inputs[0].float(), v=inputs[2].float(), kernel_size=k)[0],
    }
    if with_bias:
        row["bias_taps_filled"] = int((grads[3] != 0).sum())
        row["bias_taps_reached"] = int((ref_grads[3] != 0).sum())  # taps with a key inside the map
        row["bias_taps"] = k * k * n
    report.append(row)

bf16 = [t.bfloat16().requires_grad_() for t in torch.randn(3, 1, 1, 4, 6, 6).unbind(0)]
out = neighborhood_attention_triton(bf16[0], bf16[1], bf16[2], 3)
ref = neighborhood_attention(*[t.detach() for t in bf16], 3)
report.append({"bf16_dtype": str(out.dtype), "bf16_diff": float((out.float() - ref.float()).abs().max())})

torch.manual_seed(0)
stage = JointBilateralUpsampler(factor=2, kernel_size=5, key_dim=4)
feats, image = torch.randn(1, 6, 5, 4), torch.rand(1, 3, 40, 32)
stage.attention_backend = "triton"
a = stage(feats, image)
stage.attention_backend = "reference"
report.append({"jbu_stage_diff": float((a - stage(feats, image)).abs().max())})
print("REPORT" + json.dumps(report))
"""

# (B, heads, D, Dv, H, W, window, bias): non-square maps, a map smaller than the window, a 1x1 window,
# several heads, values wider than one 64-channel block (the chunked dp loop and dv grid)
CASES = [
    (2, 3, 4, 5, 6, 7, 3, True),
    (1, 1, 3, 6, 2, 3, 5, True),
    (1, 2, 8, 3, 9, 5, 5, False),
    (1, 1, 4, 70, 9, 11, 7, True),
    (1, 2, 3, 2, 4, 4, 1, True),
]


@pytest.fixture(scope="module")
def interpreter_report():
    if _IMPORT_ERROR is not None:
        pytest.skip(_IMPORT_ERROR)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PARITY, json.dumps(CASES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


@pytest.mark.subprocess
def test_triton_kernels_equal_the_unfold_reference_forward_and_backward(interpreter_report):
    rows = [r for r in interpreter_report if "case" in r]
    assert len(rows) == len(CASES)
    for row in rows:
        # float32 kernels against the float64 reference: rounding only, relative to each tensor's scale
        assert row["out"] <= 2e-5 * max(row["scale"][0], 1.0), row
        for diff, scale in zip(row["grads"], row["scale"][1:]):
            assert diff <= 2e-5 * max(scale, 1.0), row
        assert row["chosen"] == "triton" and row["dispatch"] == 0.0, row


@pytest.mark.subprocess
def test_triton_backward_fills_every_tap_of_the_bias_gradient(interpreter_report):
    rows = [r for r in interpreter_report if "bias_taps" in r]
    assert rows
    for row in rows:
        assert row["bias_taps_filled"] == row["bias_taps_reached"], row
        b, n, d, dv, h, w, k, _ = row["case"]
        if k > 1 and min(h, w) > k:  # every offset has keys inside the map: every tap has a gradient
            assert row["bias_taps_filled"] == row["bias_taps"], row
    assert any(r["bias_taps"] == 49 and r["bias_taps_filled"] == 49 for r in rows)  # JBU's 7x7 window


@pytest.mark.subprocess
def test_triton_keeps_half_precision_and_jbu_runs_on_it(interpreter_report):
    extra = {k: v for r in interpreter_report for k, v in r.items() if "case" not in r}
    assert extra["bf16_dtype"] == "torch.bfloat16"
    assert extra["bf16_diff"] <= 2e-2  # one bf16 rounding of values of order 1
    assert extra["jbu_stage_diff"] <= 1e-5


@needs_triton
def test_triton_request_off_cuda_runs_the_reference_and_says_why(caplog):
    if kernels._triton_module().interpreted():
        pytest.skip("this process runs Triton's interpreter")
    q, k, v = torch.randn(1, 1, 2, 5, 5), torch.randn(1, 1, 2, 5, 5), torch.randn(1, 1, 8, 5, 5)
    chosen, why = kernels.resolve_backend("triton", q, v=v, kernel_size=3)
    assert chosen == "reference" and "CUDA" in why
    assert kernels.resolve_backend("auto", q, v=v, kernel_size=3)[0] == "reference"
    assert kernels.resolve_backend("triton", q.double(), v=v.double(), kernel_size=3)[1].startswith("the triton")
    with caplog.at_level(logging.WARNING, logger="upsamplers._kernels"):
        out = kernels.neighborhood_attention(q, k, v, 3, backend="triton")
    assert torch.equal(out, kernels.neighborhood_attention(q, k, v, 3, backend="reference"))
    assert any("backend=triton runs the reference" in r.getMessage() for r in caplog.records)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_triton_on_cuda_equals_the_reference_forward_and_backward(dtype, tol):
    from upsamplers._triton_attention import neighborhood_attention_triton

    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 16, 96, 23, 31)
    q, key = (torch.randn(*shape[:3], *shape[4:], generator=g) for _ in range(2))
    v = torch.randn(*shape[:2], shape[3], *shape[4:], generator=g)
    bias = -torch.rand(1, 49, generator=g)
    leaves = [t.cuda().to(dtype if i < 3 else torch.float32).requires_grad_() for i, t in enumerate((q, key, v, bias))]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    out = neighborhood_attention_triton(*leaves[:3], 7, leaves[3], 0.5)
    ref = kernels.neighborhood_attention_reference(*ref_leaves[:3], 7, ref_leaves[3], 0.5)
    grads = torch.autograd.grad(out.float().sum(), leaves)
    ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)
    assert (out.double() - ref).abs().max() <= tol * ref.abs().max()
    for a, r in zip(grads, ref_grads):
        assert (a.double() - r).abs().max() <= tol * max(r.abs().max(), 1.0)
    assert kernels.resolve_backend("auto", leaves[0], v=leaves[2], kernel_size=7)[0] == "triton"

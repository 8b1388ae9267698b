"""``python -m radiosharp.bench attention``: the neighbourhood-attention backends side by side.

The kernel under JBU and FeatSharp's block (:func:`upsamplers._kernels.neighborhood_attention`) at
the shapes those upsamplers run:

- ``jbu``: one head, range keys ``D = 32``, values ``C = 384`` (ViT-S), 28 -> 56 (the 56x56 output
  grid), a 7x7 window, the spatial bias;
- ``featsharp768``: FeatSharp's block at ``2C = 768`` (ViT-S), 16 heads of 48, 56x56, 5x5 window,
  the ALiBi bias;
- ``featsharp2048``: ``2C = 2048`` (ViT-L), 16 heads of 128, 64x64, 5x5 window.

Backends: ``reference`` (the default: the tiled kernel for JBU-like calls, the first kernel
otherwise), ``reference_tiled`` (the row-tiled kernel), ``reference_v1`` (the first kernel, one pass
per window offset), ``flex`` (``torch.compile`` of ``flex_attention``; its first call compiles
and is a warm-up call, not timed; on CPU it has no backward, so its fwd+bwd rows say so), ``triton``
(the Triton kernels; CUDA only, so on CPU its rows say so), and ``flex_eager`` on request
(materializes the ``[heads, HW, HW]`` scores). Phases: ``fwd`` under
``torch.no_grad``; ``fwd+bwd``: forward, then ``torch.autograd.grad`` of ``<out, g>`` w.r.t. q, k,
v and the bias. All calls of one (shape, phase) are timed round-robin in one run
(:func:`radiosharp.bench.measure.measure_interleaved`), so the ratios share the machine's load;
``x ref`` = value / the reference's, ``x v1`` = value / the first kernel's. Peak memory: extra
memory allocated during one call (:mod:`radiosharp.bench.measure`; the inputs are not counted).
A backend that fails (a failed compile, out of memory) gets a failed row with the reason; flex's
fwd+bwd on CPU an ``n/a`` row.
"""

from __future__ import annotations

import inspect
import platform
from collections.abc import Callable
from typing import Any

import torch

from radiosharp.bench.measure import measure_interleaved, ratio

# name -> (B, heads, D, Dv, H, W, window, scale)
SHAPES: dict[str, tuple[int, int, int, int, int, int, int, float]] = {
    "jbu": (1, 1, 32, 384, 56, 56, 7, 1.0),
    "featsharp768": (1, 16, 48, 48, 56, 56, 5, 48**-0.5),
    "featsharp2048": (1, 16, 128, 128, 64, 64, 5, 128**-0.5),
}
TINY_SHAPES: dict[str, tuple[int, int, int, int, int, int, int, float]] = {
    "jbu": (1, 1, 4, 8, 6, 7, 3, 1.0),
    "featsharp": (1, 2, 4, 4, 5, 6, 3, 0.5),
}
BACKENDS = ("reference", "reference_tiled", "reference_v1", "flex", "triton")
PHASES = ("fwd", "fwd+bwd")


def _inputs(shape: tuple, device: torch.device, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    b, n, d, dv, h, w, k, _ = shape
    g = torch.Generator().manual_seed(seed)
    q, key = (torch.randn(b, n, d, h, w, generator=g) for _ in range(2))
    v = torch.randn(b, n, dv, h, w, generator=g)
    bias = -torch.rand(n, k * k, generator=g)
    return [t.to(device=device, dtype=dtype if i < 3 else torch.float32) for i, t in enumerate((q, key, v, bias))]


def _featsharp_class() -> Any:
    from radiosharp.registry import UPSAMPLERS

    return inspect.unwrap(UPSAMPLERS.get("featsharp"))  # the class under the registry's wrappers


def kernels() -> tuple[Callable[..., Any], Callable[..., Any], tuple[str, ...]]:
    """``(neighborhood_attention, neighborhood_attention_flex, backends)`` of the ``featsharp`` upsampler
    (its block's kernel, shared with featup's JBU), reached through the registry as the core does."""
    cls = _featsharp_class()
    return cls.attention_kernel, cls.attention_kernel_flex, tuple(cls.attention_backends)


def _call(backend: str, shape: tuple, inputs: list[torch.Tensor], phase: str) -> Callable[[], Any]:
    neighborhood_attention, neighborhood_attention_flex, _ = kernels()
    k, scale = shape[6], shape[7]

    def attend(q, key, v, bias):
        if backend in ("flex", "flex_eager"):  # directly, so a failure is reported, not replaced
            return neighborhood_attention_flex(q, key, v, k, bias, scale, compile=backend == "flex")
        if backend == "triton":
            return _featsharp_class().attention_kernel_triton(q, key, v, k, bias, scale)
        return neighborhood_attention(q, key, v, k, bias, scale, backend=backend)

    if phase == "fwd":

        def forward():
            with torch.no_grad():
                return attend(*inputs)

        return forward
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    g = torch.randn(shape[0], shape[1], shape[3], shape[4], shape[5], device=inputs[0].device, dtype=inputs[2].dtype)

    def forward_backward():
        out = attend(*leaves)
        return torch.autograd.grad(out, leaves, g)

    return forward_backward


def bench_attention(
    shapes: dict[str, tuple] | None = None,
    backends: tuple[str, ...] | list[str] = BACKENDS,
    phases: tuple[str, ...] | list[str] = PHASES,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One row per (shape, phase, backend): median seconds, peak MiB, ratios to the reference and v1."""
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    shapes = shapes or SHAPES
    rows: list[dict[str, Any]] = []
    for name, shape in shapes.items():
        inputs = _inputs(shape, device, dtype)
        for phase in phases:
            fns: dict[str, Callable[[], Any]] = {}
            failed: dict[str, str] = {}
            skipped: set[str] = set()
            for backend in backends:
                if phase == "fwd+bwd" and backend.startswith("flex") and device.type == "cpu":
                    failed[backend] = "flex_attention has no backward on CPU"
                    skipped.add(backend)
                    continue
                if backend == "triton" and device.type == "cpu":
                    failed[backend] = "the triton kernels need a CUDA device"
                    skipped.add(backend)
                    continue
                fn = _call(backend, shape, inputs, phase)
                try:  # the warm-up call (compiles flex); a failure here is this backend's row
                    if progress:
                        progress(f"{name} {phase} {backend}: warm-up")
                    fn()
                except Exception as err:  # noqa: BLE001 - reported in the row
                    failed[backend] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    continue
                fns[backend] = fn
            if progress:
                progress(f"{name} {phase}: timing {', '.join(fns)} round-robin")
            costs = measure_interleaved(fns, device, warmup=max(warmup - 1, 0), repeats=repeats) if fns else {}
            ref = costs.get("reference")
            v1 = costs.get("reference_v1")
            for backend in backends:
                cost = costs.get(backend)
                row: dict[str, Any] = {
                    "shape": name,
                    "dims": dict(zip("B heads D Dv H W window".split(), shape[:7])),
                    "phase": phase,
                    "backend": backend,
                    "status": "ok" if cost is not None else ("n/a" if backend in skipped else "failed"),
                    "error": failed.get(backend),
                    "time_s": cost.seconds if cost else None,
                    "times_s": cost.times if cost else None,
                    "peak_mb": cost.peak_mb if cost else None,
                }
                row["time_x_ref"] = ratio(row["time_s"], ref.seconds if ref else None)
                row["mem_x_ref"] = ratio(row["peak_mb"], ref.peak_mb if ref else None)
                row["time_x_v1"] = ratio(row["time_s"], v1.seconds if v1 else None)
                row["mem_x_v1"] = ratio(row["peak_mb"], v1.peak_mb if v1 else None)
                rows.append(row)
    return {
        "bench": "attention",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": precision,
        "warmup": warmup,
        "repeats": repeats,
        "rows": rows,
    }


def attention_tables(report: dict[str, Any]) -> str:
    from radiosharp.bench.table import Column, milliseconds, record_table

    head = (
        f"neighbourhood attention backends on {report['device']} ({report['device_name']}, "
        f"{report['threads']} threads), torch {report['torch']}, {report['precision']}, median of "
        f"{report['repeats']} round-robin after {report['warmup']} warm-up (flex: the warm-up compiles)\n"
        "x ref = / reference (the default backend); x v1 = / reference_v1 (the first kernel)"
    )
    columns: list[Column] = [
        ("shape", "shape"),
        ("phase", "phase"),
        ("backend", "backend"),
        ("ms", milliseconds("time_s")),
        ("x ref", "time_x_ref"),
        ("x v1", "time_x_v1"),
        ("peak MiB", "peak_mb"),
        ("x ref", "mem_x_ref"),
        ("x v1", "mem_x_v1"),
        ("status", lambda r: "ok" if r["status"] == "ok" else f"{r['status']} ({r['error']})"),
    ]
    return f"{head}\n\n{record_table(report['rows'], columns)}"

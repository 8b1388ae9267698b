"""``python -m radiosharp.bench bounded``: each upsampler's call with and without a memory budget, side by side.

For every upsampler and factor, on one image (batch 1) at ``u x`` the teacher's native size and the
teacher's features of its native-size view (computed once, not timed):

- ``unbounded``: ``upsampler(images, lowres, featurize)``, the plain call;
- ``bounded``: ``upsampler.bounded_forward(images, lowres, featurize, budget)``, the chunked call that
  ``UpsampledTeacher(max_memory_mb=budget)`` makes (``upsamplers._chunked``: tiles with a halo, query
  chunks, or the mosaic written in place, per upsampler).

Both under ``torch.no_grad`` in the chosen precision, timed round-robin in one run
(:func:`radiosharp.bench.measure.measure_interleaved`), so their ratio shares the machine's load.
Peak memory is the extra memory allocated during the call (the inputs are not counted; the output is),
so ``working = peak - output`` is what the budget bounds. Tile-based upsamplers (featsharp, tiles, s2) run
the teacher on their ``u x u`` tiles inside both calls; that cost is in both columns. The largest
difference between the two outputs, absolute and relative to the output's largest magnitude, shows they
are the same map.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from radiosharp.bench.measure import measure_interleaved, ratio
from radiosharp.bench.upsample import _memory_method, precision_context
from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.images import resize

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("bilinear", "featup", "featsharp")
DEFAULT_FACTORS = (4, 8)
DEFAULT_BUDGET_MB = 512.0


def _mib(t: torch.Tensor) -> float:
    return t.numel() * t.element_size() / 2**20


def bench_bounded(
    teacher: Teacher,
    methods: Sequence[str] = DEFAULT_METHODS,
    factors: Sequence[int] = DEFAULT_FACTORS,
    budget_mb: float = DEFAULT_BUDGET_MB,
    repeats: int = 1,
    precision: str = "fp32",
    tile_batch: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One row per (upsampler, factor): time and peak memory of the unbounded and the bounded call, their
    ratios, the output's size and the largest difference between the two outputs (module docstring)."""
    if budget_mb <= 0:
        raise ValueError(f"the memory budget must be > 0 MiB, got {budget_mb}")
    device = next(teacher.parameters()).device
    side = teacher.native_size
    teacher.eval()
    rows: list[dict[str, Any]] = []
    for factor in factors:
        g = torch.Generator().manual_seed(factor)
        images = torch.rand(1, 3, factor * side, factor * side, generator=g).to(device)
        with torch.no_grad(), precision_context(device, precision):
            lowres = teacher(resize(images, (side, side))).features

            def featurize(x: torch.Tensor) -> torch.Tensor:
                return teacher(x).features

            for method in methods:
                if progress:
                    progress(f"bounded {method} {factor}x: building")
                up = build_upsampler(method, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
                up = up.to(device).eval()
                bounded_forward = getattr(up, "bounded_forward", None)
                if bounded_forward is None:
                    rows.append({"method": method, "factor": factor, "status": "no bounded_forward"})
                    continue
                args = (images, lowres, featurize)
                fns = {
                    "unbounded": lambda up=up, args=args: up(*args),
                    "bounded": lambda bf=bounded_forward, args=args: bf(*args, budget_mb, tile_batch=tile_batch),
                }
                if progress:
                    progress(f"bounded {method} {factor}x: outputs, then {repeats} timed round(s) of both calls")
                full, chunked = fns["unbounded"](), fns["bounded"]()
                output_mib = _mib(full)  # in the dtype the call returns
                diff = float((full.float() - chunked.float()).abs().max())
                scale = float(full.float().abs().max())
                del full, chunked
                gc.collect()
                costs = measure_interleaved(fns, device, warmup=0, repeats=repeats)
                unb, bnd = costs["unbounded"], costs["bounded"]
                rows.append(
                    {
                        "method": method,
                        "factor": factor,
                        "status": "ok",
                        "output_mib": output_mib,
                        "unbounded_s": unb.seconds,
                        "bounded_s": bnd.seconds,
                        "unbounded_peak_mib": unb.peak_mb,
                        "bounded_peak_mib": bnd.peak_mb,
                        "unbounded_working_mib": None if unb.peak_mb is None else unb.peak_mb - output_mib,
                        "bounded_working_mib": None if bnd.peak_mb is None else bnd.peak_mb - output_mib,
                        "time_ratio": ratio(bnd.seconds, unb.seconds),
                        "peak_ratio": ratio(bnd.peak_mb, unb.peak_mb),
                        "max_abs_diff": diff,
                        "max_rel_diff": diff / max(scale, 1e-30),
                    }
                )
                del up, fns
                gc.collect()
    return {
        "bench": "bounded",
        "teacher": getattr(teacher, "name", type(teacher).__name__),
        "embed_dim": teacher.embed_dim,
        "native_size": side,
        "budget_mb": budget_mb,
        "precision": precision,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "memory": _memory_method(device),
        "rows": rows,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def bounded_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (a caption line, then one row per upsampler and factor)."""
    lines = [
        f"{report['teacher']} ({report['embed_dim']} channels, native {report['native_size']} px), batch 1, "
        f"{report['precision']}, on {report['device']} ({report['threads']} threads); budget "
        f"{report['budget_mb']:g} MiB; median of {report['repeats']} round-robin call(s); peak: extra memory "
        f"during the call ({report['memory']}), output included; working = peak - output.",
        "",
        "| upsampler | factor | output MiB | unbounded s | bounded s | time x | unbounded peak MiB "
        "| bounded peak MiB | peak x | bounded working MiB | max rel diff |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['factor']}x | {r['status']} |" + " |" * 8)
            continue
        lines.append(
            f"| {r['method']} | {r['factor']}x | {r['output_mib']:.0f} | {r['unbounded_s']:.2f} | "
            f"{r['bounded_s']:.2f} | {_fmt(r['time_ratio'], '.2f')} | {_fmt(r['unbounded_peak_mib'], '.0f')} | "
            f"{_fmt(r['bounded_peak_mib'], '.0f')} | {_fmt(r['peak_ratio'], '.2f')} | "
            f"{_fmt(r['bounded_working_mib'], '.0f')} | {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)

"""``python -m radiosharp.bench downsample``: the attention downsampler's two ways of reading its windows.

:class:`radiosharp.downsampler.AttentionDownsampler` takes every ``k x k`` tap in one ``unfold`` when the
windows are evenly spaced (``window_method = "auto"``) and tap by tap otherwise (``"taps"``, the reference).
Multi-view training calls it on every jittered view each step, forward and backward, so both phases are
measured: ``fwd`` under ``torch.no_grad`` and ``fwd+bwd`` (the gradient of a fixed weighting of the output
with respect to the hi-res input and the weights), in training mode (dropout and the random cell mask on,
seeded alike). The two methods of one (shape, phase) are timed round-robin in one run
(:func:`radiosharp.bench.measure.measure_interleaved`); ``x taps`` = value / the tap loop's. The largest
difference between their outputs is reported too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from radiosharp.bench.measure import measure_interleaved, ratio
from radiosharp.downsampler import AttentionDownsampler

# name -> (views N, channels C, hi-res side, low-res side, window k)
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "vits_48to12": (10, 384, 48, 12, 7),
    "vits_24to12": (10, 384, 24, 12, 7),
    "vitl_64to16": (4, 1024, 64, 16, 7),
}
TINY_SHAPES: dict[str, tuple[int, int, int, int, int]] = {"tiny_8to4": (2, 8, 8, 4, 3)}
METHODS = ("auto", "taps")
PHASES = ("fwd", "fwd+bwd")


def _call(down: AttentionDownsampler, method: str, x: torch.Tensor, out: int, phase: str) -> Callable[[], Any]:
    weight = torch.linspace(-1, 1, x.shape[0] * x.shape[1] * out * out).view(x.shape[0], x.shape[1], out, out)

    def run() -> Any:
        down.window_method = method
        torch.manual_seed(0)  # the same mask and dropout for both methods
        if phase == "fwd":
            with torch.no_grad():
                return down(x, out)
        leaves = [x, *down.parameters()]
        return torch.autograd.grad((down(x, out) * weight).sum(), leaves)

    return run


def bench_downsample(
    shapes: dict[str, tuple[int, int, int, int, int]] | None = None,
    phases: tuple[str, ...] | list[str] = PHASES,
    warmup: int = 1,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One row per (shape, phase, method): median seconds, peak MiB and the ratios to the tap loop."""
    rows: list[dict[str, Any]] = []
    for name, (n, c, hi, lo, k) in (shapes or SHAPES).items():
        torch.manual_seed(0)
        down = AttentionDownsampler(c, kernel_size=k).train()
        x = torch.randn(n, c, hi, hi, requires_grad=True)
        with torch.no_grad():
            outs = [_call(down, m, x, lo, "fwd")() for m in METHODS]
        diff = float((outs[0] - outs[1]).abs().max())
        for phase in phases:
            if progress:
                progress(f"downsample {name} {phase}: timing {', '.join(METHODS)} round-robin")
            fns = {m: _call(down, m, x, lo, phase) for m in METHODS}
            costs = measure_interleaved(fns, "cpu", warmup=warmup, repeats=repeats)
            taps = costs["taps"]
            for method in METHODS:
                cost = costs[method]
                rows.append(
                    {
                        "shape": name,
                        "views": n,
                        "channels": c,
                        "hires": hi,
                        "lowres": lo,
                        "kernel_size": k,
                        "phase": phase,
                        "method": method,
                        "seconds": cost.seconds,
                        "peak_mib": cost.peak_mb,
                        "time_vs_taps": ratio(cost.seconds, taps.seconds),
                        "peak_vs_taps": ratio(cost.peak_mb, taps.peak_mb),
                        "max_abs_diff": diff,
                    }
                )
        down.window_method = "auto"
    return {"bench": "downsample", "device": "cpu", "threads": torch.get_num_threads(), "rows": rows}


def downsample_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    lines = [
        f"attention downsampler, training mode, float32, cpu ({report['threads']} threads); auto = one unfold "
        "(evenly spaced windows), taps = the tap-by-tap loop; x taps: ratio to the loop in the same round-robin.",
        "",
        "| shape | N x C | hi-res -> low-res | phase | method | s | x taps | peak MiB | x taps | max abs diff |",
        "|:---|---:|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        t, p = r["time_vs_taps"], r["peak_vs_taps"]
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"| {r['shape']} | {r['views']} x {r['channels']} | {r['hires']} -> {r['lowres']} (k={r['kernel_size']}) "
            f"| {r['phase']} | {r['method']} | {r['seconds']:.3f} | {'n/a' if t is None else f'{t:.2f}'} | {peak} "
            f"| {'n/a' if p is None else f'{p:.2f}'} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)

"""The ``bounded`` and ``downsample`` sections: bounded-memory upsampling against the unbounded call,
and the attention downsampler's unfold path against its tap loop (``python -m radiosharp.bench bounded`` /
``downsample`` on the plan's teachers and shapes)."""

from __future__ import annotations

from typing import Any

import torch

from radiosharp.reproduce.plan import Plan


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


def bounded_section(plan: Plan) -> dict[str, Any]:
    from radiosharp.bench.bounded import bench_bounded
    from radiosharp.builders import build_teacher
    from radiosharp.specs import parse_teacher_spec

    reports = []
    for run in plan.bounded_runs:
        teacher = build_teacher(parse_teacher_spec(run.teacher), "bounded_runs")
        report = bench_bounded(teacher, run.methods, run.factors, plan.bounded_budget_mb, repeats=1, progress=_say)
        report["spec"] = run.teacher
        reports.append(report)
        del teacher
    return {"reports": reports, "threads": torch.get_num_threads()}


def bounded_markdown(data: dict[str, Any]) -> str:
    from radiosharp.bench.bounded import bounded_markdown as table

    return "\n\n".join(f"Teacher `{r['spec']}`:\n\n{table(r)}" for r in data["reports"])


def bounded_checks(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """This project's claims for bounded calls, checked on the measured rows: the same output, and the
    working memory within the budget (where memory was measured)."""
    out: list[tuple[str, bool | None, str]] = []
    for report in data["reports"]:
        rows = [r for r in report["rows"] if r["status"] == "ok"]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["max_rel_diff"])
        out.append(
            (
                f"{report['teacher']}: every bounded call gives the unbounded output (relative difference <= 1e-5)",
                worst["max_rel_diff"] <= 1e-5,
                f"largest {worst['max_rel_diff']:.1e}, {worst['method']} {worst['factor']}x",
            )
        )
        measured = [r for r in rows if r["bounded_working_mib"] is not None]
        if measured:
            higher = [f"{r['method']} {r['factor']}x" for r in measured if r["peak_ratio"] > 1.0]
            out.append(
                (
                    f"{report['teacher']}: no bounded call holds more memory at its peak than the unbounded one",
                    not higher,
                    f"higher: {', '.join(higher)}" if higher else "",
                )
            )
            over = [f"{r['method']} {r['factor']}x" for r in measured if r["bounded_working_mib"] > report["budget_mb"]]
            worst = max(measured, key=lambda r: r["bounded_working_mib"])
            out.append(
                (
                    f"{report['teacher']}: every bounded call's working memory fits the "
                    f"{report['budget_mb']:g} MiB budget",
                    not over,
                    f"largest {worst['bounded_working_mib']:.0f} MiB, {worst['method']} {worst['factor']}x"
                    + (f"; over: {', '.join(over)}" if over else ""),
                )
            )
    return out


def downsample_section(plan: Plan) -> dict[str, Any]:
    from radiosharp.bench.downsample import SHAPES, TINY_SHAPES, bench_downsample

    known = {**SHAPES, **TINY_SHAPES}
    shapes = {name: known[name] for name in plan.downsample_shapes}
    return {"report": bench_downsample(shapes, repeats=plan.downsample_repeats, progress=_say)}


def downsample_markdown(data: dict[str, Any]) -> str:
    from radiosharp.bench.downsample import downsample_markdown as table

    return table(data["report"])


def downsample_checks(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The unfold path's reason to exist: it gives the tap loop's output and is not slower, per shape."""
    out: list[tuple[str, bool | None, str]] = []
    rows = data["report"]["rows"]
    for row in rows:
        if row["method"] != "auto" or row["phase"] != "fwd+bwd":
            continue
        out.append(
            (
                f"one unfold is at least as fast as the tap loop, fwd+bwd, {row['shape']}",
                row["time_vs_taps"] is not None and row["time_vs_taps"] <= 1.0,
                f"{row['time_vs_taps']:.2f}x the loop's time, outputs differ by {row['max_abs_diff']:.1e}",
            )
        )
        if row["peak_vs_taps"] is not None:
            out.append(
                (
                    f"one unfold holds no more memory than the tap loop, fwd+bwd, {row['shape']}",
                    row["peak_vs_taps"] <= 1.0,
                    f"{row['peak_vs_taps']:.2f}x the loop's peak",
                )
            )
    return out

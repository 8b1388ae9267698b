"""The upsampler cost table as markdown (ratios to bilinear, ratios to the teacher at ``u x`` input) and as a plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radiosharp.bench.upsampler_cost_factor import TEACHER


def where(report: dict[str, Any]) -> str:
    """The device, with the intra-op thread count on the CPU (what CPU times depend on)."""
    device = report["device"]
    n = report.get("threads")
    if not device.startswith("cpu") or not n:
        return device
    return f"{device} ({n} thread{'' if n == 1 else 's'})"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _with_ratio(value: float | None, rel: float | None) -> str:
    if value is None:
        return "-"
    return _num(value) if rel is None else f"{_num(value)} ({_num(rel)}x)"


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 10**6:
        return f"{n / 1e6:.2f}M"
    if n >= 10**3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _cells(report: dict[str, Any]) -> tuple[list[int], list[str], dict[tuple[int, str], dict[str, Any]]]:
    """The report's factors and methods in row order, and its rows by ``(factor, method)``."""
    rows = report["rows"]
    factors = list(dict.fromkeys(r["factor"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return factors, methods, {(r["factor"], r["method"]): r for r in rows}


def _header(first: list[str], factors: list[int], per_factor: tuple[str, ...]) -> list[str]:
    """A markdown table's header and alignment lines: ``first``, then ``per_factor`` columns per factor."""
    headers = first + [f"{u}x {column}" for u in factors for column in per_factor]
    return ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]


def upsampler_cost_markdown(report: dict[str, Any]) -> str:
    """A markdown table: one line per method, its parameters, and per factor ``fwd ms``, ``fwd+bwd ms`` and
    the peak MiB of forward+backward, each with its ratio to bilinear (``(2.1x)``); failures listed below.

    Parameters that depend on the factor (featup's JBU stack grows with it) read ``a / b / ...``,
    one per distinct count in factor order."""
    t = report["teacher"]
    factors, methods, by = _cells(report)
    lines = _header(["method", "params"], factors, ("fwd ms", "fwd+bwd ms", "peak MiB"))
    failures = []
    for m in methods:
        rows = [by.get((u, m)) for u in factors]
        counts = list(dict.fromkeys(r["params"] for r in rows if r and r["params"] is not None))
        cells = [f"`{m}`", " / ".join(_params(n) for n in counts) or "-"]
        for u, r in zip(factors, rows):
            if r is None:
                cells += ["-"] * 3
                continue
            cells += [
                _with_ratio(_ms(r["fwd_s"]), r["fwd_ratio"]),
                _with_ratio(_ms(r["fwd_bwd_s"]), r["fwd_bwd_ratio"]),
                _with_ratio(r["fwd_bwd_peak_mb"], r["fwd_bwd_mem_ratio"]),
            ]
            if r["status"] != "ok":
                failures.append(f"- `{m}` at {u}x: {r['error']}")
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"Upsampler alone (teacher excluded), {t['name']} features ({t['embed_dim']} channels) on a "
        f"{t['grid']}x{t['grid']} grid (teacher input {t['input_size']} px, guidance image u x that), "
        f"batch {report['batch']}, {report['precision']}, on {where(report)}; "
        f"median of {report['repeats']} "
        f"after {report['warmup']} warm-up, timed round-robin with bilinear. fwd: no-grad forward; fwd+bwd: "
        f"forward + gradient of the output's sum w.r.t. the parameters (parameter-free methods: w.r.t. the "
        f"input features); peak MiB: extra memory during fwd+bwd. (Nx): ratio to bilinear at the same factor."
    )
    parts = [caption, "\n".join(lines)]
    if failures:
        parts.append("Failed:\n" + "\n".join(failures))
    return "\n\n".join(parts) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def upsampler_cost_teacher_markdown(report: dict[str, Any]) -> str:
    """The teacher-ratio table: per method and factor, forward / forward+backward time and forward+backward
    peak memory as ratios to the teacher at ``u x`` input (``teacher_rows``); its own costs in the first line.
    Empty when the teacher was not measured."""
    trows = {r["factor"]: r for r in report.get("teacher_rows") or []}
    if not trows:
        return ""
    factors, methods, by = _cells(report)
    factors = [u for u in factors if u in trows]
    lines = _header(["method", "params x T"], factors, ("fwd x T", "fwd+bwd x T", "peak x T"))
    cells = [f"`{TEACHER}` at u x input", _params(report.get("teacher_params"))]
    for u in factors:
        t = trows[u]
        cells += [f"{_num(_ms(t['fwd_s']))} ms", f"{_num(_ms(t['fwd_bwd_s']))} ms", f"{_num(t['fwd_bwd_peak_mb'])} MiB"]
    lines.append("| " + " | ".join(cells) + " |")
    for m in methods:
        rows = [by.get((u, m)) for u in factors]
        first = next((r for r in rows if r), None)
        cells = [f"`{m}`", _num(first.get("params_teacher_ratio") if first else None)]
        for r in rows:
            if r is None:
                cells += ["-"] * 3
                continue
            cells += [_num(r.get(f"{k}")) for k in ("fwd_teacher_ratio", "fwd_bwd_teacher_ratio")]
            cells.append(_num(r.get("fwd_bwd_mem_teacher_ratio")))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f"- the teacher at {u}x input: {t['error']}" for u, t in trows.items() if t["status"] != "ok"]
    caption = (
        "Ratios to the teacher at u x input (x T; < 1: cheaper than running the teacher on the u x larger image), "
        "measured in the same round-robin; the teacher's fwd+bwd is the gradient w.r.t. its input image."
    )
    parts = [caption, "\n".join(lines)] + (["Failed:\n" + "\n".join(failed)] if failed else [])
    return "\n\n".join(parts) + "\n"


def plot_upsampler_cost(reports: Sequence[dict[str, Any]], path: str) -> str:
    """Time (fwd, fwd+bwd) and fwd+bwd peak memory vs factor, log-log, one column per report (teacher
    width), one line per method (the teacher at u x input dashed); written as PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = list(reports)
    fig, axes = plt.subplots(3, len(reports), figsize=(5.5 * len(reports), 11), squeeze=False)
    panels = [("fwd_s", "forward s"), ("fwd_bwd_s", "forward+backward s"), ("fwd_bwd_peak_mb", "fwd+bwd peak MiB")]
    for col, report in enumerate(reports):
        t = report["teacher"]
        series: dict[str, list[dict[str, Any]]] = {}
        for r in report["rows"]:
            series.setdefault(r["method"], []).append(r)
        if report.get("teacher_rows"):
            series[f"{TEACHER} at u x"] = list(report["teacher_rows"])
        for row, (key, label) in enumerate(panels):
            ax = axes[row][col]
            for method, rs in series.items():
                pts = [(r["factor"], r[key]) for r in rs if r.get(key)]
                if pts:
                    style = "--" if method.startswith(TEACHER) else "-"
                    ax.plot(*zip(*pts), style, marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("factor u")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"{t['name']} C={t['embed_dim']}, {t['input_size']} px input, {where(report)}")
        axes[0][col].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

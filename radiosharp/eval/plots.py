"""Pictures of eval results (matplotlib, Agg; no pyplot state).

- :func:`delta_bar_figure`: the MTL gain of each compared run per task, a bar per task per
  run (delta_t in %), error bars = the seed spread of that delta (``mtl.py``), a zero line,
  Delta_m in the title.
- :func:`table_figure`: a table (header + cells, e.g. ``report.table``) as a picture.
- :func:`mtl_pictures`: both, written beside the ``eval mtl`` Markdown report.
- :func:`metric_vs_factor_plot`: one line per method of a metric against the upsampling
  factor, mean ± std over seeds (the FeatSharp paper's figures 6-7).
- :func:`metric_bars_figure` / :func:`compare_pictures`: ``eval compare``'s pictures, a bar
  per run per task metric (± std), the table, and metric-vs-factor lines for upsampler runs.

Each ``*_figure`` function returns the :class:`~matplotlib.figure.Figure` (so callers and
tests can inspect it); :func:`save_figure` writes a PNG.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from radiosharp.eval.report import table, task_names

__all__ = [
    "compare_pictures",
    "delta_bar_figure",
    "metric_bars_figure",
    "metric_vs_factor_figure",
    "metric_vs_factor_plot",
    "mtl_pictures",
    "save_figure",
    "table_figure",
]

DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg whatever the global backend is
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _labels(runs: Sequence[str]) -> list[str]:
    """Short legend names: the last path component when those are distinct."""
    short = [Path(str(r)).name or str(r) for r in runs]
    return short if len(set(short)) == len(short) else [str(r) for r in runs]


def _finite_or_nan(x: float | None) -> float:
    return float("nan") if x is None or not math.isfinite(x) else float(x)


def delta_bar_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Grouped bars of delta_t (%) per task, one bar per task per compared run (rows with an
    ``mtl`` result; the baseline row has none). A task that a run has no delta for gets no bar.
    Error bars: the task's seed spread (``mtl["task_spreads"]``), none where it is unknown."""
    compared = [r for r in rows if r.get("mtl") is not None]
    tasks = [t for t in task_names(rows) if any(t in r["mtl"]["task_deltas"] for r in compared)]
    labels = _labels([r["run"] for r in compared])
    fig = _figure(max(4.0, 1.2 + 0.9 * len(tasks) * max(1, len(compared)) ** 0.5), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(compared))
    for i, (row, label) in enumerate(zip(compared, labels)):
        mtl = row["mtl"]
        present = [j for j, t in enumerate(tasks) if t in mtl["task_deltas"]]
        if not present:
            continue
        x = [j - 0.4 + width * (i + 0.5) for j in present]
        heights = [mtl["task_deltas"][tasks[j]] for j in present]
        spreads = [_finite_or_nan((mtl.get("task_spreads") or {}).get(tasks[j])) for j in present]
        yerr = spreads if any(math.isfinite(s) for s in spreads) else None
        bars = ax.bar(x, heights, width * 0.9, yerr=yerr, capsize=3, label=label)
        ax.bar_label(bars, labels=[f"{h:+.1f}" for h in heights], fontsize=7, padding=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.set_ylabel("δ vs baseline (%)")
    parts = []
    for row, label in zip(compared, labels):
        dm, spread = row["mtl"].get("delta_m"), row["mtl"].get("delta_m_spread")
        if dm is None:
            parts.append(f"{label} n/a")
        else:
            parts.append(f"{label} {dm:+.2f}" + (f" ± {spread:.2f}" if spread is not None else ""))
    ax.set_title("Δm %: " + ("; ".join(parts) if parts else "no compared run"), fontsize=9)
    if not tasks:
        ax.text(0.5, 0.5, "no comparable task", ha="center", va="center", transform=ax.transAxes)
    if len(compared) > 1:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def table_figure(header: Sequence[str], cells: Sequence[Sequence[str]], title: str | None = None) -> Figure:
    """A table as a picture, sized to its text; the header row is shaded."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells)]
    char = 0.075  # inches per character at fontsize 9
    fig = _figure(max(3.0, sum(w * char + 0.25 for w in widths)), 0.45 + 0.3 * (len(cells) + 1) + (0.3 if title else 0))
    ax = fig.add_subplot()
    ax.axis("off")
    tab = ax.table(
        cellText=[list(map(str, r)) for r in cells] or None,
        colLabels=list(map(str, header)),
        colWidths=[w / sum(widths) for w in widths],
        loc="center",
        cellLoc="center",
    )
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1, 1.4)
    for col in range(len(header)):
        tab[0, col].set_facecolor("#e6e6e6")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return fig


def mtl_pictures(rows: Sequence[Mapping[str, Any]], report: str | Path) -> dict[str, Path]:
    """Write the delta bar chart and the table picture beside the Markdown ``report``:
    ``<stem>_deltas.png`` and ``<stem>_table.png``. Returns alt text -> path."""
    report = Path(report)
    bars = save_figure(delta_bar_figure(rows), report.with_name(f"{report.stem}_deltas.png"))
    tab = save_figure(table_figure(*table(rows)), report.with_name(f"{report.stem}_table.png"))
    return {"δ per task vs the baseline": bars, "MTL gain table": tab}


def _mean_std(values: Any) -> tuple[float, float]:
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    mean = statistics.fmean(vals)
    return mean, (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def metric_vs_factor_figure(
    rows: Sequence[Mapping[str, Any]], metric: str, title: str | None = None, ylabel: str | None = None
) -> Figure:
    """One line per method (first-seen order) of ``metric`` against ``factor``: mean over the
    seed values with ± std error bars, the x axis log 2 with a tick per factor.

    ``rows``: ``{"method": str, "factor": int, metric: [values over seeds] or one number}``;
    rows without ``metric`` are skipped."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    for row in rows:
        if metric not in row:
            continue
        factor = int(row["factor"])
        points = series.setdefault(str(row["method"]), {})
        if factor in points:
            raise ValueError(f"metric_vs_factor: two rows for method {row['method']!r} at factor {factor}")
        points[factor] = _mean_std(row[metric])
    if not series:
        raise ValueError(f"metric_vs_factor: no row has metric {metric!r}")
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    for method, points in series.items():
        xs = sorted(points)
        ax.errorbar(
            xs, [points[x][0] for x in xs], yerr=[points[x][1] for x in xs], marker="o", capsize=3, label=method
        )
    factors = sorted({f for points in series.values() for f in points})
    if all(f > 0 for f in factors):
        ax.set_xscale("log", base=2)
    ax.set_xticks(factors, [f"{f}x" for f in factors])
    ax.minorticks_off()
    ax.set_xlabel("upsampling factor")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{metric} vs upsampling factor (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_vs_factor_plot(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    out_path: str | Path,
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """:func:`metric_vs_factor_figure`, saved as a PNG at ``out_path``; returns the Figure."""
    fig = metric_vs_factor_figure(rows, metric, title=title, ylabel=ylabel)
    save_figure(fig, out_path)
    return fig


def metric_bars_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One panel per task metric, a bar per run (mean over probe seeds, ± std error bars),
    the metric's direction in the panel title; skipped or missing cells are left empty."""
    from radiosharp.eval.report import metric_columns

    columns = [(t, m, hib) for t, m, hib in metric_columns(rows) if m is not None]
    if not columns:
        raise ValueError("metric bars: no run has a metric")
    labels = _labels([str(r["run"]) for r in rows])
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = _figure(3.2 * ncols, 2.6 * nrows + 0.3)
    for i, (task, metric, hib) in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        means, stds = [], []
        for row in rows:
            entry = ((row["tasks"].get(task) or {}).get("metrics") or {}).get(metric)
            means.append(float("nan") if entry is None else float(entry["mean"]))
            std = None if entry is None else entry.get("std")
            stds.append(_finite_or_nan(std) if std is not None else 0.0)
        xs = list(range(len(rows)))
        ax.bar(xs, means, yerr=[0.0 if math.isnan(s) else s for s in stds], capsize=3, color=f"C{i % 10}")
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{task}/{metric} {'↑' if hib else '↓'}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def compare_pictures(
    rows: Sequence[Mapping[str, Any]], report: str | Path, factors: Mapping[str, tuple[str, int]] | None = None
) -> dict[str, Path]:
    """Beside the ``eval compare`` report: ``<stem>_metrics.png`` (:func:`metric_bars_figure`),
    ``<stem>_table.png`` and, given ``factors`` (run -> (method, factor), e.g. an upsampler run's
    name and factor) with more than one factor, ``<stem>_<task>_<metric>_vs_factor.png`` per metric."""
    from radiosharp.eval.report import metric_columns

    report = Path(report)
    out = {
        "metrics per run": save_figure(metric_bars_figure(rows), report.with_name(f"{report.stem}_metrics.png")),
        "comparison table": save_figure(
            table_figure(*table(rows, deltas=False)), report.with_name(f"{report.stem}_table.png")
        ),
    }
    if factors and len({f for _, f in factors.values()}) > 1:
        for task, metric, _ in metric_columns(rows):
            if metric is None:
                continue
            points = []
            for row in rows:
                entry = ((row["tasks"].get(task) or {}).get("metrics") or {}).get(metric)
                if entry is None or str(row["run"]) not in factors:
                    continue
                method, factor = factors[str(row["run"])]
                points.append({"method": method, "factor": factor, metric: entry.get("values") or [entry["mean"]]})
            try:
                fig = metric_vs_factor_figure(points, metric, title=f"{task} {metric} vs upsampling factor")
            except ValueError:  # two runs of one method at one factor: no line to draw
                continue
            safe = metric.replace("@", "_at_").replace("/", "_")
            out[f"{task} {metric} vs factor"] = save_figure(
                fig, report.with_name(f"{report.stem}_{task}_{safe}_vs_factor.png")
            )
    return out

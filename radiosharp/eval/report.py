"""Tables of eval results: one row per run, one column per task metric, then the
per-task deltas and Delta_m against the baseline, each followed by its significance
column ("yes" when ``|delta|`` exceeds the seed spread, "no" when not, "n/a" when the
spread is unknown; see ``mtl.py``) (text for the terminal, Markdown for the report file)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from radiosharp.bench.table import format_table

DASH = "-"


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def format_entry(entry: Mapping[str, Any] | None) -> str:
    """A metric entry as ``mean ± std`` (``mean`` alone for one seed), ``-`` when absent."""
    if entry is None:
        return DASH
    if entry.get("std", 0) and math.isfinite(entry["std"]):
        return f"{_fmt(entry['mean'])} ± {_fmt(entry['std'])}"
    return _fmt(entry["mean"])


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None, bool]]:
    """(task, metric, higher_is_better) in first-seen order over all rows; a task without
    metrics in any row (skipped everywhere) gets one column with metric None."""
    seen: dict[tuple[str, str | None], bool] = {}
    for task in task_names(rows):
        names = {}
        for row in rows:
            for name, entry in ((row["tasks"].get(task) or {}).get("metrics") or {}).items():
                names.setdefault(name, bool(entry.get("higher_is_better", True)))
        for name, hib in (names or {None: True}).items():
            seen[(task, name)] = hib
    return [(t, m, hib) for (t, m), hib in seen.items()]


def task_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for task in row["tasks"]:
            if task not in names:
                names.append(task)
    return names


def significance_label(mtl: Mapping[str, Any] | None, key: str) -> str:
    """ "yes" / "no" / "n/a" for a task (or "delta_m") of an ``mtl_gain`` result."""
    flag = ((mtl or {}).get("significant") or {}).get(key)
    return "n/a" if flag is None else ("yes" if flag else "no")


def table(rows: Sequence[Mapping[str, Any]], deltas: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and cells. ``rows``: ``{"run": name, "tasks": {...}, "mtl": mtl_gain dict or None}``
    (the baseline's ``mtl`` is None and shows as "baseline"); ``deltas=False`` drops the
    delta columns (a single run)."""
    columns = metric_columns(rows)
    with_metrics = {t for t, m, _ in columns if m is not None}
    tasks = [t for t in task_names(rows) if t in with_metrics] if deltas else []
    header = ["run"] + [t if m is None else f"{t}/{m} {'↑' if hib else '↓'}" for t, m, hib in columns]
    if deltas:
        for t in tasks:
            header += [f"δ {t} %", f"sig {t}"]
        header += ["Δm %", "sig Δm"]
    cells = []
    for row in rows:
        line = [str(row["run"])]
        for task, metric, _ in columns:
            result = row["tasks"].get(task) or {}
            entry = (result.get("metrics") or {}).get(metric)
            line.append("skipped" if result.get("status") == "skipped" else format_entry(entry))
        mtl = row.get("mtl")
        for task in tasks:
            if mtl is None:
                line += ["baseline", DASH]
            elif task in mtl["task_deltas"]:
                line += [f"{mtl['task_deltas'][task]:+.2f}", significance_label(mtl, task)]
            else:
                line += ["n/a", "n/a"]
        if not deltas:
            pass
        elif mtl is None:
            line += ["baseline", DASH]
        elif mtl["delta_m"] is None:
            line += [DASH, "n/a"]
        else:
            line += [f"{mtl['delta_m']:+.2f}", significance_label(mtl, "delta_m")]
        cells.append(line)
    return header, cells


def text_table(rows: Sequence[Mapping[str, Any]], deltas: bool = True) -> str:
    return format_table(*table(rows, deltas))


def picture_lines(pictures: Mapping[str, str] | None) -> list[str]:
    """A report's "Pictures" part: each picture linked as ``![alt](path)`` (nothing without pictures)."""
    if not pictures:
        return []
    out = ["## Pictures", ""]
    for alt, path in pictures.items():
        out += [f"![{alt}]({path})", ""]
    return out


def skipped_lines(notes: list[str]) -> list[str]:
    """A report's "Skipped" part from its note lines (nothing without notes)."""
    return ["## Skipped", "", *notes, ""] if notes else []


def skipped_task_notes(rows: Sequence[Mapping[str, Any]], label: Callable[[Mapping[str, Any]], str]) -> list[str]:
    """One note per skipped task of each row: ``- <label(row)>: `task` skipped: reason``."""
    return [
        f"- {label(row)}: `{task}` skipped: {result.get('reason', '')}"
        for row in rows
        for task, result in row["tasks"].items()
        if result.get("status") == "skipped"
    ]


def markdown_lines(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines (``|`` inside a cell escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    return lines


def markdown_table(rows: Sequence[Mapping[str, Any]], deltas: bool = True) -> str:
    return "\n".join(markdown_lines(*table(rows, deltas)))


def markdown_report(
    rows: Sequence[Mapping[str, Any]],
    baseline: str,
    settings: Mapping[str, Any],
    pictures: Mapping[str, str] | None = None,
) -> str:
    """The MTL report: the table, the pictures (alt text -> path relative to the report,
    linked as ``![alt](path)``), what was left out of Delta_m and why, and the settings."""
    import json

    out = [
        "# MTL gain report",
        "",
        f"Baseline: `{baseline}`. Per metric `delta = 100 * (-1)^lower_is_better * (M - M_B) / M_B`; "
        "δ of a task = mean over its metrics; Δm = mean over tasks. Values are mean ± std over probe seeds. "
        "`sig`: `yes` when |δ| exceeds the seed spread (the larger std of the two runs, in % of the baseline; "
        "averaged like δ), `no` when not, `n/a` without a spread (a single seed).",
        "",
        markdown_table(rows),
        "",
    ]
    out += picture_lines(pictures)
    notes = []
    for row in rows:
        for key, why in ((row.get("mtl") or {}).get("excluded") or {}).items():
            notes.append(f"- `{row['run']}`: `{key}` left out of Δm: {why}")
        for task, result in row["tasks"].items():
            if result.get("status") == "skipped" and row.get("mtl") is None:
                notes.append(f"- baseline `{row['run']}`: `{task}` skipped: {result.get('reason', '')}")
    if notes:
        out += ["## Left out", "", *notes, ""]
    out += ["## Settings", "", "```json", json.dumps(dict(settings), indent=2, default=str), "```", ""]
    return "\n".join(out)


def markdown_compare_report(
    rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], pictures: Mapping[str, str] | None = None
) -> str:
    """The ``eval compare`` report: the runs' metrics side by side (mean ± std over probe seeds),
    the pictures, the skipped tasks and the settings."""
    import json

    out = [
        "# Comparison",
        "",
        "Each run's metrics on the same eval settings (the first run's); mean ± std over probe seeds.",
        "",
        markdown_table(rows, deltas=False),
        "",
    ]
    out += picture_lines(pictures)
    out += skipped_lines(skipped_task_notes(rows, lambda row: f"`{row['run']}`"))
    out += ["## Settings", "", "```json", json.dumps(dict(settings), indent=2, default=str), "```", ""]
    return "\n".join(out)

"""MTL gain of a run against a baseline run (FeatSharp eq. 8-9, after Maninis et al. 2019).

Per metric: ``delta = 100 * (-1)^{lower_is_better} * (M - M_B) / M_B`` (in %, positive =
better than the baseline). A task with several metrics (segmentation: mIoU and small-
object mIoU) gets the mean of its metrics' deltas, so every task weighs the same;
``Delta_m`` is the mean over tasks. Tasks skipped in either run, metrics missing from
either run, and metrics whose baseline value is 0 or not finite are left out and
listed in ``excluded`` with the reason.

Significance: the seed spread of a metric is the larger std of the two runs, in % of the
baseline value (``100 * max(std, std_B) / |M_B|``, the scale of its delta); a task's spread
is the mean of its metrics' spreads and Delta_m's the mean of the tasks' (the same averaging
as the deltas). A delta is significant when ``|delta| > spread`` (a real gain, or a real loss
when negative). The spread is unknown (``None``, significance ``None``) when either run has
no std, a non-finite one, or fewer than two seed values.

Inputs are plain dicts, task name -> task result as stored in ``metrics.json``::

    {"semseg": {"status": "ok", "metrics": {"miou": {"mean": 0.4, "higher_is_better": true}}},
     "zeroshot": {"status": "skipped", "reason": "..."}}

A metric entry may also be a bare number when ``higher_is_better`` comes from the
baseline's entry.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any


def metric_delta(value: float, baseline: float, higher_is_better: bool) -> float:
    """``100 * (-1)^{lower_is_better} * (value - baseline) / baseline``.

    The ratio is taken over ``|baseline|`` so that "better" stays positive for a negative
    baseline (e.g. an unbiased MMD estimate). Raises ValueError for a 0 or non-finite baseline.
    """
    if not math.isfinite(baseline) or baseline == 0:
        raise ValueError(f"baseline value {baseline} gives no relative change")
    sign = 1.0 if higher_is_better else -1.0
    return 100.0 * sign * (value - baseline) / abs(baseline)


def _value(entry: Any) -> float:
    return float(entry["mean"] if isinstance(entry, Mapping) else entry)


def _std(entry: Any) -> float | None:
    """The seed std of a metric entry, or None when it cannot be judged (see module doc)."""
    if not isinstance(entry, Mapping) or entry.get("std") is None:
        return None
    std = float(entry["std"])
    values = entry.get("values")
    if not math.isfinite(std) or (values is not None and len(values) < 2):
        return None
    return std


def metric_spread(run_entry: Any, base_entry: Any) -> float | None:
    """``100 * max(std_run, std_baseline) / |baseline mean|``, or None (see module doc)."""
    stds = [_std(run_entry), _std(base_entry)]
    ref = _value(base_entry)
    if None in stds or not math.isfinite(ref) or ref == 0:
        return None
    return 100.0 * max(stds) / abs(ref)


def is_significant(delta: float | None, spread: float | None) -> bool | None:
    """``|delta| > spread``; None when either is unknown."""
    if delta is None or spread is None or not math.isfinite(spread):
        return None
    return abs(delta) > spread


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if values and len(known) == len(values) else None


def _status(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return "missing"
    return result.get("status", "ok")


def mtl_gain(run: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Deltas of ``run`` against ``baseline`` (see module doc).

    Returns ``{"metric_deltas": {"task/metric": %}, "task_deltas": {task: %},
    "delta_m": % or None (no comparable task), "excluded": {"task" or "task/metric": reason},
    "metric_spreads" / "task_spreads": {key: % or None}, "delta_m_spread": % or None,
    "significant": {task: bool or None, ..., "delta_m": bool or None}}``.
    """
    metric_deltas: dict[str, float] = {}
    task_deltas: dict[str, float] = {}
    metric_spreads: dict[str, float | None] = {}
    task_spreads: dict[str, float | None] = {}
    excluded: dict[str, str] = {}
    for task in sorted(set(run) | set(baseline)):
        ours, base = run.get(task), baseline.get(task)
        states = {"run": _status(ours), "baseline": _status(base)}
        bad = {who: s for who, s in states.items() if s != "ok"}
        if (
            bad
            and len(bad) == 2
            and states["run"] == states["baseline"]
            and (ours or {}).get("reason") == (base or {}).get("reason")
        ):
            why = (ours or {}).get("reason", "")
            excluded[task] = f"{states['run']} in both runs" + (f" ({why})" if why else "")
            continue
        if bad:
            reasons = []
            for who, state in bad.items():
                result = ours if who == "run" else base
                why = (result or {}).get("reason", "")
                reasons.append(f"{state} in the {who}" + (f" ({why})" if why else ""))
            excluded[task] = "; ".join(reasons)
            continue
        deltas = []
        spreads: list[float | None] = []
        for name, base_entry in base.get("metrics", {}).items():
            key = f"{task}/{name}"
            run_entry = ours.get("metrics", {}).get(name)
            if run_entry is None:
                excluded[key] = "missing in the run"
                continue
            hib = base_entry.get("higher_is_better") if isinstance(base_entry, Mapping) else None
            if hib is None and isinstance(run_entry, Mapping):
                hib = run_entry.get("higher_is_better")
            if hib is None:
                raise ValueError(f"{key}: no higher_is_better in either result")
            value, ref = _value(run_entry), _value(base_entry)
            try:
                delta = metric_delta(value, ref, bool(hib))
            except ValueError as err:
                excluded[key] = str(err)
                continue
            if not math.isfinite(delta):
                excluded[key] = f"run value {value} gives no finite change"
                continue
            metric_deltas[key] = delta
            deltas.append(delta)
            metric_spreads[key] = metric_spread(run_entry, base_entry)
            spreads.append(metric_spreads[key])
        for name in ours.get("metrics", {}):
            if name not in base.get("metrics", {}):
                excluded[f"{task}/{name}"] = "missing in the baseline"
        if deltas:
            task_deltas[task] = statistics.fmean(deltas)
            task_spreads[task] = _mean_or_none(spreads)
    delta_m = statistics.fmean(task_deltas.values()) if task_deltas else None
    delta_m_spread = _mean_or_none(list(task_spreads.values()))
    significant = {task: is_significant(d, task_spreads[task]) for task, d in task_deltas.items()}
    significant["delta_m"] = is_significant(delta_m, delta_m_spread)
    return {
        "metric_deltas": metric_deltas,
        "task_deltas": task_deltas,
        "delta_m": delta_m,
        "excluded": excluded,
        "metric_spreads": metric_spreads,
        "task_spreads": task_spreads,
        "delta_m_spread": delta_m_spread,
        "significant": significant,
    }

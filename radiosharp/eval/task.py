"""What an eval task is, and the plain-dict results it produces.

A task is built by its registered builder (``radiosharp.registry.TASKS``; the builder's
keyword arguments are the task's options) and exposes ``metrics`` (metric name ->
``higher_is_better``) and ``run(context) -> dict``. Results are plain JSON-able dicts
so they can be cached in ``RUN/eval/metrics.json`` and compared by ``mtl.py``::

    {"status": "ok", "metrics": {"miou": {"mean": 0.41, "std": 0.01, "values": [...],
                                          "higher_is_better": true}, ...}}
    {"status": "skipped", "reason": "the featurizer has no text tower"}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn


class TaskSkipped(Exception):
    """Raised by a task that cannot run on this featurizer/data; the message is the reason."""


@dataclass
class EvalContext:
    """Everything a task needs: the frozen featurizer, its feature cache and default data.

    ``run_kind`` is the export kind of the run ("student", "upsampler", ...);
    ``default_data`` / ``default_val_data`` are used when a task has no ``data`` option.
    """

    featurizer: nn.Module
    features: Any  # radiosharp.eval.features.FeatureStore
    default_data: dict[str, Any]
    default_val_data: dict[str, Any] | None
    run_kind: str = "student"
    device: str = "cpu"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class EvalTask:
    """Base class: set ``name`` and ``metrics``, implement ``evaluate``."""

    name: str = "task"
    metrics: dict[str, bool] = {}

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        """Return metric name -> one value per seed. Raise TaskSkipped to skip."""
        raise NotImplementedError

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        try:
            values = self.evaluate(ctx)
        except TaskSkipped as why:
            return skipped(str(why))
        return summarize(values, self.metrics)


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def summarize(values: Mapping[str, Sequence[float]], directions: Mapping[str, bool]) -> dict[str, Any]:
    """Per-seed values -> {"status": "ok", "metrics": {name: {mean, std, values, higher_is_better}}}.

    ``std`` is the sample standard deviation over seeds (0 for a single value, NaN when a
    value is not finite, e.g. mIoU of small objects on data without any).
    """
    metrics = {}
    for name, vals in values.items():
        vals = [float(v) for v in vals]
        mean = statistics.fmean(vals)
        if not all(map(math.isfinite, vals)):
            std = float("nan")
        elif len(vals) > 1:
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        else:
            std = 0.0
        metrics[name] = {"mean": mean, "std": std, "values": vals, "higher_is_better": bool(directions[name])}
    return {"status": "ok", "metrics": metrics}


def over_seeds(seeds: int, fn: Callable[[int], Mapping[str, float]]) -> dict[str, list[float]]:
    """Call ``fn(seed)`` for seed = 0..seeds-1 and gather each metric into a list."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out: dict[str, list[float]] = {}
    for seed in range(seeds):
        for name, value in fn(seed).items():
            out.setdefault(name, []).append(float(value))
    return out

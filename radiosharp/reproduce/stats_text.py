"""Mean ± spread over seeds, written the same way in every table."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def fmt(values: Sequence[float] | float, digits: int = 4) -> str:
    """``mean ± std`` with ``digits`` significant digits (one value: just the value)."""
    if isinstance(values, (int, float)):
        values = [values]
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}g}"
    return text if std is None else f"{text} ± {std:.2g}"

"""Plain-text tables with aligned columns (numbers right-aligned, text left-aligned)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, floats with ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows of values under ``headers``, columns padded to their widest cell."""
    text = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) if rows else False
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in text)])


Column = tuple[str, str | Callable[[Mapping[str, Any]], Any]]  # (header, key or record -> value)


def record_table(records: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """:func:`format_table` of one row per record: each column is ``(header, key)`` or ``(header, record -> value)``."""
    rows = [[get(r) if callable(get) else r[get] for _, get in columns] for r in records]
    return format_table([header for header, _ in columns], rows)


def milliseconds(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    """A column reading seconds at ``key`` as milliseconds (None stays None)."""
    return lambda r: None if r[key] is None else r[key] * 1e3


def with_ratios(
    ratio_header: str, measures: Sequence[tuple[str, str | Callable[[Mapping[str, Any]], Any], str]]
) -> list[Column]:
    """Each measure ``(header, key or record -> value, ratio key)`` as two columns: the measure, then its
    ratio to the table's reference under ``ratio_header`` (``x teacher``, ``x bil``)."""
    return [column for header, get, ratio in measures for column in ((header, get), (ratio_header, ratio))]

"""Upsampler mode: one teacher, several upsamplers, a grid of input sizes x factors, the probes.

    python -m radiosharp.eval upsample --teacher dinov2 --upsampler bilinear --upsampler runs/featsharp_2x \\
        --factors 1 2 4 --input-sizes 224 448 --tasks semseg --out runs/upsample_eval

Each cell (upsampler, input size ``s``, factor ``u``) evaluates the featurizer
``UpsampledTeacher(teacher, upsampler)`` on images of side ``u * s``: the teacher sees the
image at ``s`` (its global view), the upsampler brings its features to ``u x`` the teacher's
grid, guided by the ``u * s`` image. Factor 1 is the teacher alone at ``s`` (one cell per
input size, drawn as the first point of every line). A training-free upsampler (bilinear,
tiles, s2, ...) runs at every factor; an exported upsampler run only at the factor it was
trained for (it must have been trained for this teacher), at every input size. This is the
FeatSharp paper's figure 7 (mIoU vs upsampling factor, input 1x / 2x) as one command.

The data of every cell is read at one side, ``max(data size, largest input size)``, so
every cell is scored against the same masks / depth maps. Results go to
``OUT/upsample.json`` (cells reused on the next call when their spec, settings and, for a
run, its export are unchanged; ``--force`` recomputes), a Markdown report
``OUT/upsample_report.md`` and one PNG per metric, ``OUT/<task>_<metric>_vs_factor.png``
(a line per upsampler and input size, mean ± std over probe seeds), linked from it.
Every spec is checked before a model is built; problems are one-line EvalErrors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from radiosharp.eval.features import FeatureStore
from radiosharp.eval.settings import EvalError, EvalSettings, resolved_options
from radiosharp.eval.task import EvalContext
from radiosharp.export import atomic_write_bytes

log = logging.getLogger(__name__)

RESULTS_FILE = "upsample.json"
REPORT_FILE = "upsample_report.md"
TEACHER = "teacher"  # the method name of the factor-1 cells


@dataclass(frozen=True)
class Method:
    """An upsampler of the grid: a training-free name (any factor) or a run folder (its own factor)."""

    name: str
    spec: str
    run: str | None = None
    factor: int | None = None  # a run's trained factor

    def factors(self, wanted: Sequence[int]) -> list[int]:
        return [u for u in wanted if u > 1 and (self.factor is None or u == self.factor)]


@dataclass(frozen=True)
class Cell:
    method: Method | None  # None: the teacher alone (factor 1)
    input_size: int
    factor: int

    @property
    def method_name(self) -> str:
        return TEACHER if self.method is None else self.method.name

    @property
    def key(self) -> str:
        return f"{self.method_name}|{self.input_size}|{self.factor}"

    @property
    def image_size(self) -> int:
        return self.input_size * self.factor


def check_methods(specs: Sequence[str], teacher_cfg: Mapping[str, Any], factors: Sequence[int]) -> list[Method]:
    """Every ``--upsampler`` spec checked (names training-free, runs trained for this teacher at
    one of ``factors``) before any model is built; EvalError naming the problem."""
    from radiosharp.registry import UPSAMPLERS
    from radiosharp.specs import SpecError, run_config, run_spec, same_teacher, training_free

    free = training_free()
    methods: list[Method] = []
    for spec in specs:
        run = run_spec(spec)
        if run is not None:
            try:
                cfg = run_config(run)
            except SpecError as err:
                raise EvalError(str(err)) from None
            trained_for = cfg.get("teacher")
            if trained_for and not same_teacher(trained_for, teacher_cfg):
                raise EvalError(
                    f"--upsampler {spec} was trained for teacher {dict(trained_for)}, but --teacher is "
                    f"{dict(teacher_cfg)}"
                )
            factor = int(cfg["factor"])
            if factor not in factors:
                raise EvalError(
                    f"--upsampler {spec} was trained at {factor}x, which --factors {' '.join(map(str, factors))} "
                    f"leaves out; add {factor}"
                )
            name = f"{Path(run).name} ({cfg.get('upsampler', {}).get('name', '?')})"
            methods.append(Method(name, spec, run, factor))
        elif spec in free:
            methods.append(Method(spec, spec))
        elif spec in UPSAMPLERS:
            raise EvalError(
                f"--upsampler {spec} must be trained first; give its run folder, or a training-free name: "
                f"{', '.join(free)}"
            )
        else:
            raise EvalError(
                f"--upsampler '{spec}' is neither a run folder nor a training-free name ({', '.join(free)})"
            )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise EvalError(f"--upsampler: the same upsampler is given twice ({', '.join(names)})")
    return methods


def plan_cells(
    methods: Sequence[Method],
    input_sizes: Sequence[int],
    factors: Sequence[int],
    teacher_sizes: Sequence[int] | None = None,
) -> list[Cell]:
    """The teacher at every input size (when 1 is among ``factors``) and at ``teacher_sizes``
    (e.g. ``u x`` the input: the hi-res reference of figure 7), then each method's cells."""
    if not factors or any(u < 1 for u in factors):
        raise EvalError(f"--factors must be integers >= 1, got {list(factors)}")
    if not input_sizes or any(s < 1 for s in input_sizes):
        raise EvalError(f"--input-sizes must be integers >= 1, got {list(input_sizes)}")
    if teacher_sizes is not None and any(s < 1 for s in teacher_sizes):
        raise EvalError(f"--teacher-sizes must be integers >= 1, got {list(teacher_sizes)}")
    alone = list(input_sizes) if 1 in factors else []
    alone += [s for s in teacher_sizes or () if s not in alone]
    cells = [Cell(None, s, 1) for s in alone]
    for method in methods:
        cells += [Cell(method, s, u) for s in input_sizes for u in method.factors(factors)]
    if not cells:
        raise EvalError("nothing to evaluate: give factor 1 or an upsampler with a factor > 1")
    return cells


def check_input_sizes(input_sizes: Sequence[int], patch_size: int) -> None:
    bad = [s for s in input_sizes if s % patch_size]
    if bad:
        raise EvalError(
            f"--input-sizes {' '.join(map(str, bad))}: the teacher's patch is {patch_size} px; give multiples of it "
            f"(e.g. {', '.join(str(max(1, round(s / patch_size)) * patch_size) for s in bad)})"
        )


def cell_featurizer(cell: Cell, teacher: nn.Module) -> nn.Module:
    """The teacher itself (factor 1), or the teacher wrapped with the cell's upsampler."""
    from radiosharp.builders import build_upsampler
    from radiosharp.upsampled import UpsampledTeacher, load_upsampled_teacher

    if cell.method is None:
        return teacher
    if cell.method.run is not None:
        return load_upsampled_teacher(cell.method.run, teacher=teacher)
    upsampler = build_upsampler(
        cell.method.spec, "--upsampler", factor=cell.factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
    )
    return UpsampledTeacher(teacher, upsampler)


def _fingerprint(cell: Cell) -> Any:
    if cell.method is None or cell.method.run is None:
        return None
    from radiosharp.eval.runs import export_fingerprint

    return export_fingerprint(Path(cell.method.run))


def evaluate_grid(
    teacher: nn.Module,
    teacher_cfg: Mapping[str, Any],
    cells: Sequence[Cell],
    settings: EvalSettings,
    tasks: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per cell: ``{"method", "input_size", "factor", "image_size", "seconds", "tasks": {name: result}}``;
    written to ``OUT/upsample.json`` after every cell (an interrupted grid resumes where it stopped)."""
    import radiosharp.registry as registry

    out_dir = Path(out_dir)
    path = out_dir / RESULTS_FILE
    data = dict(settings.data)
    side = max([int(data.get("size") or 0), *(c.input_size for c in cells)])
    data = at_side(data, side)
    val_data = at_side(settings.val_data, side) if settings.val_data is not None else None
    context = {
        "teacher": dict(teacher_cfg),
        "settings": {k: v for k, v in settings.context().items() if k != "image_size"},
        "data": data,
        "val_data": val_data,
    }
    context = json.loads(json.dumps(context, default=str))
    previous: dict[str, Any] = {}
    if path.is_file() and not force:
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = {}
        if stored.get("context") == context:
            previous = {row["key"]: row for row in stored.get("cells", [])}
    teacher = teacher.to(device).eval()
    rows: list[dict[str, Any]] = []
    options = {name: resolved_options(name, dict(opts)) for name, opts in tasks.items()}
    bar = tqdm(total=len(cells) * len(tasks), desc="upsample eval", unit="task", disable=None if progress else True)
    with bar:
        for cell in cells:
            fingerprint = _fingerprint(cell)
            row = previous.get(cell.key)
            if row is not None and row.get("options") == options and row.get("export") == fingerprint:
                rows.append(row)
                bar.update(len(tasks))
                continue
            start = time.perf_counter()
            featurizer = cell_featurizer(cell, teacher).to(device).eval()
            store = FeatureStore(featurizer, cell.image_size, settings.batch_size, device, progress=False)
            kind = "teacher" if cell.method is None else "upsampler"
            ctx = EvalContext(featurizer, store, data, val_data, kind, device, False)
            results: dict[str, Any] = {}
            for name, opts in tasks.items():
                bar.set_postfix_str(f"{cell.method_name} {cell.input_size}px {cell.factor}x: {name}")
                task = registry.TASKS.build(name, f"eval.tasks.{name}", **opts)
                task_start = time.perf_counter()
                results[name] = {**task.run(ctx), "seconds": round(time.perf_counter() - task_start, 3)}
                bar.update(1)
            rows.append(
                {
                    "key": cell.key,
                    "method": cell.method_name,
                    "spec": None if cell.method is None else cell.method.spec,
                    "input_size": cell.input_size,
                    "factor": cell.factor,
                    "image_size": cell.image_size,
                    "export": fingerprint,
                    "options": options,
                    "seconds": round(time.perf_counter() - start, 3),
                    "tasks": results,
                }
            )
            record = {"context": context, "cells": rows + [r for k, r in previous.items() if k not in _keys(rows)]}
            atomic_write_bytes(path, json.dumps(record, indent=2, allow_nan=True).encode())
    return rows


def at_side(data: Mapping[str, Any], side: int) -> dict[str, Any]:
    """``data`` read at ``side`` px when its source takes a ``size`` option (every cell then scores
    against the same targets); a source without one is left as it is."""
    from radiosharp.registry import DATASETS

    out = dict(data)
    if "size" in DATASETS.options(str(out.get("source"))):
        out["size"] = side
    return out


def _keys(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    return {row["key"] for row in rows}


def factor_rows(rows: Sequence[Mapping[str, Any]], task: str, metric: str) -> list[dict[str, Any]]:
    """Rows for :func:`radiosharp.eval.plots.metric_vs_factor_figure`: one line per (upsampler, input
    size), the teacher's factor-1 value at that input size as every line's first point."""

    def values(row: Mapping[str, Any]) -> list[float] | None:
        result = row["tasks"].get(task) or {}
        entry = (result.get("metrics") or {}).get(metric)
        return None if entry is None else list(entry.get("values") or [entry["mean"]])

    sizes = sorted({int(r["input_size"]) for r in rows if r["method"] != TEACHER})
    teacher = {int(r["input_size"]): values(r) for r in rows if r["method"] == TEACHER}
    out = []
    base = sizes[0] if sizes else min(teacher, default=0)
    # the hi-res reference: the teacher run on k x the (smallest) input, drawn at factor k
    reference = {s // base: v for s, v in teacher.items() if base and s % base == 0 and s > base and v}
    if reference and teacher.get(base):
        label = f"{TEACHER} at factor x input" + (f" ({base}px)" if len(sizes) > 1 else "")
        out.append({"method": label, "factor": 1, metric: teacher[base]})
        out += [{"method": label, "factor": k, metric: v} for k, v in sorted(reference.items())]
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != TEACHER):
        for size in sizes:
            label = f"{method}, input {size}px" if len(sizes) > 1 else method
            mine = [r for r in rows if r["method"] == method and int(r["input_size"]) == size]
            if not mine:
                continue
            if teacher.get(size) is not None:
                out.append({"method": label, "factor": 1, metric: teacher[size]})
            out += [{"method": label, "factor": int(r["factor"]), metric: v} for r in mine if (v := values(r))]
    if not out:  # only the teacher at unrelated sizes: no line; show its points
        out = [{"method": f"{TEACHER}, input {s}px", "factor": 1, metric: v} for s, v in teacher.items() if v]
    return out


def metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for row in rows:
        for task, result in row["tasks"].items():
            for metric in (result.get("metrics") or {}) if result.get("status", "ok") == "ok" else ():
                seen[(task, metric)] = None
    return list(seen)


def write_pictures(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """``OUT/<task>_<metric>_vs_factor.png`` for every metric; alt text -> path."""
    from radiosharp.eval.plots import metric_vs_factor_plot

    out_dir = Path(out_dir)
    pictures: dict[str, Path] = {}
    for task, metric in metric_keys(rows):
        plot_rows = factor_rows(rows, task, metric)
        if not plot_rows:
            continue
        path = out_dir / f"{task}_{metric.replace('@', '_at_').replace('/', '_')}_vs_factor.png"
        metric_vs_factor_plot(plot_rows, metric, path, title=f"{task} {metric} vs upsampling factor", ylabel=metric)
        pictures[f"{task} {metric} vs factor"] = path
    return pictures


def grid_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one row per cell, one column per task metric (mean ± std), then seconds."""
    from radiosharp.eval.report import format_entry

    keys = metric_keys(rows)
    header = ["upsampler", "input px", "factor"] + [f"{t}/{m}" for t, m in keys] + ["seconds"]
    cells = []
    for row in rows:
        line = [str(row["method"]), str(row["input_size"]), f"{row['factor']}x"]
        for task, metric in keys:
            result = row["tasks"].get(task) or {}
            if result.get("status") == "skipped":
                line.append("skipped")
                continue
            line.append(format_entry((result.get("metrics") or {}).get(metric)))
        line.append(f"{row['seconds']:.1f}")
        cells.append(line)
    return header, cells


def markdown_grid_report(
    rows: Sequence[Mapping[str, Any]], teacher_cfg: Mapping[str, Any], pictures: Mapping[str, str], command: str
) -> str:
    from radiosharp.eval.report import markdown_lines, picture_lines, skipped_lines, skipped_task_notes

    header, cells = grid_table(rows)
    out = [
        "# Upsampler mode",
        "",
        f"Teacher `{dict(teacher_cfg)}`. Each row: the upsampler at `factor` on the teacher's features of the "
        "image at `input px` (the upsampler guided by the image at factor x input px); factor 1 is the teacher "
        "alone. Values are mean ± std over probe seeds.",
        "",
        f"Command: `{command}`",
        "",
        *markdown_lines(header, cells),
        "",
    ]
    out += picture_lines(pictures)
    skipped = skipped_task_notes(rows, lambda r: f"`{r['method']}` {r['input_size']} px {r['factor']}x")
    return "\n".join(out + skipped_lines(skipped))

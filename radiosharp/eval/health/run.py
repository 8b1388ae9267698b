"""The run-folder side of eval health: the recorded teachers built, the checks run, ``health.json`` and the
pictures written; and the table the CLI prints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from radiosharp.eval.health.checks import BACKBONE, DEFAULT_SIZES, PIXELS, check_sizes, student_health
from radiosharp.eval.health.figures import write_pictures
from radiosharp.eval.health.sources import (
    DEFAULT_IMAGES,
    build_recorded_teachers,
    image_source,
    recorded_teacher_configs,
    teacher_recipe_upsamplers,
)
from radiosharp.eval.health.stats import OUTLIER_K
from radiosharp.eval.settings import EvalError

HEALTH_FILE = "health.json"


def run_health(
    run_dir: str | Path,
    student: nn.Module,
    teacher_names: Sequence[str] | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    images: int = DEFAULT_IMAGES,
    data: str = "photos",
    out: str | Path | None = None,
    device: str = "cpu",
    k: float = OUTLIER_K,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The health checks of the run's exported ``student``; writes the JSON and the pictures.

    Returns (report, picture name -> path). ``out`` defaults to ``RUN/eval``.
    """
    heads = list(getattr(student, "teacher_names", None) or [])
    if teacher_names:
        unknown = [n for n in teacher_names if n not in heads]
        if unknown:
            raise EvalError(
                f"health: --teacher {', '.join(unknown)}: the student has no such head; "
                f"its teachers: {', '.join(heads) or '(none)'}"
            )
        heads = list(dict.fromkeys(teacher_names))
    sizes = check_sizes(sizes, getattr(student, "patch_size", None))
    source = image_source(data, images)
    out = Path(out) if out is not None else Path(run_dir) / "eval"
    if out.exists() and not out.is_dir():
        raise EvalError(f"health: --out {out} is a file; give a folder")
    configs, origin = recorded_teacher_configs(student, run_dir)
    if configs:
        teachers, skipped = build_recorded_teachers(configs, heads)
    else:
        teachers = {}
        skipped = {
            n: "the run records no teacher configs (model.json teacher_configs, recipe.yaml teachers)" for n in heads
        }
    report, arrays = student_health(student, teachers, source, sizes, heads, k, device=device, skipped=skipped)
    report = {
        "run": str(run_dir),
        "data": data,
        "teacher_configs": {"from": origin, "configs": {n: configs[n] for n in heads if n in configs}},
        "recipe_upsamplers": teacher_recipe_upsamplers(run_dir),
        **report,
    }
    out.mkdir(parents=True, exist_ok=True)
    pictures = write_pictures(report, arrays, out)
    report["pictures"] = {name: path.name for name, path in pictures.items()}
    (out / HEALTH_FILE).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return report, pictures


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def health_table(report: Mapping[str, Any]) -> str:
    """One row per size: grid, outliers, backbone seam ratios, nMSE vs teacher / vs low-res per teacher."""
    curves = report["mode_switch"]["curves"]
    tile_counts = report["seams"]["tile_counts"]
    header = ["size", "grid", "outliers %", "max norm x"]
    header += [f"seam t={t} (map/px)" for t in tile_counts]
    for name in curves:
        header += [f"{name} vs teacher", f"{name} vs low-res"]
    rows = []
    for size in report["sizes"]:
        key = str(size)
        grid = report["grids"].get(key)
        out = report["outliers"]["per_size"].get(key)
        seams = report["seams"]["per_size"].get(key, {})
        seam = seams.get(BACKBONE) or next(iter(seams.values()), {})
        row = [key, "x".join(map(str, grid)) if grid else "-"]
        row += [_fmt(100 * out["fraction"], ".2f"), _fmt(out["max_norm_ratio"], ".2f")] if out else ["-", "-"]
        pixels = seams.get(PIXELS, {})
        row += [f"{_fmt(seam.get(str(t)), '.2f')}/{_fmt(pixels.get(str(t)), '.2f')}" for t in tile_counts]
        for curve in curves.values():
            if size in curve["sizes"]:
                j = curve["sizes"].index(size)
                row += [_fmt(curve["nmse_teacher"][j]), _fmt(curve["nmse_low_res"][j])]
            else:
                row += ["-", "-"]
        rows.append(row)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    on = BACKBONE if any(BACKBONE in row for row in report["seams"]["per_size"].values()) else "features"
    notes = [
        f"nMSE = MSE / teacher feature variance; seam ratios of the {on} / of the pooled input pixels "
        "(content alone; a seam shows as map >> px)"
    ]
    for name, reason in report["mode_switch"]["skipped"].items():
        notes.append(f"mode switching skipped for {name}: {reason}")
    return "\n".join(lines + [""] + notes)

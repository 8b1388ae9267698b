"""The protocols section: the eval suite's dense probes on each upsampler, through ``eval upsample``.

One command of the project's own CLI (``python -m radiosharp.eval upsample``, the upsampler
mode) scores the real teacher alone at input 1x / 2x and with each upsampler at input 1x and
factors 2 / 4 on the synthetic benchmark: linear-probe segmentation (mIoU), Probe3D-style
binned depth (RMSE, AbsRel, delta1) and surface normals (angular RMSE, % within 11.25 degrees), and keypoint
correspondence (PCK@0.1 on known warps). Training-free upsamplers run at every factor; the
trained ones (the plan's seed-0 runs) at the factor they were trained for.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml

from radiosharp.reproduce.plan import LABELS, Plan
from radiosharp.reproduce.runs import upsampler_run
from radiosharp.reproduce.stats_text import fmt

FREE = ("bilinear",)  # the training-free reference (tiles and S2 are in the semseg section)
TRAINED = ("featup", "featsharp")
TASKS = ("semseg", "depth", "normals", "keypoints")
# the columns of the page: (task, metric, label)
COLUMNS = (
    ("semseg", "miou", "mIoU ↑"),
    ("depth", "rmse", "depth RMSE ↓"),
    ("depth", "absrel", "AbsRel ↓"),
    ("depth", "delta1", "δ1 ↑"),
    ("normals", "angular_rmse", "normals RMSE° ↓"),
    ("normals", "within_11_25", "< 11.25° % ↑"),
    ("keypoints", "pck@0.1", "PCK@0.1 ↑"),
)
PICTURES = ("semseg_miou_vs_factor.png", "normals_angular_rmse_vs_factor.png", "keypoints_pck_at_0.1_vs_factor.png")


def protocol_settings(plan: Plan) -> dict[str, Any]:
    n_train, n_val = plan.semseg_images
    probe = {"steps": plan.semseg_steps, "seeds": plan.semseg_seeds}
    side = 2 * plan.native_size
    return {
        "tasks": {
            "semseg": dict(probe),
            "depth": dict(probe),
            "normals": dict(probe),
            "keypoints": {"data": {"source": "synthetic_pairs", "num_pairs": n_val, "size": side, "seed": 0}},
        },
        "data": {"source": "synthetic", "num_images": n_train, "size": side, "seed": 0},
        "val_data": {"source": "synthetic", "num_images": n_val, "size": side, "seed": 1},
        "batch_size": 8,
    }


def protocols_section(plan: Plan) -> dict[str, Any]:
    from radiosharp.eval.cli import main as eval_main

    out = plan.out / "protocols"
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "settings.yaml"
    settings.write_text(yaml.safe_dump({"eval": protocol_settings(plan)}, sort_keys=False))
    method_of = {
        str(upsampler_run(plan, method, factor, plan.seeds[0])): method for method in TRAINED for factor in plan.factors
    }
    runs = list(method_of)
    factors = sorted({1, *plan.factors})
    # upsamplers at the teacher's native input; the teacher alone also at k x (the hi-res reference)
    inputs = sorted({k * plan.native_size for k in plan.semseg_teacher_inputs})
    argv = ["upsample", "--teacher", runs[0], "--upsampler", *FREE, *runs]
    argv += ["--factors", *map(str, factors), "--input-sizes", str(plan.native_size)]
    argv += ["--teacher-sizes", *map(str, inputs)]
    argv += ["--tasks", *TASKS, "--settings", str(settings), "--out", str(out / "grid"), "--no-progress"]
    code = eval_main(argv)
    if code:
        raise RuntimeError(f"eval upsample failed with exit code {code}")
    stored = json.loads((out / "grid" / "upsample.json").read_text())
    rows = [_row(cell, method_of) for cell in stored["cells"]]
    order = {name: i for i, name in enumerate(["teacher", *FREE, *TRAINED])}
    rows.sort(key=lambda r: (r["input_size"], r["factor"], order.get(r["kind"], 99)))
    return {
        "rows": rows,
        "command": "python -m radiosharp.eval " + " ".join(argv),
        "images": list(plan.semseg_images),
        "pictures": [str(p) for p in _pictures(out)],
    }


def _pictures(out: Path) -> list[Path]:
    """The grid's plots under names of their own (the page's figures folder is shared by every section)."""
    kept = []
    for name in PICTURES:
        source = out / "grid" / name
        if source.is_file():
            target = out / f"protocols_{name}"
            shutil.copyfile(source, target)
            kept.append(target)
    return kept


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def protocol_checks(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The paper's figure-7 claims on these numbers: (claim, holds, detail); ``holds`` is None when
    the difference is inside the larger probe-seed std of the two (not shown either way)."""
    rows = {(r["kind"], r["input_size"], r["factor"]): r["metrics"] for r in data["rows"]}
    sizes = sorted({r["input_size"] for r in data["rows"]})
    checks = []

    def compare(claim: str, ours: list[float], theirs: list[float], higher: bool) -> None:
        (a, sa), (b, sb) = _mean_std(ours), _mean_std(theirs)
        detail = f"{a:.4g} vs {b:.4g}"
        if abs(a - b) <= max(sa, sb):
            checks.append((claim, None, detail + ", inside the probe-seed spread"))
        else:
            checks.append((claim, (a > b) == higher, detail))

    metric = "semseg/miou"
    if len(sizes) > 1 and all(("teacher", s, 1) in rows for s in sizes[:2]):
        compare(
            f"the teacher at {sizes[1]} px input probes better than at {sizes[0]} px (mIoU)",
            rows[("teacher", sizes[1], 1)][metric],
            rows[("teacher", sizes[0], 1)][metric],
            True,
        )
    for (kind, size, factor), metrics in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        base = rows.get(("bilinear", size, factor))
        if kind != "featsharp" or base is None or size != sizes[0]:
            continue
        compare(
            f"FeatSharp {factor}x probes better than bilinear {factor}x (mIoU)", metrics[metric], base[metric], True
        )
        normals = "normals/angular_rmse"
        if normals in metrics and normals in base:
            compare(
                f"FeatSharp {factor}x has lower normal error than bilinear {factor}x",
                metrics[normals],
                base[normals],
                False,
            )
    return checks


def _row(cell: dict[str, Any], method_of: dict[str, str]) -> dict[str, Any]:
    spec = cell.get("spec")
    kind = "teacher" if spec is None else method_of.get(spec, spec)
    metrics = {}
    for task, metric, _ in COLUMNS:
        entry = ((cell["tasks"].get(task) or {}).get("metrics") or {}).get(metric)
        if entry is not None:
            metrics[f"{task}/{metric}"] = entry["values"]
    return {"kind": kind, "input_size": cell["input_size"], "factor": cell["factor"], "metrics": metrics}


def protocols_markdown(data: dict[str, Any]) -> str:
    header = "| features | input px | factor | " + " | ".join(label for *_, label in COLUMNS) + " |"
    lines = [f"Grid: `{data['command']}`", "", header, "|" + "---|" * (3 + len(COLUMNS))]
    for row in data["rows"]:
        name = "teacher alone" if row["kind"] == "teacher" else LABELS.get(row["kind"], row["kind"])
        cells = [fmt(row["metrics"][f"{t}/{m}"]) if f"{t}/{m}" in row["metrics"] else "-" for t, m, _ in COLUMNS]
        lines.append(f"| {name} | {row['input_size']} | {row['factor']}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""The student section: stages 1-3 from the real teachers, bilinear vs FeatSharp hi-res targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radiosharp.reproduce.plan import Plan
from radiosharp.reproduce.runs import run_once, stats_file, upsampler_run

STAGES = ("stage1", "stage2")
# the eval suite of the student table: summary (kNN) and every dense probe (radiosharp.eval)
STUDENT_TASKS = ("knn", "semseg", "depth", "normals", "keypoints")


def student_overrides(plan: Plan) -> list[str]:
    """What every student run of the plan overrides in the demo recipes: the teacher's side and the
    PHI-S statistics of both teachers (computed here once)."""
    root = plan.out / "student"
    _vgg_stats(root / "stats", plan)
    return [
        f"teachers.dinov2.native_size={plan.native_size}",
        f"teachers.dinov2.phi_s={stats_file(plan)}",
        f"teachers.vgg_hed.phi_s={root / 'stats' / 'phi_s' / 'vgg_hed.safetensors'}",
    ]


def train_students(plan: Plan) -> dict[str, Path]:
    """The demo stages from the plan's teacher: stage 1, stage 2, and stage 3 twice (bilinear and
    FeatSharp hi-res targets). Finished runs are reused. Returns ``{"stage2": ..., "bilinear": ...,
    "featsharp": ...}`` (the stage-3 runs by their upsampler)."""
    featsharp = upsampler_run(plan, "featsharp", 2, plan.seeds[0])
    bilinear = upsampler_run(plan, "bilinear", 2, plan.seeds[0])
    root = plan.out / "student"
    common = student_overrides(plan)
    previous: Path | None = None
    for stage in STAGES:
        init = [] if previous is None else [f"init_from={previous}"]
        previous, _ = run_once(f"../demo/{stage}.yaml", [f"output_dir={root / stage}", *common, *init])
    assert previous is not None
    runs = {"stage2": previous}
    for name, up in (("bilinear", bilinear), ("featsharp", featsharp)):
        runs[name] = stage3_run(root / ("stage3_" + name), name, previous, up, common)
    return runs


def stage3_run(
    out: Path,
    name: str,
    init: Path,
    upsampler: Path,
    common: Sequence[str],
    seed: int | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """The demo's stage 3 (``stage3_hires.yaml``) in ``out`` as run ``stage3_{name}``: from the student
    ``init``, DINOv2's hi-res targets lifted by the ``upsampler`` run, with the plan's ``common``
    overrides (:func:`student_overrides`), then ``extra``; a finished run is reused."""
    seeded = [] if seed is None else [f"seed={seed}"]
    lifted = [f"init_from={init}", f"teachers.dinov2.upsampler={upsampler}"]
    run, _ = run_once(
        "../demo/stage3_hires.yaml", [f"output_dir={out}", f"name=stage3_{name}", *seeded, *lifted, *common, *extra]
    )
    return run


def student_section(plan: Plan) -> dict[str, Any]:
    """Train the three demo stages with the plan's teacher, stage 3 twice, and compare them by MTL."""
    from radiosharp.eval.cli import main as eval_main

    trained = train_students(plan)
    runs = {name: trained[name] for name in ("bilinear", "featsharp")}
    root = plan.out / "student"
    report = root / "mtl_report.md"
    code = eval_main(
        [
            "mtl",
            str(runs["featsharp"]),
            "--baseline",
            str(runs["bilinear"]),
            "--tasks",
            *STUDENT_TASKS,
            "--json",
            "--report",
            str(report),
            "--no-progress",
        ]
    )
    if code:
        raise RuntimeError(f"eval mtl failed with exit code {code}")
    return _read_mtl(runs, report)


def _vgg_stats(out: Path, plan: Plan) -> None:
    """PHI-S statistics of VGG16-HED on the training photos (once)."""
    from radiosharp.recipe import load_recipe
    from radiosharp.reproduce.runs import RECIPES
    from radiosharp.stats import compute_stats

    if (out / "phi_s" / "vgg_hed.safetensors").is_file():
        return
    recipe = load_recipe(
        RECIPES / "../demo/stats.yaml",
        [f"output_dir={out}", "teachers.dinov2=null", f"stats.num_images={plan.stats_images}"],
    )
    compute_stats(recipe)


def _read_mtl(runs: dict[str, Path], report: Path) -> dict[str, Any]:
    import json

    from radiosharp.eval.mtl import mtl_gain

    metrics = {
        name: {
            task: result
            for task, result in json.loads((run / "eval" / "metrics.json").read_text())["tasks"].items()
            if task in STUDENT_TASKS
        }
        for name, run in runs.items()
    }
    gain = mtl_gain(metrics["featsharp"], metrics["bilinear"])
    return {
        "runs": {k: str(v) for k, v in runs.items()},
        "metrics": metrics,
        "gain": gain,
        "delta_m": gain.get("delta_m") if isinstance(gain, dict) else None,
        "report": str(report),
        "table": _report_table(report),
        "pictures": [str(report.with_name(f"{report.stem}_deltas.png"))],
    }


def _report_table(report: Path) -> str:
    lines = report.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table)


def student_markdown(data: dict[str, Any]) -> str:
    """The table of ``eval mtl``'s report, kept in the section's JSON (the report keeps the settings too)."""
    report = Path(data["report"])
    table = data.get("table")
    if table is None:
        if not report.is_file():
            return f"(the MTL report {report} was not found)"
        table = _report_table(report)
    return table + f"\n\nFull report with the probe settings: `{report}`."

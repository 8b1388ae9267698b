"""Sections that probe or time the upsampled teacher: semseg probe, cost against the hi-res teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radiosharp.reproduce.plan import LABELS, Plan
from radiosharp.reproduce.runs import plan_teacher, upsampler_run
from radiosharp.reproduce.stats_text import fmt


def semseg_scores(featurizer: nn.Module, image_size: int, plan: Plan) -> dict[str, list[float]]:
    """Per-seed mIoU and small-object mIoU of a linear probe on ``featurizer``'s dense maps."""
    from radiosharp.eval.features import FeatureStore
    from radiosharp.eval.task import EvalContext
    from radiosharp.registry import TASKS

    n_train, n_val = plan.semseg_images
    side = max(image_size, 2 * plan.native_size)  # masks at least as fine as every feature map
    train = {"source": "synthetic", "num_images": n_train, "size": side, "seed": 0}
    val = {"source": "synthetic", "num_images": n_val, "size": side, "seed": 1}
    store = FeatureStore(featurizer.eval(), image_size, batch_size=8, progress=False)
    ctx = EvalContext(featurizer, store, train, val, "upsampler", "cpu", False)
    task = TASKS.build("semseg", "reproduce semseg", steps=plan.semseg_steps, seeds=plan.semseg_seeds)
    result = task.run(ctx)
    if result.get("status") != "ok":
        raise RuntimeError(f"semseg probe did not run: {result}")
    return {name: m["values"] for name, m in result["metrics"].items()}


def semseg_section(plan: Plan) -> dict[str, Any]:
    """The probe on each upsampler at each factor (its seed-0 run), and on the teacher at
    1x / kx input. Spread: over probe seeds."""
    from radiosharp.upsampled import load_upsampled_teacher

    teacher = plan_teacher(plan)
    rows = []
    for k in plan.semseg_teacher_inputs:
        grid = k * plan.native_size // teacher.patch_size
        rows.append(
            {
                "features": f"teacher at {k}x input ({grid}x{grid})",
                "kind": "teacher",
                "factor": k,
                **semseg_scores(teacher, k * plan.native_size, plan),
            }
        )
    for factor in plan.semseg_factors:
        for method in plan.methods:
            up = load_upsampled_teacher(upsampler_run(plan, method, factor, plan.seeds[0]), teacher=teacher)
            values = semseg_scores(up, factor * plan.native_size, plan)
            grid = factor * plan.native_size // up.patch_size
            rows.append(
                {
                    "features": f"{LABELS.get(method, method)} {factor}x ({grid}x{grid})",
                    "kind": method,
                    "factor": factor,
                    **values,
                }
            )
    return {"rows": rows, "images": list(plan.semseg_images)}


def semseg_markdown(data: dict[str, Any]) -> str:
    lines = ["| features | mIoU ↑ | small-object mIoU ↑ |", "|---|---|---|"]
    for row in data["rows"]:
        lines.append(f"| {row['features']} | {fmt(row['miou'])} | {fmt(row['miou_small'])} |")
    return "\n".join(lines)


def cost_section(plan: Plan) -> dict[str, Any]:
    """Bilinear, FeatUp and FeatSharp against the teacher run at ``u x`` input, with the real
    DINOv2-S/14 at ``cost_native_size`` (the paper's 448 px), batch 1, float32."""
    from radiosharp.bench.upsample import bench_upsample

    report = bench_upsample(
        plan_teacher(plan, plan.cost_native_size),
        plan.cost_factors,
        ("bilinear", "featup", "featsharp"),
        batch=1,
        warmup=1,
        repeats=plan.cost_repeats,
        train=False,
    )
    return {"report": report, "threads": torch.get_num_threads()}


def cost_markdown(data: dict[str, Any]) -> str:
    report = data["report"]
    lines = [
        "| factor | method | input px | teacher images | time ms | × teacher | peak MiB | × teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ratio = r.get("time_ratio")
        mem = r.get("peak_mb")
        mem_ratio = r.get("mem_ratio")
        lines.append(
            f"| {r['factor']}x | {r['method']} | {r['input_size']} | {r['teacher_images']:g} | "
            f"{1000 * r['time_s']:.0f} | {'' if ratio is None else f'{ratio:.3g}'} | "
            f"{'' if mem is None else f'{mem:.0f}'} | {'' if mem_ratio is None else f'{mem_ratio:.3g}'} |"
        )
    cross = report.get("crossover")
    if cross:
        lines.append("")
        lines.append(f"Crossover: {cross['note']}.")
    return "\n".join(lines)


def upsampler_cost_section(plan: Plan) -> dict[str, Any]:
    """Every registered upsampler alone (teacher excluded), NAF's table: parameters, forward and
    forward+backward time and peak memory per factor, as ratios to bilinear; the real
    DINOv2-S/14's width (384) on a ``upsampler_cost_grid`` patch grid, batch 1, float32."""
    from radiosharp.bench.upsampler_cost import bench_upsampler_cost

    report = bench_upsampler_cost(
        plan_teacher(plan),
        plan.upsampler_cost_factors,
        None,
        batch=1,
        warmup=1,
        repeats=plan.cost_repeats,
        grid=plan.upsampler_cost_grid,
        progress=lambda message: print(f"  {message}", flush=True),
    )
    return {"report": report, "threads": torch.get_num_threads()}


def upsampler_cost_448_section(plan: Plan) -> dict[str, Any]:
    """NAF's table in its own setting (a 448 px input; the widths of ViT-S and ViT-L), with the
    teacher at u x input beside it and the time / memory vs factor plot."""
    from radiosharp.bench.upsampler_cost import bench_upsampler_cost, plot_upsampler_cost
    from radiosharp.builders import build_teacher
    from radiosharp.specs import parse_teacher_spec

    reports = []
    for spec in plan.upsampler_cost_448_teachers:
        teacher = build_teacher(parse_teacher_spec(spec), "upsampler_cost_448_teachers")
        reports.append(
            bench_upsampler_cost(
                teacher,
                plan.upsampler_cost_448_factors,
                None,
                batch=1,
                warmup=1,
                repeats=plan.upsampler_cost_448_repeats,
                grid=teacher.native_size // teacher.patch_size,
                progress=lambda message: print(f"  {message}", flush=True),
                teacher_max_factor=plan.upsampler_cost_448_teacher_max_factor,
            )
        )
        del teacher
    picture = plan.out / "upsampler_cost_448.png"
    plot_upsampler_cost(reports, str(picture))
    return {"reports": reports, "threads": torch.get_num_threads(), "pictures": [str(picture)]}


def upsampler_cost_448_markdown(data: dict[str, Any]) -> str:
    from radiosharp.bench.upsampler_cost import upsampler_cost_markdown as table
    from radiosharp.bench.upsampler_cost import upsampler_cost_teacher_markdown

    parts = []
    for report in data["reports"]:
        parts.append(table(report))
        ratios = upsampler_cost_teacher_markdown(report)
        if ratios:
            parts.append(ratios)
    return "\n\n".join(parts)


def upsampler_cost_markdown(data: dict[str, Any]) -> str:
    from radiosharp.bench.upsampler_cost import upsampler_cost_markdown as table

    return table(data["report"])

"""Every upsampler x objective on the same teacher, photos, budget and scores.

A cell is (method, objective, factor). At the ``comparison_grid_factors`` every trainable
method meets every objective; at the other ``comparison_factors`` each method is trained
by multi-view consistency and by its own paper's objective. Each cell is trained with
every plan seed and scored three ways:

- held-out multi-view quality (fidelity, TV, CRF, MMD) with the views brought down by the
  fixed antialiased resize, the one scale every objective shares (a multi-view run's own
  downsampler was trained with it, the other objectives train none);
- agreement with the teacher run on the ``u x`` input (mean cosine over the held-out photos);
- for multi-view and the own objective, the semseg probe on the seed-0 run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from radiosharp.reproduce.plan import LABELS, OWN_OBJECTIVE, Plan
from radiosharp.reproduce.runs import METHOD_OVERRIDES, plan_teacher, upsampler_run
from radiosharp.reproduce.stats_text import fmt, mean_std

QUALITY = (("fidelity", "↑"), ("tv", "↓"), ("crf", "↓"), ("mmd", "↓"))
OBJECTIVE_LABELS = {
    "multiview": "multi-view",
    "low_to_high": "low→high",
    "crop_hires": "crop hi-res",
    "hires_teacher": "hi-res teacher",
}


def _trainable(method: str) -> bool:
    from radiosharp.api import is_trainable

    return method in METHOD_OVERRIDES or is_trainable(method)


def comparison_cells(plan: Plan) -> list[tuple[str, str, int]]:
    """The (method, objective, factor) cells of the plan whose target can be formed."""
    from radiosharp.objectives import ObjectiveConfig, ObjectiveError, check_objective

    cells = []
    for factor in plan.comparison_factors:
        for method in plan.comparison_methods:
            if not _trainable(method):
                wanted: tuple[str, ...] = ("multiview",)
            elif factor in plan.comparison_grid_factors:
                wanted = plan.comparison_objectives
            else:
                wanted = tuple(dict.fromkeys(("multiview", OWN_OBJECTIVE.get(method, "multiview"))))
            for objective in wanted:
                if objective not in plan.comparison_objectives:
                    continue
                try:
                    check_objective(ObjectiveConfig(name=objective), plan.native_size, 14, factor)
                except ObjectiveError:
                    continue
                cells.append((method, objective, factor))
    return cells


def fixed_heldout(run_dir: Path, teacher: torch.nn.Module) -> dict[str, float]:
    """The run's held-out scores through the fixed resize (scored now for runs that predate them)."""
    heldout = json.loads((run_dir / "heldout.json").read_text())
    if "fixed_fidelity" in heldout:
        return {k.removeprefix("fixed_"): v for k, v in heldout.items() if k.startswith("fixed_")}
    from radiosharp.recipe import load_recipe
    from radiosharp.trainers.upsampler import MultiViewModel, heldout_fidelity, parse_section
    from radiosharp.upsampled import load_upsampled_teacher

    recipe = load_recipe(run_dir / "recipe.yaml")
    model = MultiViewModel(load_upsampled_teacher(run_dir, teacher=teacher), None)
    scores = heldout_fidelity(model, recipe, parse_section(recipe))
    return {k: v for k, v in scores.items() if not k.startswith("fixed_")}


def comparison_section(plan: Plan) -> dict[str, Any]:
    from radiosharp.data.image_spec import load_image
    from radiosharp.data.photos import HELDOUT
    from radiosharp.reproduce.probe_sections import semseg_scores
    from radiosharp.upsampled import load_upsampled_teacher

    teacher = plan_teacher(plan)
    references: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    rows = []
    cells = comparison_cells(plan)
    for number, (method, objective, factor) in enumerate(cells, 1):
        print(f"  cell {number}/{len(cells)}: {method} {objective} {factor}x", flush=True)
        if factor not in references:
            photos = torch.cat([load_image(f"photo:{name}", factor * plan.native_size) for name in HELDOUT])
            with torch.no_grad():
                references[factor] = (photos, teacher(photos).features)
        photos, reference = references[factor]
        quality: dict[str, list[float]] = {key: [] for key, _ in QUALITY}
        cos, first = [], None
        for seed in plan.seeds:
            run_dir = upsampler_run(plan, method, factor, seed, objective=objective)
            scores = fixed_heldout(run_dir, teacher)
            for key, _ in QUALITY:
                quality[key].append(scores[key])
            up = load_upsampled_teacher(run_dir, teacher=teacher)
            first = first or up
            with torch.no_grad():
                similarity = torch.nn.functional.cosine_similarity(up(photos).features, reference, dim=1)
            cos.append(similarity.mean().item())
        row: dict[str, Any] = {
            "method": method,
            "objective": objective,
            "factor": factor,
            "seeds": list(plan.seeds),
            **quality,
            "cos": cos,
        }
        if plan.comparison_semseg and objective in ("multiview", OWN_OBJECTIVE.get(method, "multiview")):
            row.update(semseg_scores(first, factor * plan.native_size, plan))  # the seed-0 run
        rows.append(row)
    return {"rows": rows, "photos": list(HELDOUT)}


def comparison_markdown(data: dict[str, Any]) -> str:
    out = []
    for factor in sorted({r["factor"] for r in data["rows"]}):
        head = (
            "| upsampler | objective | "
            + " | ".join(f"{k} {d}" for k, d in QUALITY)
            + " | cos to hi-res teacher ↑ | mIoU ↑ | small-object mIoU ↑ |"
        )
        lines = [f"**{factor}x**", "", head, "|" + "---|" * (5 + len(QUALITY))]
        for row in (r for r in data["rows"] if r["factor"] == factor):
            probe = [fmt(row[k]) if k in row else "" for k in ("miou", "miou_small")]
            cells = [fmt(row[key]) for key, _ in QUALITY] + [fmt(row["cos"]), *probe]
            label = LABELS.get(row["method"], row["method"])
            lines.append(
                f"| {label} | {OBJECTIVE_LABELS.get(row['objective'], row['objective'])} | " + " | ".join(cells) + " |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def comparison_checks(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(claim, holds, detail): each newer method with its own objective against FeatSharp and FeatUp.

    ``holds`` is None when the two means differ by no more than the larger of their spreads
    (std over training seeds for agreement, over probe seeds for mIoU): not shown either way."""
    checks = []
    cells = {(r["method"], r["objective"], r["factor"]): r for r in data["rows"]}

    def stats(row: dict[str, Any], key: str) -> tuple[float | None, float]:
        if key not in row:
            return None, 0.0
        mean, std = mean_std(row[key])
        return mean, std or 0.0

    for (method, objective, factor), row in cells.items():
        if method not in OWN_OBJECTIVE or objective != OWN_OBJECTIVE[method]:
            continue
        label = LABELS.get(method, method)
        for rival in ("featup", "featsharp"):
            other = cells.get((rival, "multiview", factor))
            if other is None:
                continue
            for key, name in (("miou", "probe mIoU"), ("cos", "agreement with the hi-res teacher")):
                (ours, our_std), (theirs, their_std) = stats(row, key), stats(other, key)
                if ours is None or theirs is None:
                    continue
                spread = max(our_std, their_std)
                within = spread > 0 and abs(ours - theirs) <= spread
                detail = f"{ours:.4f} vs {theirs:.4f}" + (f", within the seed spread {spread:.4f}" if within else "")
                claim = f"{label} ({OBJECTIVE_LABELS[objective]}) beats {LABELS[rival]} in {name} at {factor}x"
                checks.append((claim, None if within else ours > theirs, detail))
    return checks

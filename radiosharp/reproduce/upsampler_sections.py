"""The sections measured on trained upsampler runs: fidelity, de-bias gain, hi-res agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from radiosharp.reproduce.plan import LABELS, Plan
from radiosharp.reproduce.runs import plan_teacher, upsampler_run
from radiosharp.reproduce.stats_text import fmt

QUALITY = (("fidelity", "↑"), ("tv", "↓"), ("crf", "↓"), ("mmd", "↓"))


def _heldout(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "heldout.json").read_text())


def fidelity_section(plan: Plan) -> dict[str, Any]:
    """Held-out multi-view metrics per method and factor, one value per seed."""
    rows = []
    for factor in plan.factors:
        for method in plan.methods:
            scores = [_heldout(upsampler_run(plan, method, factor, seed)) for seed in plan.seeds]
            rows.append(
                {
                    "method": method,
                    "factor": factor,
                    "seeds": list(plan.seeds),
                    **{key: [s[key] for s in scores] for key, _ in QUALITY},
                }
            )
    return {"rows": rows}


def fidelity_markdown(data: dict[str, Any]) -> str:
    head = "| upsampler | factor | " + " | ".join(f"{k} {d}" for k, d in QUALITY) + " |"
    lines = [head, "|" + "---|" * (2 + len(QUALITY))]
    for row in data["rows"]:
        cells = [fmt(row[key]) for key, _ in QUALITY]
        lines.append(f"| {LABELS.get(row['method'], row['method'])} | {row['factor']}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def debias_section(plan: Plan) -> dict[str, Any]:
    """Fidelity with and without the de-bias buffer at ``debias_factor``, per seed."""
    rows = []
    for method in plan.debias_methods:
        with_bias = [_heldout(upsampler_run(plan, method, plan.debias_factor, s))["fidelity"] for s in plan.seeds]
        without = [
            _heldout(upsampler_run(plan, method, plan.debias_factor, s, debias=False))["fidelity"] for s in plan.seeds
        ]
        gains = [100.0 * (a - b) / b for a, b in zip(with_bias, without)]
        rows.append(
            {"method": method, "factor": plan.debias_factor, "with": with_bias, "without": without, "gain_pct": gains}
        )
    picture = debias_picture(
        upsampler_run(plan, plan.debias_methods[-1], plan.debias_factor, plan.seeds[0]),
        plan.out / "debias_bias.png",
        plan_teacher(plan),
    )
    return {"rows": rows, "pictures": [str(picture)]}


def debias_markdown(data: dict[str, Any]) -> str:
    lines = ["| upsampler | factor | fidelity with de-bias ↑ | without ↑ | gain % |", "|---|---|---|---|---|"]
    for row in data["rows"]:
        lines.append(
            f"| {LABELS.get(row['method'], row['method'])} | {row['factor']}x | {fmt(row['with'])} | "
            f"{fmt(row['without'])} | {fmt(row['gain_pct'], 3)} |"
        )
    return "\n".join(lines)


def debias_picture(run_dir: Path, out: Path, teacher: torch.nn.Module | None = None) -> Path:
    """The learned bias ``g`` of a run: its three principal components as RGB and its norm per position."""
    from radiosharp.pca import PCABasis, save_panels, upscale_nearest
    from radiosharp.upsampled import load_upsampled_teacher

    up = load_upsampled_teacher(run_dir, teacher=teacher)
    if up.debias is None:
        raise ValueError(f"{run_dir} was trained without a de-bias buffer")
    bias = up.debias.bias.detach().float()
    rgb = upscale_nearest(PCABasis.fit([bias]).to_rgb(bias), (256, 256))
    norm = bias.norm(dim=0)
    norm = (norm - norm.min()) / (norm.max() - norm.min()).clamp_min(1e-12)
    import numpy as np
    from matplotlib import colormaps

    heat = (colormaps["magma"](norm.numpy())[..., :3] * 255).round().astype(np.uint8)
    heat = upscale_nearest(heat, (256, 256))
    grid = "x".join(map(str, bias.shape[-2:]))
    return save_panels([rgb, heat], [f"learned bias g {grid}: PCA", "|g| per position"], out)


@torch.no_grad()
def agreement_section(plan: Plan) -> dict[str, Any]:
    """Each upsampler's output against the teacher run on the ``u x`` input, per held-out photo.

    ``cos``: mean over positions of the cosine similarity of the two feature vectors;
    ``mse``: mean squared difference in the run's PHI-S space (unit mean variance per
    channel, so comparable across runs).
    """
    from radiosharp.data.image_spec import load_image
    from radiosharp.data.photos import HELDOUT
    from radiosharp.upsampled import load_upsampled_teacher

    teacher = plan_teacher(plan)
    rows = []
    for factor in plan.factors:
        side = factor * plan.native_size
        photos = torch.cat([load_image(f"photo:{name}", side) for name in HELDOUT])
        reference = teacher(photos).features  # the same network under every run
        for method in plan.methods:
            per_seed: dict[str, list[list[float]]] = {"cos": [], "mse": []}
            for seed in plan.seeds:
                up = load_upsampled_teacher(upsampler_run(plan, method, factor, seed), teacher=teacher)
                out = up(photos).features
                cos = torch.nn.functional.cosine_similarity(out, reference, dim=1).mean((1, 2))
                mse = (up.phi_s(out) - up.phi_s(reference)).pow(2).mean((1, 2, 3))
                per_seed["cos"].append(cos.tolist())
                per_seed["mse"].append(mse.tolist())
            rows.append({"method": method, "factor": factor, "photos": list(HELDOUT), **per_seed})
    return {"rows": rows, "pictures": [str(agreement_figure(plan, factor)) for factor in plan.factors]}


def agreement_figure(plan: Plan, factor: int) -> Path:
    """Held-out astronaut: low-res, each upsampler (seed 0) and the teacher at ``u x`` input, one PCA basis."""
    from radiosharp.upsampled import load_upsampled_teacher
    from radiosharp.viz import make_figure

    teacher = plan_teacher(plan)
    ups = {
        LABELS.get(m, m): load_upsampled_teacher(upsampler_run(plan, m, factor, plan.seeds[0]), teacher=teacher)
        for m in plan.methods
        if m != "bilinear"
    }
    return make_figure(
        "photo:astronaut", teacher, ups, plan.out / f"agreement_astronaut_{factor}x.png", factor, hires_reference=True
    )


def agreement_markdown(data: dict[str, Any]) -> str:
    photos = data["rows"][0]["photos"] if data["rows"] else []
    out = []
    for metric, arrow in (("cos", "↑"), ("mse", "↓")):
        lines = [
            "| upsampler | factor | " + " | ".join(photos) + f" | mean {metric} {arrow} |",
            "|" + "---|" * (3 + len(photos)),
        ]
        for row in data["rows"]:
            seeds = row[metric]  # [seed][photo]
            per_photo = [fmt([s[i] for s in seeds]) for i in range(len(photos))]
            means = [sum(s) / len(s) for s in seeds]
            lines.append(
                f"| {LABELS.get(row['method'], row['method'])} | {row['factor']}x | "
                + " | ".join(per_photo)
                + f" | {fmt(means)} |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)

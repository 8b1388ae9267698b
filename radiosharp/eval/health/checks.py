"""The three checks of eval health over a ladder of input sizes: mode switching, outlier tokens, tile seams."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.eval.health.sources import ImageSource
from radiosharp.eval.health.stats import (
    OUTLIER_K,
    SEAM_WINDOW,
    TILE_COUNTS,
    difference_profile,
    outlier_mask,
    outlier_stats,
    seam_ratio_from_profiles,
)
from radiosharp.eval.settings import EvalError
from radiosharp.images import resize

log = logging.getLogger(__name__)

DEFAULT_SIZES = (224, 448, 672, 896, 1024)
PIXELS = "pixels"  # the seam reference: the input images average-pooled to the grid
BACKBONE = "backbone"
TEACHER_RESIZE = (
    "teacher run on the student's pixels resized to its native side; its feature map resized to the "
    "student's grid with radiosharp.images.resize (bilinear, align_corners=False, antialiased when shrinking)"
)
LOW_RES_RESIZE = "student output at the lowest size, upsampled bilinearly (align_corners=False) to the grid"


def _student_features(student: nn.Module, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    out = student(images)
    maps = {BACKBONE: out.backbone} if out.backbone is not None else {}
    maps.update({name: out.features[name] for name in names if name in out.features})
    return {k: v.float() for k, v in maps.items()}


def check_sizes(sizes: Sequence[int], patch_size: int | None) -> list[int]:
    sizes = sorted(dict.fromkeys(int(s) for s in sizes))
    if not sizes or any(s <= 0 for s in sizes):
        raise EvalError(f"health: --sizes must be positive pixel sides, got {list(sizes)}")
    if patch_size:
        bad = [s for s in sizes if s % patch_size]
        if bad:
            raise EvalError(
                f"health: sizes {', '.join(map(str, bad))} are not multiples of the student's patch size {patch_size}"
            )
    return sizes


def student_health(
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    images: ImageSource,
    sizes: Sequence[int] = DEFAULT_SIZES,
    teacher_names: Sequence[str] | None = None,
    k: float = OUTLIER_K,
    tile_counts: Sequence[int] = TILE_COUNTS,
    device: str | torch.device = "cpu",
    skipped: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the three checks; returns (the JSON-ready report, the arrays the figures need).

    ``teachers``: built teacher modules by name (those absent are not in the mode-switching
    curve; ``skipped`` gives their reasons). ``teacher_names``: the adaptor heads to look at
    (default: the student's ``teacher_names``, else the teachers given). Images go through
    one at a time; statistics are accumulated over them.
    """
    names = list(teacher_names or getattr(student, "teacher_names", None) or teachers)
    sizes = check_sizes(sizes, getattr(student, "patch_size", None))
    student = student.to(device).eval()
    teachers = {n: t.to(device).eval() for n, t in teachers.items() if n in names}
    skipped = dict(skipped or {})
    low = sizes[0]
    count = int(images(low).shape[0])
    low_res: list[dict[str, torch.Tensor]] = []  # per image: map name -> the student's [1,C,h,w] at `low`
    curves: dict[str, dict[str, list]] = {
        n: {"sizes": [], "mse_teacher": [], "nmse_teacher": [], "mse_low_res": [], "nmse_low_res": []} for n in teachers
    }
    per_size: list[dict[str, Any]] = []
    norm_maps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    profiles: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for size in sizes:
        batch = images(size)
        sums: dict[str, dict[str, float]] = {n: {"t": 0.0, "l": 0.0, "n": 0.0} for n in teachers}
        teacher_maps: dict[str, list[torch.Tensor]] = {n: [] for n in teachers}
        backbones, maps_all = [], {}
        for i in range(count):
            image = batch[i : i + 1].to(device)
            with torch.inference_mode():
                maps = _student_features(student, image, names)
                if size == low:
                    low_res.append(maps)
                for name, teacher in teachers.items():
                    if name not in maps:
                        continue
                    pred = maps[name]
                    native = int(teacher.native_size)
                    target = teacher(resize(image, (native, native))).features.float()
                    if target.shape[1] != pred.shape[1]:
                        skipped[name] = (
                            f"its features have {target.shape[1]} channels, the student's adaptor {pred.shape[1]}"
                        )
                        continue
                    target = resize(target, tuple(pred.shape[-2:]))
                    own = F.interpolate(low_res[i][name], size=pred.shape[-2:], mode="bilinear", align_corners=False)
                    sums[name]["t"] += float((pred - target).double().pow(2).sum())
                    sums[name]["l"] += float((pred - own).double().pow(2).sum())
                    sums[name]["n"] += pred.numel()
                    teacher_maps[name].append(target.cpu())
            if BACKBONE in maps:
                backbones.append(maps[BACKBONE].cpu())
            for key, value in maps.items():
                maps_all.setdefault(key, []).append(value.cpu())
            if maps:
                grid = tuple(next(iter(maps.values())).shape[-2:])
                maps_all.setdefault(PIXELS, []).append(F.adaptive_avg_pool2d(image.float(), grid).cpu())
        row: dict[str, Any] = {"size": size}
        for name, acc in sums.items():
            if name in skipped or not acc["n"]:
                continue
            target = torch.cat(teacher_maps[name])
            variance = float(target.double().transpose(0, 1).flatten(1).var(dim=1).mean()) or 1e-12
            curve = curves[name]
            curve["sizes"].append(size)
            curve["mse_teacher"].append(acc["t"] / acc["n"])
            curve["mse_low_res"].append(acc["l"] / acc["n"])
            curve["nmse_teacher"].append(acc["t"] / acc["n"] / variance)
            curve["nmse_low_res"].append(acc["l"] / acc["n"] / variance)
        if backbones:
            backbone = torch.cat(backbones)
            row["grid"] = list(backbone.shape[-2:])
            row["outliers"] = outlier_stats(backbone, k)
            norms = backbone[:1].double().norm(dim=1)[0]
            norm_maps.append((size, norms, outlier_mask(norms[None], k)[0]))
        row["seams"] = {}
        for key, chunks in maps_all.items():
            stacked = torch.cat(chunks)
            row.setdefault("grid", list(stacked.shape[-2:]))
            dx, dy = difference_profile(stacked)
            row["seams"][key] = {str(t): seam_ratio_from_profiles(dx, dy, t) for t in tile_counts}
            if size == sizes[-1]:
                profiles[key] = (dx, dy)
        per_size.append(row)
        log.info("health: size %d done (%d images)", size, count)
    mode_switch = {n: c for n, c in curves.items() if n not in skipped and c["sizes"]}
    report = {
        "sizes": sizes,
        "images": count,
        "teachers": names,
        "mode_switch": {
            "curves": mode_switch,
            "skipped": {n: skipped.get(n, "not built") for n in names if n not in mode_switch},
            "low_res_size": low,
            "teacher_reference": TEACHER_RESIZE,
            "low_res_reference": LOW_RES_RESIZE,
            "nmse": "MSE divided by the teacher's mean per-channel feature variance at that size",
        },
        "outliers": {
            "k": k,
            "rule": f"token L2 norm > median + {k:g} * MAD of its image's backbone token norms (MAD unscaled)",
            "per_size": {str(r["size"]): r["outliers"] for r in per_size if "outliers" in r},
        },
        "seams": {
            "tile_counts": list(tile_counts),
            "window": SEAM_WINDOW,
            "rule": "mean squared adjacent-token difference across offsets round(k*n/t), k=1..t-1, both axes, "
            f"over the same mean at the other offsets within {SEAM_WINDOW} tokens of a boundary (1 = no seams); "
            f"'{PIXELS}': the same on the input images average-pooled to the grid (what content alone gives)",
            "per_size": {str(r["size"]): r["seams"] for r in per_size},
        },
        "grids": {str(r["size"]): r.get("grid") for r in per_size},
    }
    if not mode_switch and not report["mode_switch"]["skipped"]:
        report["mode_switch"]["skipped"] = {"(all)": "the student has no teacher heads"}
    arrays = {"norm_maps": norm_maps, "profiles": profiles, "tile_counts": list(tile_counts), "k": k}
    return report, arrays

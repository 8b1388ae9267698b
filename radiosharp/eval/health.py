"""Student health diagnostics (``python -m radiosharp.eval health RUN``).

Three checks of an exported student over a ladder of input sizes (default 224, 448, 672,
896, 1024), on the packaged real photographs (:mod:`radiosharp.data.photos`: the four
held-out ones first, then the training ones, ``images`` of them) or on the synthetic
benchmark:

- **Mode switching** (RADIO Amplified, arXiv 2412.07679): for each size ``s`` and teacher,
  the MSE of the student's adaptor features at ``s`` against

  * *teacher*: that teacher's features of the same image, the teacher run at its native
    size (the student's ``s x s`` pixels resized to ``native x native`` with
    :func:`radiosharp.images.resize`, bilinear, antialiased when shrinking) and its
    feature map resized to the student's ``s/p x s/p`` grid with the same resize (the
    training loss's resize, ``trainers/distill.feature_loss``);
  * *low-res*: the student's own output at the lowest size, upsampled bilinearly
    (``align_corners=False``) to the grid of ``s``: zero at the lowest size by definition.

  Each is reported raw (``mse``) and divided by the teacher's mean per-channel feature
  variance at that size (``nmse``: the PHI-S-space MSE that training minimizes, so 1.0 is
  "as far as predicting the mean"). A student that switches mode at high resolution shows
  the *teacher* curve rising while the *low-res* one stays low, or the reverse.
  The teachers are rebuilt from the configs the export records (``model.json``
  ``teacher_configs``), else from the run's ``recipe.yaml`` ``teachers:``; the teacher's
  upsampler, if it had one in training, is not used. If no teacher can be built, this
  part is skipped with the reason and the others still run.
- **High-norm outlier tokens** (RADIO issue #174 reports them in C-RADIOv4): per size,
  the fraction of backbone tokens whose L2 norm exceeds ``median + k * MAD`` of that
  image's token norms (median absolute deviation, unscaled; ``k`` = :data:`OUTLIER_K` = 6
  by default), and the largest ratio of a token's norm to its image's median norm.
- **Tile-seam energy** (the grid pattern of Tile/S2-trained students, FeatSharp figure 8):
  for ``t`` in :data:`TILE_COUNTS` (2, 3, 4) the mean squared difference between adjacent
  tokens across the tile boundaries (token offsets ``round(k * n / t)``, ``k = 1..t-1``,
  along both axes of an ``n x n`` map), divided by the same mean at the other offsets within
  :data:`SEAM_WINDOW` (2) tokens of a boundary (a local baseline: photos put their subject
  in the middle, where the t=2 boundary is). A ratio near 1 means no seams; a tile-trained
  student's seams give ratios well above 1. Measured on the backbone and on each teacher's
  adaptor features, and on the input pixels average-pooled to the grid (``pixels``: what
  the content alone gives, to read the others against).

Results go to ``RUN/eval/health.json`` (or ``--out``) with three pictures beside it:
``health_mode_switch.png`` (a panel per teacher, both curves over size),
``health_outliers.png`` (the backbone norm map of the first image at each size, outliers
ringed) and ``health_seams.png`` (seam ratio over ``t`` per map and size, and the
adjacent-difference energy profile at the largest size with the tile boundaries marked).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.data.errors import one_line
from radiosharp.eval.settings import EvalError
from radiosharp.images import resize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DEFAULT_SIZES = (224, 448, 672, 896, 1024)
DEFAULT_IMAGES = 4
OUTLIER_K = 6.0
TILE_COUNTS = (2, 3, 4)
SEAM_WINDOW = 2  # tokens each side of a boundary whose differences are the seam baseline
PIXELS = "pixels"  # the seam reference: the input images average-pooled to the grid
BACKBONE = "backbone"
HEALTH_FILE = "health.json"
PICTURES = {"mode_switch": "health_mode_switch.png", "outliers": "health_outliers.png", "seams": "health_seams.png"}
DATA_SOURCES = ("photos", "synthetic")
TEACHER_RESIZE = (
    "teacher run on the student's pixels resized to its native side; its feature map resized to the "
    "student's grid with radiosharp.images.resize (bilinear, align_corners=False, antialiased when shrinking)"
)
LOW_RES_RESIZE = "student output at the lowest size, upsampled bilinearly (align_corners=False) to the grid"

ImageSource = Callable[[int], torch.Tensor]


# ----------------------------------------------------------------------------- images


def image_source(data: str = "photos", count: int = DEFAULT_IMAGES, seed: int = 0) -> ImageSource:
    """``size -> float [N,3,size,size]`` in [0,1], the same ``count`` images at every size.

    ``photos``: the held-out photographs first, then the training ones, each decoded from
    the original at ``size`` (centred square). ``synthetic``: seeded benchmark scenes
    rendered once at the largest size asked so far and resized down.
    """
    if data not in DATA_SOURCES:
        raise EvalError(f"health: data '{data}' is not valid; valid: {', '.join(DATA_SOURCES)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise EvalError(f"health: --images must be a positive integer, got {count!r}")
    cache: dict[int, torch.Tensor] = {}
    if data == "photos":
        from radiosharp.data.photos import HELDOUT, TRAIN, Photos

        names = list(HELDOUT + TRAIN)
        if count > len(names):
            raise EvalError(f"health: --images {count}: the packaged photos are {len(names)}")

        def photos(size: int) -> torch.Tensor:
            if size not in cache:
                dataset = Photos(size=size, names=names[:count])
                cache[size] = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
            return cache[size]

        return photos

    from radiosharp.data.synthetic import SyntheticScenes

    def synthetic(size: int) -> torch.Tensor:
        if size not in cache:
            largest = max([size, *cache])
            if largest not in cache:
                dataset = SyntheticScenes(num_images=count, size=largest, seed=seed)
                cache[largest] = torch.stack([dataset[i]["image"].float() for i in range(count)])
            cache[size] = resize(cache[largest], (size, size)).clamp(0.0, 1.0)
        return cache[size]

    return synthetic


# ----------------------------------------------------------------------------- statistics


def outlier_mask(norms: torch.Tensor, k: float = OUTLIER_K) -> torch.Tensor:
    """Bool ``[B,h,w]``: tokens whose norm exceeds ``median + k * MAD`` of their own image.

    ``norms`` is ``[B,h,w]``. The MAD has a floor of ``1e-6 * median`` so that a map of
    (numerically) equal norms flags only the tokens above it.
    """
    flat = norms.flatten(1).double()
    median = flat.median(dim=1, keepdim=True).values
    mad = (flat - median).abs().median(dim=1, keepdim=True).values
    mad = torch.maximum(mad, 1e-6 * median.abs() + 1e-12)
    return (flat > median + k * mad).view_as(norms)


def outlier_stats(backbone: torch.Tensor, k: float = OUTLIER_K) -> dict[str, Any]:
    """Outlier tokens of backbone tokens ``[B,D,h,w]``: counts, fraction, max norm / median norm."""
    norms = backbone.double().norm(dim=1)
    mask = outlier_mask(norms, k)
    median = norms.flatten(1).median(dim=1).values.clamp_min(1e-12)
    ratios = norms.flatten(1).max(dim=1).values / median
    return {
        "outliers": int(mask.sum()),
        "tokens": int(mask.numel()),
        "fraction": int(mask.sum()) / mask.numel(),
        "max_norm_ratio": float(ratios.max()),
        "median_norm": float(median.mean()),
    }


def difference_profile(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared difference of adjacent tokens of ``[B,C,h,w]``, per offset.

    Returns (along the width ``[w-1]``, along the height ``[h-1]``): entry ``j`` is the
    mean over images, channels and the other axis of ``(x[j+1] - x[j])**2``.
    """
    x = features.double()
    dx = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(0, 1, 2))
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(0, 1, 3))
    return dx, dy


def boundary_offsets(n: int, tiles: int) -> list[int]:
    """Indices into an ``n``-token axis's ``n-1`` adjacent differences that cross a tile boundary."""
    return sorted({int(round(j * n / tiles)) - 1 for j in range(1, tiles) if 0 < round(j * n / tiles) < n})


def seam_ratio_from_profiles(dx: torch.Tensor, dy: torch.Tensor, tiles: int, window: int = SEAM_WINDOW) -> float | None:
    """Mean difference energy across the ``tiles`` boundaries over the mean at the other offsets
    within ``window`` tokens of a boundary (both axes); None where a tile is under two tokens wide.

    The baseline is local so that content that is not spread evenly over the image (photos
    put their subject in the middle, on the t=2 boundary) does not read as a seam.
    """
    on, off = [], []
    for profile in (dx, dy):
        n = profile.numel() + 1
        if n < 2 * tiles:  # a tile of one token has no inside
            return None
        boundaries = boundary_offsets(n, tiles)
        near = {o for b in boundaries for o in range(b - window, b + window + 1) if 0 <= o < profile.numel()}
        on.append(profile[boundaries])
        off.append(profile[sorted(near - set(boundaries))])
    on_mean, off_mean = float(torch.cat(on).mean()), float(torch.cat(off).mean())
    if off_mean <= 0.0:  # a map constant off the boundaries: undefined if it steps at them, else no seam
        return None if on_mean > 0.0 else 1.0
    return on_mean / off_mean


def seam_ratios(features: torch.Tensor, tile_counts: Sequence[int] = TILE_COUNTS) -> dict[str, float | None]:
    """``{"t": ratio}`` of a feature map ``[B,C,h,w]`` (None where a tile would be one token wide)."""
    dx, dy = difference_profile(features)
    return {str(t): seam_ratio_from_profiles(dx, dy, t) for t in tile_counts}


# ----------------------------------------------------------------------------- teachers


def recorded_teacher_configs(student: nn.Module, run_dir: str | Path | None) -> tuple[dict[str, dict], str]:
    """``{teacher: build config}`` the run records, and where they came from.

    First the export's ``teacher_configs`` (``model.json``), else the ``teachers:`` of
    ``RUN/recipe.yaml`` (training-only keys dropped). Empty when neither has them.
    """
    from radiosharp.student_io import teacher_build_config

    stored = getattr(student, "teacher_configs", None) or {}
    if stored:
        return {name: dict(cfg) for name, cfg in stored.items()}, "model.json teacher_configs"
    recipe = Path(run_dir) / "recipe.yaml" if run_dir is not None else None
    if recipe is not None and recipe.is_file():
        import yaml

        try:
            teachers = (yaml.safe_load(recipe.read_text()) or {}).get("teachers") or {}
        except (yaml.YAMLError, AttributeError):
            teachers = {}
        out = {}
        for name, cfg in teachers.items() if isinstance(teachers, Mapping) else ():
            cfg = dict(cfg or {})
            cfg.setdefault("family", name)  # the recipe's rule: a family defaults to its key
            try:
                out[name] = teacher_build_config(cfg, f"recipe.yaml teachers.{name}")
            except ValueError:
                continue
        if out:
            return out, "recipe.yaml teachers"
    return {}, "none"


def build_recorded_teachers(
    configs: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The teachers ``names`` built from ``configs``; the others get a one-line reason."""
    from radiosharp.builders import build_teacher

    built, skipped = {}, {}
    for name in names:
        if name not in configs:
            skipped[name] = "no recorded teacher config"
            continue
        try:
            built[name] = build_teacher(dict(configs[name]), f"teacher '{name}'")
        except Exception as err:  # noqa: BLE001 - any failure (offline weights, missing package) skips (a) only
            skipped[name] = f"cannot build it from {dict(configs[name])}: {one_line(err)}"
            log.warning("health: teacher '%s' %s", name, skipped[name])
    return built, skipped


def teacher_recipe_upsamplers(run_dir: str | Path | None) -> dict[str, Any]:
    """``{teacher: its recipe upsampler}`` from ``RUN/recipe.yaml`` (tile-trained students have one)."""
    recipe = Path(run_dir) / "recipe.yaml" if run_dir is not None else None
    if recipe is None or not recipe.is_file():
        return {}
    import yaml

    try:
        teachers = (yaml.safe_load(recipe.read_text()) or {}).get("teachers") or {}
    except (yaml.YAMLError, AttributeError):
        return {}
    if not isinstance(teachers, Mapping):
        return {}
    return {n: c["upsampler"] for n, c in teachers.items() if isinstance(c, Mapping) and c.get("upsampler")}


# ----------------------------------------------------------------------------- the run


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


# ----------------------------------------------------------------------------- pictures and table


def mode_switch_figure(report: Mapping[str, Any]) -> Figure:
    from radiosharp.eval.plots import _figure

    curves = report["mode_switch"]["curves"]
    skipped = report["mode_switch"]["skipped"]
    panels = max(1, len(curves))
    fig = _figure(1.0 + 3.6 * panels, 3.4)
    if not curves:
        ax = fig.add_subplot()
        ax.axis("off")
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or "no teacher"
        ax.text(0.5, 0.5, "mode switching skipped\n" + reasons, ha="center", va="center", wrap=True, fontsize=8)
        return fig
    for i, (name, curve) in enumerate(curves.items()):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.plot(curve["sizes"], curve["nmse_teacher"], marker="o", label="vs teacher (native, resized)")
        ax.plot(curve["sizes"], curve["nmse_low_res"], marker="s", label=f"vs own {report['sizes'][0]} px output")
        ax.set_xlabel("input size (px)")
        ax.set_ylabel("MSE / teacher feature variance")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("mode switching (RADIO Amplified)", fontsize=10)
    fig.tight_layout()
    return fig


def outliers_figure(report: Mapping[str, Any], norm_maps: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> Figure:
    from radiosharp.eval.plots import _figure

    panels = max(1, len(norm_maps))
    fig = _figure(0.6 + 2.8 * panels, 3.2)
    if not norm_maps:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "the student returns no backbone tokens", ha="center", va="center")
        return fig
    per_size = report["outliers"]["per_size"]
    for i, (size, norms, mask) in enumerate(norm_maps):
        ax = fig.add_subplot(1, panels, i + 1)
        image = ax.imshow(norms.float().numpy(), cmap="viridis", interpolation="nearest")
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            ax.scatter(xs.numpy(), ys.numpy(), s=14, facecolors="none", edgecolors="red", linewidths=0.8)
        stats = per_size[str(size)]
        ax.set_title(f"{size} px: {100 * stats['fraction']:.2f}% out, max {stats['max_norm_ratio']:.1f}x", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.ticklabel_format(useOffset=False)
    fig.suptitle(f"backbone token norms, first image (outliers > median + {report['outliers']['k']:g} MAD)", fontsize=9)
    fig.tight_layout()
    return fig


def seams_figure(report: Mapping[str, Any], profiles: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Figure:
    from radiosharp.eval.plots import _figure

    per_size = report["seams"]["per_size"]
    keys = list(dict.fromkeys(k for row in per_size.values() for k in row))
    panels = max(1, len(keys))
    fig = _figure(0.6 + 3.4 * panels, 6.2)
    tile_counts = report["seams"]["tile_counts"]
    largest = str(report["sizes"][-1])
    for i, key in enumerate(keys):
        ax = fig.add_subplot(2, panels, i + 1)
        for size, row in per_size.items():
            ratios = [row.get(key, {}).get(str(t)) for t in tile_counts]
            ax.plot(tile_counts, [math.nan if r is None else r for r in ratios], marker="o", label=f"{size} px")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(tile_counts)
        ax.set_xlabel("tiles per side t")
        ax.set_ylabel("boundary / other difference energy")
        ax.set_title("input pixels, pooled (content reference)" if key == PIXELS else key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax = fig.add_subplot(2, panels, panels + i + 1)
        if key in profiles:
            dx, dy = profiles[key]
            scale = float(torch.cat([dx, dy]).median()) or 1.0
            ax.plot(torch.arange(1, dx.numel() + 1).numpy(), (dx / scale).numpy(), label="across columns", lw=1)
            ax.plot(torch.arange(1, dy.numel() + 1).numpy(), (dy / scale).numpy(), label="across rows", lw=1)
            n = dx.numel() + 1
            styles = {2: ("red", "-"), 3: ("orange", "--"), 4: ("purple", ":")}
            for t in tile_counts:
                color, style = styles.get(t, ("grey", "-."))
                for j, b in enumerate(boundary_offsets(n, t)):
                    ax.axvline(
                        b + 1, color=color, linestyle=style, lw=0.8, alpha=0.7, label=f"t={t}" if j == 0 else None
                    )
            ax.set_xlabel(f"token offset at {largest} px")
            ax.set_ylabel("energy / median")
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("tile-seam energy", fontsize=10)
    fig.tight_layout()
    return fig


def write_pictures(report: Mapping[str, Any], arrays: Mapping[str, Any], out: Path) -> dict[str, Path]:
    from radiosharp.eval.plots import save_figure

    figures = {
        "mode_switch": mode_switch_figure(report),
        "outliers": outliers_figure(report, arrays["norm_maps"]),
        "seams": seams_figure(report, arrays["profiles"]),
    }
    return {name: save_figure(fig, out / PICTURES[name]) for name, fig in figures.items()}


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

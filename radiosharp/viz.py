"""``python -m radiosharp.viz IMAGE --teacher T [--upsampler RUN|NAME ...] [--factor U] [--out PNG]``

One PNG laid out like the FeatSharp paper's figure 1: the image, the teacher's raw
low-res features, bilinear upsampling, then each upsampler given, all projected on
ONE PCA basis fitted on every map together, so a colour means the same feature in
every panel (a per-panel basis would re-colour each map and hide real differences).

``--teacher``: a family name (``dinov2``; ``--size tiny|real``, default real), a
YAML/JSON mapping (``'{family: dinov2, size: tiny}'``), or an exported upsampler run
folder (its teacher config is used). ``--upsampler``: exported upsampler run folders
(trained for that same teacher) or training-free names (bilinear, tiles, s2).
IMAGE: a path, ``skimage:NAME`` (e.g. ``skimage:astronaut``) or ``photo:NAME`` (a packaged
photograph, :mod:`radiosharp.data.photos`). ``--hires-reference`` adds the teacher's own
features of the image at ``factor x`` input as a last panel. Bad input exits with
code 2 and a message, before anything is written.

Python use: ``make_figure(image, teacher, {"featsharp": up_teacher}, "fig.png")``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from torch import nn

import radiosharp
from radiosharp.contracts import Teacher
from radiosharp.images import load_image, resize
from radiosharp.pca import PCABasis, image_to_uint8, save_panels, upscale_nearest

TRAINING_FREE = ("bilinear", "tiles", "s2")
DEFAULT_FACTOR = 2


class VizError(ValueError):
    """Bad command-line input (missing image or run, mismatched teacher or factor)."""


# ----------------------------------------------------------------------------- teacher specs


def is_run_folder(spec: str | Path) -> bool:
    return Path(spec).is_dir()


def run_config(run: str | Path) -> dict[str, Any]:
    """The ``model.json`` config of an exported upsampler run (clear errors when it is not one)."""
    run = Path(run)
    path = run / "model.json"
    if not run.is_dir():
        raise VizError(f"run folder not found: {run}")
    if not path.is_file():
        raise VizError(f"{run} has no exported upsampler (model.json + model.safetensors); "
                       "train it to the end first")
    meta = json.loads(path.read_text())
    if meta.get("kind") != "upsampler":
        raise VizError(f"{run} holds a '{meta.get('kind')}' export, not an upsampler")
    return dict(meta.get("config") or {})


def parse_teacher_spec(spec: str, size: str | None = None) -> dict[str, Any]:
    """A teacher build config from a family name, a YAML/JSON mapping, or an upsampler run folder.

    ``size`` (tiny|real) applies to a family name (default real) and fills in a
    mapping that does not say; a run folder's teacher is used as it was trained.
    """
    from radiosharp.registry import TEACHERS

    families = TEACHERS.names()
    if is_run_folder(spec):
        cfg = run_config(spec).get("teacher")
        if not cfg:
            raise VizError(f"{spec}: the export records no teacher config; give --teacher as a family name")
        return dict(cfg) if isinstance(cfg, Mapping) else {"family": str(cfg)}
    if spec in families:
        return {"family": spec, "size": size or "real"}
    try:
        parsed = yaml.safe_load(spec)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, Mapping):
        cfg = dict(parsed)
        if cfg.get("family") not in families:
            raise VizError(f"--teacher mapping needs 'family' (one of: {', '.join(families)}), got {spec!r}")
        if size is not None:
            cfg.setdefault("size", size)
        return cfg
    if "/" in spec or spec.startswith("."):
        raise VizError(f"--teacher: run folder not found: {spec}")
    raise VizError(f"--teacher '{spec}' is neither a teacher family ({', '.join(families)}), "
                   "a mapping like '{family: dinov2, size: tiny}', nor an upsampler run folder")


def same_teacher(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two teacher configs build the same network (defaults filled in; see
    :func:`radiosharp.recipe.resolved_teacher_options`)."""
    from radiosharp.recipe import resolved_teacher_options

    return resolved_teacher_options(a) == resolved_teacher_options(b)


# ----------------------------------------------------------------------------- figure


def feature_panels(maps: Mapping[str, torch.Tensor], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each map ([C,h,w] or [1,C,h,w]) as a uint8 picture of ``size`` on ONE shared PCA basis."""
    maps = {k: (m[0] if m.ndim == 4 else m) for k, m in maps.items()}
    basis = PCABasis.fit(list(maps.values()))
    return {k: upscale_nearest(basis.to_rgb(m), size) for k, m in maps.items()}


def _factor_of(module: nn.Module) -> int:
    factor = getattr(module, "factor", None)
    if factor is None:
        raise ValueError(f"{type(module).__name__} has no 'factor': pass an upsampler or an UpsampledTeacher")
    return int(factor)


def _as_image(image: torch.Tensor | str, side: int) -> torch.Tensor:
    """[1,3,side,side] in [0,1] from a tensor ([3,H,W] or [1,3,H,W]) or an image spec."""
    if isinstance(image, (str, Path)):
        return load_image(str(image), side)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"make_figure: expected one image [3,H,W] or [1,3,H,W], got {tuple(image.shape)}")
    return resize(image.float(), (side, side)).clamp(0, 1)


@torch.no_grad()
def figure_maps(image: torch.Tensor, teacher: Teacher, upsamplers: Mapping[str, nn.Module],
                factor: int, hires_reference: bool = False) -> dict[str, torch.Tensor]:
    """Raw low-res features, bilinear, then each upsampler's output for one [1,3,H,W] image
    (at ``factor x`` the teacher's native size); with ``hires_reference``, last, the teacher's
    own features of the image at that size (the real hi-res reference of a resolution-robust
    teacher such as DINOv2)."""
    from radiosharp.upsampled import UpsampledTeacher

    native = teacher.native_size
    lowres = teacher(resize(image, (native, native))).features
    grid = lowres.shape[-1]
    bilinear = radiosharp.build_upsampler("bilinear", factor=factor, dim=teacher.embed_dim,
                                          patch_size=teacher.patch_size)
    maps = {f"raw features {grid}x{grid}": lowres}
    entries = {"bilinear": bilinear, **{k: v for k, v in upsamplers.items() if k != "bilinear"}}
    for name, module in entries.items():
        model = module if isinstance(module, UpsampledTeacher) else UpsampledTeacher(teacher, module)
        model = model.to(image.device).eval()
        out = model(image).features
        maps[f"{name} {factor}x"] = out
    if hires_reference:
        side = image.shape[-1]
        maps[f"{teacher.name} at {side}px input"] = teacher(image).features
    return maps


def make_figure(image: torch.Tensor | str, teacher: Teacher, upsamplers: Mapping[str, nn.Module],
                out: str | Path, factor: int | None = None, hires_reference: bool = False) -> Path:
    """Write the figure-1 style PNG and return its path.

    ``image``: a [3,H,W]/[1,3,H,W] tensor in [0,1] (resized to ``factor * native``
    square) or an image spec (path or ``skimage:NAME``, centre-cropped square).
    ``upsamplers``: name -> an upsampler module (wrapped with ``teacher``) or an
    :class:`~radiosharp.upsampled.UpsampledTeacher`; all must share one factor.
    ``factor``: the upsampling factor (default: the upsamplers', else 2).
    Panels: image, raw features, bilinear, each upsampler in the given order, then (with
    ``hires_reference``) the teacher run on the image at ``factor x`` its native size.
    """
    factors = {name: _factor_of(m) for name, m in upsamplers.items()}
    wanted = factor if factor is not None else next(iter(factors.values()), DEFAULT_FACTOR)
    wrong = {name: f for name, f in factors.items() if f != wanted}
    if wrong:
        raise ValueError(f"upsampling factor mismatch: the figure is at {wanted}x but "
                         + ", ".join(f"'{n}' upsamples {f}x" for n, f in wrong.items()))
    device = next(teacher.parameters(), torch.empty(0)).device
    picture = _as_image(image, wanted * teacher.native_size).to(device)
    maps = figure_maps(picture, teacher, upsamplers, wanted, hires_reference)
    side = picture.shape[-1]
    panels = feature_panels(maps, (side, side))
    titles = [f"image {side}x{side}", *panels]
    return save_panels([image_to_uint8(picture[0]), *panels.values()], titles, out)


# ----------------------------------------------------------------------------- command line


def check_upsampler_specs(specs: list[str], teacher_cfg: Mapping[str, Any], factor: int | None) -> int:
    """Validate every ``--upsampler`` before any model is built; returns the figure's factor.

    Run folders must hold an upsampler export trained for ``teacher_cfg`` (builder
    defaults filled in, so ``{family: dinov2}`` equals ``{family: dinov2, size: real}``)
    at one factor, equal to ``factor`` when given; other specs must be training-free names.
    """
    from radiosharp.registry import UPSAMPLERS

    run_factors: dict[str, int] = {}
    for spec in specs:
        if is_run_folder(spec):
            cfg = run_config(spec)
            trained_for = cfg.get("teacher")
            if trained_for and not same_teacher(trained_for, teacher_cfg):
                raise VizError(f"mismatched teacher: {spec} was trained for teacher {dict(trained_for)}, "
                               f"but --teacher is {dict(teacher_cfg)}")
            run_factors[spec] = int(cfg["factor"])
        elif spec in UPSAMPLERS and spec not in TRAINING_FREE:
            raise VizError(f"--upsampler {spec}: '{spec}' must be trained first; give its run folder "
                           f"(python -m radiosharp.train ...), or a training-free name: {', '.join(TRAINING_FREE)}")
        elif spec not in TRAINING_FREE:
            if "/" in spec or spec.startswith("."):
                raise VizError(f"--upsampler: run folder not found: {spec}")
            raise VizError(f"--upsampler '{spec}' is neither a run folder nor a training-free upsampler "
                           f"({', '.join(TRAINING_FREE)})")
    if factor is not None:
        wrong = {r: f for r, f in run_factors.items() if f != factor}
        if wrong:
            raise VizError(f"factor mismatch: --factor {factor}, but "
                           + ", ".join(f"{r} was trained at {f}x" for r, f in wrong.items()))
        return factor
    if len(set(run_factors.values())) > 1:
        raise VizError("factor mismatch: the runs upsample by different factors ("
                       + ", ".join(f"{r}: {f}x" for r, f in run_factors.items()) + "); give runs of one factor")
    return next(iter(run_factors.values()), DEFAULT_FACTOR)


def build_upsamplers(specs: list[str], teacher: Teacher, factor: int) -> dict[str, nn.Module]:
    """Name -> module for checked ``--upsampler`` specs (runs load around ``teacher``)."""
    from radiosharp.upsampled import load_upsampled_teacher

    modules: dict[str, nn.Module] = {}
    for spec in specs:
        if is_run_folder(spec):
            name = f"{Path(spec).name} ({run_config(spec).get('upsampler', {}).get('name', '?')})"
            module = load_upsampled_teacher(spec, teacher=teacher)
        else:
            name = spec
            module = radiosharp.build_upsampler(spec, factor=factor, dim=teacher.embed_dim,
                                                patch_size=teacher.patch_size)
        while name in modules:
            name += "'"
        modules[name] = module
    return modules


def default_out(image: str) -> Path:
    stem = image.split(":", 1)[1] if image.startswith(("skimage:", "photo:")) else Path(image).stem
    return Path(f"{stem}_features.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m radiosharp.viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="an image path, skimage:NAME (e.g. skimage:astronaut) or photo:NAME")
    parser.add_argument("--teacher", required=True,
                        help="family name, '{family: dinov2, size: tiny}', or an upsampler run folder")
    parser.add_argument("--size", choices=("tiny", "real"), default=None,
                        help="teacher size for a family name (default real)")
    parser.add_argument("--upsampler", nargs="+", default=[], metavar="RUN|NAME",
                        help=f"exported upsampler run folders or training-free names ({', '.join(TRAINING_FREE)})")
    parser.add_argument("--factor", type=int, default=None,
                        help=f"upsampling factor (default: the runs' factor, else {DEFAULT_FACTOR})")
    parser.add_argument("--hires-reference", action="store_true",
                        help="add a last panel: the teacher's own features of the image at factor x its "
                             "native size (a real hi-res reference for resolution-robust teachers like DINOv2)")
    parser.add_argument("--out", default=None, help="output PNG (default: <image name>_features.png)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if args.factor is not None and args.factor < 1:
            raise VizError(f"--factor must be an integer >= 1, got {args.factor}")
        load_image(args.image)  # a missing image fails here, before any model is built
        teacher_cfg = parse_teacher_spec(args.teacher, args.size)
        factor = check_upsampler_specs(args.upsampler, teacher_cfg, args.factor)
        teacher = radiosharp.build_teacher(teacher_cfg, "--teacher")
        upsamplers = build_upsamplers(args.upsampler, teacher, factor)
    except (VizError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    teacher.to(device)
    for module in upsamplers.values():
        module.to(device)
    out = make_figure(args.image, teacher, upsamplers, args.out or default_out(args.image), factor,
                      args.hires_reference)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

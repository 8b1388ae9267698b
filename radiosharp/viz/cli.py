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
code 2 and a message, before anything is written. ``--out`` (or the default name) is
never the input image, and an existing file is refused unless ``--force``.

Python use: ``make_figure(image, teacher, {"featsharp": up_teacher}, "fig.png")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from radiosharp.builders import build_teacher
from radiosharp.data.image_spec import load_image
from radiosharp.specs import SpecError as VizError
from radiosharp.specs import build_upsamplers, check_upsampler_specs, parse_teacher_spec
from radiosharp.viz.figure import DEFAULT_FACTOR, make_figure

__all__ = ["build_parser", "check_out", "default_out", "main"]


def default_out(image: str) -> Path:
    """``<image name>_features.png`` in the current folder."""
    stem = image.split(":", 1)[1] if image.startswith(("skimage:", "photo:")) else Path(image).stem
    return Path(f"{stem}_features.png")


def check_out(image: str, out: Path, force: bool) -> None:
    """Refuse (VizError) an output that is the input image, a folder, or an existing file without ``force``."""
    if not image.startswith(("skimage:", "photo:")):
        source = Path(image)
        if source.exists() and out.exists() and source.resolve() == out.resolve():
            raise VizError(f"--out {out} is the input image; choose another --out (it is never overwritten)")
    if out.is_dir():
        raise VizError(f"--out {out} is a folder; give a PNG file name (--out {out / 'figure.png'})")
    if out.exists() and not force:
        raise VizError(f"--out {out} already exists; pass --force to overwrite it, or choose another --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", help="an image path, skimage:NAME (e.g. skimage:astronaut) or photo:NAME")
    parser.add_argument(
        "--teacher", required=True, help="family name, '{family: dinov2, size: tiny}', or an upsampler run folder"
    )
    parser.add_argument(
        "--size", choices=("tiny", "real"), default=None, help="teacher size for a family name (default real)"
    )
    parser.add_argument(
        "--upsampler",
        nargs="+",
        default=[],
        metavar="RUN|NAME",
        help="exported upsampler runs (run:PATH, or a path) or names of training-free upsamplers "
        "(those not trainable: radiosharp.list_upsamplers(trainable=False))",
    )
    parser.add_argument(
        "--factor", type=int, default=None, help=f"upsampling factor (default: the runs' factor, else {DEFAULT_FACTOR})"
    )
    parser.add_argument(
        "--hires-reference",
        action="store_true",
        help="add a last panel: the teacher's own features of the image at factor x its "
        "native size (a real hi-res reference for resolution-robust teachers like DINOv2)",
    )
    parser.add_argument("--out", default=None, help="output PNG (default: <image name>_features.png)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file (never the input image)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if args.factor is not None and args.factor < 1:
            raise VizError(f"--factor must be an integer >= 1, got {args.factor}")
        out = Path(args.out) if args.out else default_out(args.image)
        check_out(args.image, out, args.force)
        load_image(args.image)  # a missing image fails here, before any model is built
        teacher_cfg = parse_teacher_spec(args.teacher, args.size)
        factor = check_upsampler_specs(args.upsampler, teacher_cfg, args.factor)
        teacher = build_teacher(teacher_cfg, "--teacher")
        upsamplers = build_upsamplers(args.upsampler, teacher, factor)
    except (VizError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    teacher.to(device)
    for module in upsamplers.values():
        module.to(device)
    written = make_figure(args.image, teacher, upsamplers, out, factor, args.hires_reference)
    print(f"wrote {written}")
    return 0

"""The ``bounded`` and ``downsample`` commands of ``python -m radiosharp.bench``: their arguments and runs
(:mod:`radiosharp.bench.bounded`, :mod:`radiosharp.bench.downsample`); ``radiosharp.bench.cli`` dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

Emit = Callable[[dict[str, Any], "str | None", str], None]
Progress = Callable[[argparse.Namespace], "Callable[[str], None] | None"]


def add_parsers(sub: Any) -> None:
    """The two subcommands' arguments, on the bench parser's subparsers."""
    from radiosharp.bench.bounded import DEFAULT_BUDGET_MB, DEFAULT_FACTORS, DEFAULT_METHODS

    bd = sub.add_parser(
        "bounded", help="each upsampler with and without a memory budget (max_memory_mb): time, peak memory, equality"
    )
    bd.add_argument("--teacher", required=True, help="family name or '{family: sam, size: random}'")
    bd.add_argument("--size", choices=("tiny", "real", "random"), default=None)
    bd.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="upsamplers (default: %(default)s)")
    bd.add_argument("--factors", type=int, nargs="+", default=list(DEFAULT_FACTORS), help="default: %(default)s")
    bd.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB, help="default: %(default)s")
    bd.add_argument("--tile-batch", type=int, default=None, help="teacher tiles per call (tile upsamplers)")
    bd.add_argument("--repeats", type=int, default=1)
    bd.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    bd.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    bd.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    bd.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    ds = sub.add_parser(
        "downsample",
        help="the attention downsampler's unfold path vs its tap loop: fwd and fwd+bwd time and peak memory",
    )
    ds.add_argument("--shapes", nargs="+", default=None, help="vits_48to12 vits_24to12 vitl_64to16 (default: all)")
    ds.add_argument("--phases", nargs="+", choices=("fwd", "fwd+bwd"), default=None)
    ds.add_argument("--repeats", type=int, default=3)
    ds.add_argument("--warmup", type=int, default=1)
    ds.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ds.add_argument("--tiny", action="store_true", help="a tiny shape (tests, dry runs)")
    ds.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")


def pick_shapes(requested: list[str] | None, known: dict[str, Any]) -> list[str]:
    """The ``--shapes`` asked for (default: every known one); ValueError naming the choices otherwise."""
    names = requested or list(known)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown --shapes {bad}; choose from {', '.join(known)}")
    return names


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"need --threads >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def run_bounded(args: argparse.Namespace, emit: Emit, progress: Callable[[str], None] | None) -> int:
    from radiosharp.bench.bounded import bench_bounded, bounded_markdown
    from radiosharp.builders import build_teacher
    from radiosharp.registry import UPSAMPLERS
    from radiosharp.viz import VizError, parse_teacher_spec

    try:
        if any(u < 1 for u in args.factors) or args.repeats < 1 or args.budget_mb <= 0:
            raise ValueError(
                f"need --factors >= 1, --repeats >= 1 and --budget-mb > 0; got {args.factors}, {args.repeats}, "
                f"{args.budget_mb}"
            )
        if args.tile_batch is not None and args.tile_batch < 1:
            raise ValueError(f"need --tile-batch >= 1, got {args.tile_batch}")
        for method in args.methods:
            UPSAMPLERS.get(method, "--methods")
        _threads(args)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        teacher = build_teacher(parse_teacher_spec(args.teacher, args.size), "--teacher").to(device)
    except (VizError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = bench_bounded(
        teacher, args.methods, args.factors, args.budget_mb, args.repeats, args.precision, args.tile_batch, progress
    )
    emit(report, args.json, bounded_markdown(report))
    return 0


def run_downsample(args: argparse.Namespace, emit: Emit, progress: Callable[[str], None] | None) -> int:
    from radiosharp.bench.downsample import SHAPES, TINY_SHAPES, bench_downsample, downsample_markdown

    known = TINY_SHAPES if args.tiny else SHAPES
    try:
        names = pick_shapes(args.shapes, known)
        if args.repeats < 1 or args.warmup < 0:
            raise ValueError(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
        _threads(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = bench_downsample(
        {n: known[n] for n in names}, args.phases or ("fwd", "fwd+bwd"), args.warmup, args.repeats, progress
    )
    emit(report, args.json, downsample_markdown(report))
    return 0

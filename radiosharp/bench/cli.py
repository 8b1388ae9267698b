"""``python -m radiosharp.bench {upsample,attention,train,profile,bounded,downsample}``: argument parsing and
the runs (``upsample --table naf``: the NAF-style upsampler cost table of :mod:`radiosharp.bench.upsampler_cost`;
``bounded`` and ``downsample``: :mod:`radiosharp.bench.cli_memory`); the printed tables are
:mod:`radiosharp.bench.cli_tables`'s."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from radiosharp.bench import cli_memory
from radiosharp.bench.cli_tables import train_tables, upsample_tables, upsampler_cost_tables


def _emit(report: dict[str, Any], json_target: str | None, text: str) -> None:
    if json_target == "-":
        print(json.dumps(report, indent=2))
        return
    print(text)
    if json_target:
        path = Path(json_target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {path}")


def _progress(args: argparse.Namespace) -> Callable[[str], None] | None:
    """Progress lines on stderr, unless the report itself is printed (``--json`` without a path)."""
    if args.json == "-":
        return None
    return lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_parser() -> argparse.ArgumentParser:
    import radiosharp.bench as package

    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.bench",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "upsample",
        help="cost of upsamplers vs the teacher at u x input (--table naf: every upsampler alone, vs bilinear)",
    )
    up.add_argument(
        "--table",
        choices=("teacher", "naf"),
        default="teacher",
        help="teacher: upsamplers vs the teacher at u x input, incl./excl. teacher calls, training step; "
        "naf: NAF-style table of every registered upsampler alone (params, fwd and fwd+bwd time and peak "
        "memory, and their ratios to bilinear; default factors 2 4 8 16, see radiosharp.bench.upsampler_cost)",
    )
    up.add_argument(
        "--teacher",
        required=True,
        nargs="+",
        help="family name, '{family: dinov2, size: tiny}', or an upsampler run folder (--table naf: several, "
        "one table each, e.g. two widths)",
    )
    up.add_argument(
        "--size",
        choices=("tiny", "real", "random"),
        default=None,
        help="teacher size for a family name (random: real architecture, random weights)",
    )
    up.add_argument(
        "--factors",
        type=int,
        nargs="+",
        default=None,
        help="upsampling factors (default: 2 3 4; --table naf: 2 4 8 16)",
    )
    up.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="upsamplers (default: bilinear featup featsharp; --table naf: every registered one, bilinear always)",
    )
    up.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    up.add_argument("--batch", type=int, default=1)
    up.add_argument("--repeats", type=int, default=None, help="timed calls (default: 5; --table naf: 3)")
    up.add_argument("--warmup", type=int, default=1)
    up.add_argument("--views", type=int, default=5, help="jittered views per image in the training step")
    up.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    up.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    up.add_argument(
        "--grid",
        type=int,
        default=None,
        help="--table naf: low-res grid side in patches; teacher input = grid * patch px "
        "(default 8: 112px for DINOv2, a CPU size; NAF's table: 28)",
    )
    up.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="--table naf: the teacher input in px (grid = input / patch; 448 = the issue's setting); overrides --grid",
    )
    up.add_argument(
        "--teacher-max-factor",
        type=int,
        default=None,
        help="--table naf: measure the teacher at u x input for factors up to this one and report ratios to it "
        "(default: none; it grows as u^2 tokens, so leave 16x to a GPU)",
    )
    up.add_argument("--plot", default=None, metavar="PNG", help="--table naf: time and memory vs factor, log scale")
    up.add_argument(
        "--query-chunk",
        type=int,
        default=None,
        help="--table naf: queries per attention call of the global-attention upsamplers (default: theirs)",
    )
    up.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the report as JSON to PATH (no PATH: print JSON instead of the tables)",
    )
    at = sub.add_parser(
        "attention",
        help="neighbourhood-attention backends side by side (reference, reference_v1, flex, triton): time and peak "
        "memory, fwd and fwd+bwd, at the JBU and FeatSharp block shapes (radiosharp.bench.attention)",
    )
    at.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        help="jbu featsharp768 featsharp2048 (default: all); --tiny: tiny shapes for a smoke run",
    )
    at.add_argument(
        "--backends", nargs="+", default=None, help="default: reference reference_tiled reference_v1 flex triton"
    )
    at.add_argument("--phases", nargs="+", choices=("fwd", "fwd+bwd"), default=None)
    at.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    at.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    at.add_argument("--repeats", type=int, default=3)
    at.add_argument("--warmup", type=int, default=1)
    at.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    at.add_argument("--tiny", action="store_true", help="tiny shapes (tests, dry runs)")
    at.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    tr = sub.add_parser("train", help="images/s and phase shares of a distillation step")
    tr.add_argument("recipe", help="a kind: distill recipe")
    tr.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    tr.add_argument("--steps", type=int, default=3)
    tr.add_argument("--warmup", type=int, default=1)
    tr.add_argument(
        "--stats-images", type=int, default=8, help="images for PHI-S statistics when the recipe has no statistics file"
    )
    tr.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    pr = sub.add_parser("profile", help="torch.profiler of training steps of any recipe: top ops, syncs, copies")
    pr.add_argument("recipe", help="a recipe of any kind")
    pr.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    pr.add_argument("--steps", type=int, default=2, help="profiled steps (default 2)")
    pr.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default 1)")
    pr.add_argument("--top", type=int, default=25, help="ops to list (default 25)")
    pr.add_argument("--trace", default=None, metavar="PATH", help="also write the Chrome trace here")
    pr.add_argument("--stats-images", type=int, default=8, help="PHI-S images when the recipe has no statistics")
    pr.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    cli_memory.add_parsers(sub)
    return parser


def run_upsample(args: argparse.Namespace) -> int:
    from radiosharp.bench.upsample import DEFAULT_METHODS, bench_upsample
    from radiosharp.bench.upsampler_cost import DEFAULT_FACTORS, DEFAULT_GRID, DEFAULT_REPEATS, bench_upsampler_cost
    from radiosharp.builders import build_teacher
    from radiosharp.registry import UPSAMPLERS
    from radiosharp.viz import VizError, parse_teacher_spec

    naf = args.table == "naf"
    factors = args.factors or list(DEFAULT_FACTORS if naf else (2, 3, 4))
    repeats = args.repeats if args.repeats is not None else (DEFAULT_REPEATS if naf else 5)
    methods = args.methods or (None if naf else list(DEFAULT_METHODS))
    grid = args.grid if args.grid is not None else DEFAULT_GRID
    try:
        bad = [u for u in factors if u < 1]
        if bad or args.batch < 1 or repeats < 1 or args.warmup < 0 or args.views < 1:
            raise ValueError(
                f"need factors >= 1 (got {factors}), --batch >= 1, --repeats >= 1, --warmup >= 0, --views >= 1"
            )
        naf_only = (args.grid, args.query_chunk, args.input_size, args.teacher_max_factor, args.plot)
        if not naf and any(v is not None for v in naf_only):
            raise ValueError(
                "--grid, --query-chunk, --input-size, --teacher-max-factor and --plot apply to --table naf only"
            )
        if not naf and len(args.teacher) > 1:
            raise ValueError("several --teacher values apply to --table naf only")
        if grid < 1 or (args.query_chunk is not None and args.query_chunk < 1):
            raise ValueError(f"need --grid >= 1 and --query-chunk >= 1, got {grid}, {args.query_chunk}")
        for method in methods or ():
            UPSAMPLERS.get(method, "--methods")
        if args.input_size is not None and args.input_size < 1:
            raise ValueError(f"need --input-size >= 1, got {args.input_size}")
        device = _device(args)
        teachers = [build_teacher(parse_teacher_spec(spec, args.size), "--teacher") for spec in args.teacher]
    except (VizError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # the measurement settings both tables share
    measure: dict[str, Any] = {
        "factors": factors,
        "methods": methods,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": repeats,
        "precision": args.precision,
        "progress": _progress(args),
    }
    if naf:
        from radiosharp.bench.upsampler_cost import plot_upsampler_cost, upsampler_cost_teacher_markdown

        reports = []
        for teacher in teachers:
            teacher.to(device)
            side = grid if args.input_size is None else max(1, args.input_size // teacher.patch_size)
            reports.append(
                bench_upsampler_cost(
                    teacher,
                    grid=side,
                    query_chunk=args.query_chunk,
                    teacher_max_factor=args.teacher_max_factor if args.teacher_max_factor is not None else 0,
                    **measure,
                )
            )
            teacher.to("cpu")
        texts = []
        for report in reports:
            text = upsampler_cost_tables(report)
            ratios = upsampler_cost_teacher_markdown(report)
            texts.append(text + (f"\n\n{ratios}" if ratios else ""))
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            plot_upsampler_cost(reports, args.plot)
            texts.append(f"wrote {args.plot}")
        combined = reports[0] if len(reports) == 1 else {"table": "naf", "reports": reports}
        _emit(combined, args.json, "\n\n".join(texts))
        return 0
    teacher = teachers[0].to(device)
    report = bench_upsample(teacher, views=args.views, train=not args.no_train, **measure)
    _emit(report, args.json, upsample_tables(report))
    return 0


def _run_on_recipe(
    args: argparse.Namespace, checks: list[tuple[bool, str]], measure: Callable[[Any], dict[str, Any]]
) -> dict[str, Any] | None:
    """The recipe of ``args`` measured by ``measure``; None (after one error line) when a check fails or
    the recipe is bad."""
    from radiosharp.recipe import RecipeError, load_recipe

    try:
        for bad, message in checks:
            if bad:
                raise ValueError(message)
        return measure(load_recipe(args.recipe, args.overrides))
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def run_train(args: argparse.Namespace) -> int:
    from radiosharp.bench.train import bench_train

    checks = [
        (
            args.steps < 1 or args.warmup < 0 or args.stats_images < 2,
            f"need --steps >= 1, --warmup >= 0 and --stats-images >= 2, got {args.steps}, {args.warmup}, "
            f"{args.stats_images}",
        )
    ]
    report = _run_on_recipe(args, checks, lambda r: bench_train(r, args.steps, args.warmup, args.stats_images))
    if report is None:
        return 2
    _emit(report, args.json, train_tables(report))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from radiosharp.bench.profile import profile_table, profile_training

    checks = [
        (
            args.steps < 1 or args.warmup < 0 or args.top < 1 or args.stats_images < 2,
            f"need --steps >= 1, --warmup >= 0, --top >= 1 and --stats-images >= 2, got {args.steps}, "
            f"{args.warmup}, {args.top}, {args.stats_images}",
        ),
        (
            args.trace is not None and Path(args.trace).is_dir(),
            f"--trace {args.trace} is a folder; give a file path, e.g. {args.trace}/trace.json",
        ),
    ]
    report = _run_on_recipe(
        args, checks, lambda r: profile_training(r, args.steps, args.warmup, args.top, args.trace, args.stats_images)
    )
    if report is None:
        return 2
    _emit(report, args.json, profile_table(report))
    return 0


def run_attention(args: argparse.Namespace) -> int:
    from radiosharp.bench.attention import BACKENDS, SHAPES, TINY_SHAPES, attention_tables, bench_attention, kernels

    kernel_backends = kernels()[2]

    known = TINY_SHAPES if args.tiny else SHAPES
    try:
        names = cli_memory.pick_shapes(args.shapes, known)
        backends = args.backends or list(BACKENDS)
        bad = [b for b in backends if b not in kernel_backends or b == "auto"]
        if bad:
            raise ValueError(
                f"unknown --backends {bad}; choose from {' '.join(b for b in kernel_backends if b != 'auto')}"
            )
        if args.repeats < 1 or args.warmup < 1:
            raise ValueError(f"need --repeats >= 1 and --warmup >= 1, got {args.repeats}, {args.warmup}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"need --threads >= 1, got {args.threads}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args)
    progress = _progress(args)
    report = bench_attention(
        {n: known[n] for n in names},
        backends,
        args.phases or ("fwd", "fwd+bwd"),
        device,
        args.precision,
        args.warmup,
        args.repeats,
        progress,
    )
    _emit(report, args.json, attention_tables(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "attention":
        return run_attention(args)
    if args.command == "profile":
        return run_profile(args)
    if args.command == "bounded":
        return cli_memory.run_bounded(args, _emit, _progress(args))
    if args.command == "downsample":
        return cli_memory.run_downsample(args, _emit, _progress(args))
    return run_upsample(args) if args.command == "upsample" else run_train(args)

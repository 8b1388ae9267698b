"""The argument parser of ``python -m radiosharp.eval`` (:mod:`radiosharp.eval.cli`): its five commands and options."""

from __future__ import annotations

import argparse
from pathlib import Path

from radiosharp.eval.settings import SUITES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="evaluate only these tasks")
    parser.add_argument(
        "--suite", choices=tuple(SUITES), default=None, help="a declared task suite (default: the settings' suite)"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    parser.add_argument("--force", action="store_true", help="recompute even when cached results exist")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m radiosharp.eval`` (``description``: the help's text, the CLI module's doc)."""
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.eval", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mtl = sub.add_parser("mtl", help="MTL gain of runs against a baseline run (or single-task baselines)")
    mtl.add_argument("runs", nargs="+", metavar="RUN")
    mtl.add_argument("--baseline", default=None, metavar="RUN", help="the baseline of every task")
    mtl.add_argument(
        "--task-baseline",
        action="append",
        default=[],
        metavar="TASK=RUN",
        help="the baseline of one task (repeatable; overrides --baseline for that task)",
    )
    mtl.add_argument(
        "--report", type=Path, default=None, help="Markdown report path (default: <first run>/eval/mtl_report.md)"
    )
    _common(mtl)
    run = sub.add_parser("run", help="evaluate one run (writes RUN/eval/metrics.json)")
    run.add_argument("run", metavar="RUN")
    _common(run)
    compare = sub.add_parser("compare", help="runs side by side: table, bar charts, metric-vs-factor lines")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument(
        "--report", type=Path, default=None, help="Markdown report path (default: <first run>/eval/compare_report.md)"
    )
    _common(compare)
    up = sub.add_parser("upsample", help="one teacher x upsamplers over input sizes and factors (FeatSharp fig. 7)")
    up.add_argument("--teacher", required=True, help="family name, '{family: dinov2, size: tiny}', or an upsampler run")
    up.add_argument("--size", choices=("tiny", "real"), default=None, help="teacher size for a family name")
    up.add_argument(
        "--upsampler",
        nargs="+",
        action="extend",
        default=[],
        metavar="SPEC",
        help="training-free names (bilinear, tiles, ...) or upsampler run folders (repeatable)",
    )
    up.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4], metavar="U", help="default: 1 2 4")
    up.add_argument(
        "--input-sizes", nargs="+", type=int, default=None, metavar="PX", help="teacher input sides (default: native)"
    )
    up.add_argument(
        "--teacher-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="PX",
        help="also the teacher alone at these input sides (e.g. u x input: the hi-res reference line)",
    )
    up.add_argument("--settings", type=Path, default=None, help="a YAML eval section (or a recipe with eval:)")
    up.add_argument("--out", type=Path, default=Path("runs/upsample_eval"), help="output folder")
    _common(up)
    health = sub.add_parser(
        "health", help="student health: mode-switching curve, high-norm outlier tokens, tile-seam energy"
    )
    health.add_argument("run", metavar="RUN")
    health.add_argument(
        "--teacher", nargs="+", action="extend", default=[], metavar="NAME", help="only these teacher heads"
    )
    health.add_argument(
        "--sizes", nargs="+", type=int, default=None, metavar="PX", help="input sides (default: 224 448 672 896 1024)"
    )
    health.add_argument("--images", type=int, default=None, metavar="N", help="images to average over (default: 4)")
    health.add_argument(
        "--data", choices=("photos", "synthetic"), default="photos", help="packaged photographs or synthetic scenes"
    )
    health.add_argument(
        "--outlier-k", type=float, default=None, metavar="K", help="outlier rule: norm > median + K*MAD (default: 6)"
    )
    health.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/eval)")
    health.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    health.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser

"""``python -m radiosharp.eval``: evaluate runs and compare them by MTL gain.

    python -m radiosharp.eval mtl RUN [RUN ...] --baseline RUN [--tasks T ...] [--json] [--force] [--report PATH]
    python -m radiosharp.eval run RUN [--tasks T ...] [--json] [--force]

``mtl`` evaluates the baseline and every run with the baseline's eval settings (its
``recipe.yaml`` ``eval:`` section, else the default suite), reusing cached
``RUN/eval/metrics.json`` results, prints one row per run (a column per task metric,
then delta per task and Delta_m, each with its significance against the seed spread),
and writes a Markdown report (default ``<first run>/eval/mtl_report.md``) with two
pictures beside it that it links: ``<report stem>_deltas.png`` (a bar of delta per task
per run, seed-spread error bars, Delta_m in the title) and ``<report stem>_table.png``
(the report's table). A missing run, or one without an export, is a
one-line error and exit status 2, before anything is evaluated or written. So is every
settings error (an unknown key, named by its dotted path, is found before any model
loads) and every data error (a folder that cannot be opened, a mask id outside
``num_classes``, an 8-bit depth map, val classes the train data lacks), printed as
``error: <one line>`` on stderr. ``RADIOSHARP_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from radiosharp.data.errors import DataError, one_line
from radiosharp.eval.mtl import mtl_gain
from radiosharp.eval.report import markdown_report, text_table
from radiosharp.eval.runs import check_run, evaluate_run
from radiosharp.eval.settings import EvalError, EvalSettings, read_run_settings, select_tasks
from radiosharp.recipe import RecipeError
from radiosharp.registry import BadOptionError, UnknownNameError

# Bad input, reported as one line and exit status 2: the run folder, its settings, the data.
INPUT_ERRORS = (EvalError, DataError, RecipeError, UnknownNameError, BadOptionError, FileNotFoundError)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="evaluate only these tasks")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    parser.add_argument("--force", action="store_true", help="recompute even when cached results exist")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mtl = sub.add_parser("mtl", help="MTL gain of runs against a baseline run")
    mtl.add_argument("runs", nargs="+", metavar="RUN")
    mtl.add_argument("--baseline", required=True, metavar="RUN")
    mtl.add_argument(
        "--report", type=Path, default=None, help="Markdown report path (default: <first run>/eval/mtl_report.md)"
    )
    _common(mtl)
    run = sub.add_parser("run", help="evaluate one run (writes RUN/eval/metrics.json)")
    run.add_argument("run", metavar="RUN")
    _common(run)
    return parser


def _evaluate(
    runs: list[str], settings: EvalSettings, kinds: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    out = {}
    progress = not args.no_progress
    tasks = select_tasks(settings.task_options(kinds[runs[0]]), args.tasks, settings)  # before any model loads
    for run in tqdm(runs, desc="runs", disable=None if progress else True):
        out[run] = evaluate_run(run, settings, tasks, force=args.force, device=args.device, progress=progress)
    return out


def cmd_mtl(args: argparse.Namespace) -> int:
    runs = [args.baseline] + [r for r in args.runs if r != args.baseline]
    kinds = {run: check_run(run) for run in runs}
    mixed = {run: kind for run, kind in kinds.items() if kind != kinds[args.baseline]}
    if mixed:
        raise EvalError(
            f"the baseline {args.baseline} is a '{kinds[args.baseline]}' run but "
            + ", ".join(f"{r} is a '{k}' run" for r, k in mixed.items())
            + "; MTL gain compares runs of one kind"
        )
    settings = read_run_settings(args.baseline)
    for run in runs[1:]:
        try:
            own = read_run_settings(run)
        except EvalError:
            own = None
        if own != settings:
            print(f"note: {run} is evaluated with the baseline's eval settings, not its own", file=sys.stderr)
    results = _evaluate(runs, settings, kinds, args)
    base = results[args.baseline]
    rows = [{"run": args.baseline, "kind": kinds[args.baseline], "tasks": base, "mtl": None}]
    rows += [{"run": r, "kind": kinds[r], "tasks": results[r], "mtl": mtl_gain(results[r], base)} for r in runs[1:]]
    report = args.report or Path(args.runs[0]) / "eval" / "mtl_report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    from radiosharp.eval.plots import mtl_pictures  # matplotlib only when a report is written

    pictures = mtl_pictures(rows, report)
    links = {alt: path.name for alt, path in pictures.items()}  # beside the report
    report.write_text(markdown_report(rows, args.baseline, settings.model_dump(mode="json"), pictures=links))
    if args.json:
        print(
            json.dumps(
                {
                    "baseline": args.baseline,
                    "settings": settings.model_dump(mode="json"),
                    "runs": rows,
                    "report": str(report),
                    "pictures": [str(p) for p in pictures.values()],
                },
                indent=2,
            )
        )
    else:
        print(text_table(rows))
        print(f"\nreport: {report}")
        print("pictures: " + ", ".join(str(p) for p in pictures.values()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    kinds = {args.run: check_run(args.run)}
    settings = read_run_settings(args.run)
    results = _evaluate([args.run], settings, kinds, args)
    row = {"run": args.run, "kind": kinds[args.run], "tasks": results[args.run], "mtl": None}
    if args.json:
        print(json.dumps({"settings": settings.model_dump(mode="json"), "runs": [row]}, indent=2))
    else:
        print(text_table([row], deltas=False))
        print(f"\nresults: {Path(args.run) / 'eval' / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_mtl(args) if args.command == "mtl" else cmd_run(args)
    except INPUT_ERRORS as err:
        if os.environ.get("RADIOSHARP_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2

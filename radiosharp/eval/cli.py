"""``python -m radiosharp.eval``: evaluate runs, compare them, and measure MTL gain.

    python -m radiosharp.eval run RUN [--tasks T ...] [--suite S] [--json] [--force]
    python -m radiosharp.eval mtl RUN [RUN ...] --baseline RUN [--task-baseline TASK=RUN ...] [--report PATH]
    python -m radiosharp.eval compare RUN [RUN ...] [--suite S] [--report PATH]
    python -m radiosharp.eval upsample --teacher T --upsampler U [U ...] --factors 1 2 4 --input-sizes 224 448
    python -m radiosharp.eval health RUN [--teacher NAME ...] [--sizes 224 448 ...] [--images N] [--out DIR]

``mtl`` evaluates the baseline and every run with the baseline's eval settings (its
``recipe.yaml`` ``eval:`` section, else the default suite; ``--suite`` picks a declared
suite, ``--tasks`` single tasks), reusing cached ``RUN/eval/metrics.json`` results, prints
one row per run (a column per task metric, then delta per task and Delta_m, each with its
significance against the seed spread), and writes a Markdown report (default ``<first
run>/eval/mtl_report.md``) with two pictures beside it that it links:
``<report stem>_deltas.png`` (a bar of delta per task per run, seed-spread error bars,
Delta_m in the title) and ``<report stem>_table.png`` (the report's table). With
``--task-baseline TASK=RUN`` a task's baseline is that run (single-task baselines, as
multi-task papers compare against); the other tasks use ``--baseline``; each baseline run
is evaluated only on the tasks it is the baseline of.

``compare`` puts runs side by side without a baseline: the table, a bar chart per task
metric and, for upsampler runs of several factors, metric-vs-factor lines per upsampler.
``upsample`` is the upsampler mode (:mod:`radiosharp.eval.upsample_mode`): one teacher and
several upsamplers over a grid of input sizes and factors (the FeatSharp paper's figure 7).
The dense probes also write example pictures (image | ground truth | prediction) under
``RUN/eval/examples``. Every task result carries its wall time in seconds.
``health`` runs a student's health checks (:mod:`radiosharp.eval.health`): the
mode-switching curve, high-norm outlier tokens and tile-seam energy, into
``RUN/eval/health.json`` and three PNGs.

A missing run, or one without an export, is a one-line error and exit status 2, before
anything is evaluated or written. So is every settings error (an unknown key, named by
its dotted path, is found before any model loads) and every data error (a folder that
cannot be opened, a mask id outside ``num_classes``, an 8-bit depth map, val classes the
train data lacks), printed as ``error: <one line>`` on stderr. ``RADIOSHARP_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from radiosharp.data.errors import DataError, one_line
from radiosharp.eval.cli_parser import build_parser
from radiosharp.eval.mtl import mtl_gain
from radiosharp.eval.report import markdown_compare_report, markdown_report, text_table
from radiosharp.eval.runs import check_run, evaluate_run
from radiosharp.eval.settings import EvalError, EvalSettings, parse_settings, read_run_settings, select_tasks
from radiosharp.recipe import RecipeError
from radiosharp.registry import BadOptionError, UnknownNameError
from radiosharp.specs import SpecError

# Bad input, reported as one line and exit status 2: the run folder, its settings, the data.
INPUT_ERRORS = (EvalError, DataError, RecipeError, UnknownNameError, BadOptionError, FileNotFoundError, SpecError)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def _evaluate(
    plan: dict[str, dict[str, dict[str, Any]]], settings: EvalSettings, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Run -> task -> result for ``plan`` (run -> its tasks and their options), under one progress bar."""
    out = {}
    total = sum(len(tasks) for tasks in plan.values())
    with tqdm(total=total, desc="eval", unit="task", disable=None if _progress(args) else True) as bar:
        for run, tasks in plan.items():
            out[run] = evaluate_run(run, settings, tasks, force=args.force, device=args.device, bar=bar)
    return out


def _tasks(settings: EvalSettings, kind: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The tasks to run, checked (names, options, data configs) before any model loads."""
    return select_tasks(settings.task_options(kind, args.suite), args.tasks, settings)


def _same_kind(kinds: dict[str, str], reference: str) -> None:
    mixed = {run: kind for run, kind in kinds.items() if kind != kinds[reference]}
    if mixed:
        raise EvalError(
            f"{reference} is a '{kinds[reference]}' run but "
            + ", ".join(f"{r} is a '{k}' run" for r, k in mixed.items())
            + "; compare runs of one kind"
        )


def _note_settings(runs: list[str], settings: EvalSettings, whose: str) -> None:
    for run in runs:
        try:
            own = read_run_settings(run)
        except EvalError:
            own = None
        if own != settings:
            print(f"note: {run} is evaluated with {whose} eval settings, not its own", file=sys.stderr)


def parse_task_baselines(specs: list[str]) -> dict[str, str]:
    """``["semseg=runs/a", ...]`` -> task -> run; EvalError for a malformed or repeated one."""
    out: dict[str, str] = {}
    for spec in specs:
        task, sep, run = spec.partition("=")
        if not sep or not task or not run:
            raise EvalError(f"--task-baseline '{spec}': expected TASK=RUN, e.g. semseg=runs/semseg_only")
        if task in out:
            raise EvalError(f"--task-baseline: task '{task}' is given twice ({out[task]}, {run})")
        out[task] = run
    return out


def cmd_mtl(args: argparse.Namespace) -> int:
    task_baselines = parse_task_baselines(args.task_baseline)
    if args.baseline is None and not task_baselines:
        raise EvalError("eval mtl needs a baseline: --baseline RUN and/or --task-baseline TASK=RUN")
    reference = args.baseline or next(iter(task_baselines.values()))
    baselines = list(dict.fromkeys([*([args.baseline] if args.baseline else []), *task_baselines.values()]))
    runs = [r for r in dict.fromkeys(args.runs) if r not in baselines]
    if not runs:
        raise EvalError("eval mtl: every RUN is also a baseline; give at least one run to compare")
    kinds = {run: check_run(run) for run in baselines + runs}
    _same_kind(kinds, reference)
    settings = read_run_settings(reference)
    _note_settings([r for r in baselines + runs if r != reference], settings, "the baseline's")
    tasks = _tasks(settings, kinds[reference], args)
    unknown = sorted(set(task_baselines) - set(tasks))
    if unknown:
        raise EvalError(
            f"--task-baseline names task {', '.join(unknown)}, which is not evaluated; tasks: {', '.join(tasks)}"
        )
    base_of = {task: task_baselines.get(task, args.baseline) for task in tasks}
    orphans = [task for task, run in base_of.items() if run is None]
    if orphans:
        raise EvalError(
            f"no baseline for task {', '.join(orphans)}: add --baseline RUN or --task-baseline {orphans[0]}=RUN"
        )
    plan: dict[str, dict[str, dict[str, Any]]] = {}
    for task, run in base_of.items():
        plan.setdefault(run, {})[task] = tasks[task]
    for run in runs:
        plan[run] = dict(tasks)
    results = _evaluate(plan, settings, args)
    base = {task: results[run][task] for task, run in base_of.items()}
    label = args.baseline if not task_baselines else "baselines: " + ", ".join(f"{t}={r}" for t, r in base_of.items())
    rows = [{"run": label, "kind": kinds[reference], "tasks": base, "mtl": None}]
    rows += [{"run": r, "kind": kinds[r], "tasks": results[r], "mtl": mtl_gain(results[r], base)} for r in runs]
    report = args.report or Path(runs[0]) / "eval" / "mtl_report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    from radiosharp.eval.plots import mtl_pictures  # matplotlib only when a report is written

    pictures = mtl_pictures(rows, report)
    links = {alt: path.name for alt, path in pictures.items()}  # beside the report
    report.write_text(markdown_report(rows, label, settings.model_dump(mode="json"), pictures=links))
    if args.json:
        print(
            json.dumps(
                {
                    "baseline": label,
                    "baselines": base_of,
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
    kind = check_run(args.run)
    settings = read_run_settings(args.run)
    results = _evaluate({args.run: _tasks(settings, kind, args)}, settings, args)
    row = {"run": args.run, "kind": kind, "tasks": results[args.run], "mtl": None}
    if args.json:
        print(json.dumps({"settings": settings.model_dump(mode="json"), "runs": [row]}, indent=2))
    else:
        print(text_table([row], deltas=False))
        print(f"\nresults: {Path(args.run) / 'eval' / 'metrics.json'}")
    return 0


def upsampler_factors(runs: list[str], kinds: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Run -> (upsampler name, factor) for upsampler runs (the metric-vs-factor lines of ``compare``)."""
    from radiosharp.export import read_export_meta

    out = {}
    for run in runs:
        if kinds[run] == "upsampler":
            config = read_export_meta(run).config
            out[run] = (str((config.get("upsampler") or {}).get("name", Path(run).name)), int(config["factor"]))
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    runs = list(dict.fromkeys(args.runs))
    kinds = {run: check_run(run) for run in runs}
    _same_kind(kinds, runs[0])
    settings = read_run_settings(runs[0])
    _note_settings(runs[1:], settings, "the first run's")
    tasks = _tasks(settings, kinds[runs[0]], args)
    results = _evaluate({run: dict(tasks) for run in runs}, settings, args)
    rows = [{"run": r, "kind": kinds[r], "tasks": results[r], "mtl": None} for r in runs]
    report = args.report or Path(runs[0]) / "eval" / "compare_report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    from radiosharp.eval.plots import compare_pictures

    pictures = compare_pictures(rows, report, upsampler_factors(runs, kinds))
    links = {alt: path.name for alt, path in pictures.items()}
    report.write_text(markdown_compare_report(rows, settings.model_dump(mode="json"), pictures=links))
    if args.json:
        print(json.dumps({"runs": rows, "report": str(report), "pictures": [str(p) for p in pictures.values()]}))
    else:
        print(text_table(rows, deltas=False))
        print(f"\nreport: {report}")
        print("pictures: " + ", ".join(str(p) for p in pictures.values()))
    return 0


def _upsample_settings(path: Path | None) -> EvalSettings:
    if path is None:
        return parse_settings({})
    if not path.is_file():
        raise EvalError(f"--settings {path}: no such file")
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise EvalError(f"--settings {path}: not valid YAML: {one_line(err)}") from None
    section = loaded.get("eval", loaded) if isinstance(loaded, dict) else loaded
    return parse_settings(section or {}, where=str(path))


def cmd_upsample(args: argparse.Namespace) -> int:
    from radiosharp.builders import build_teacher
    from radiosharp.eval import upsample_mode as mode
    from radiosharp.eval.runs import default_device
    from radiosharp.specs import parse_teacher_spec

    if not args.upsampler and 1 not in args.factors:
        raise EvalError("eval upsample: give --upsampler SPEC ... (or factor 1 for the teacher alone)")
    settings = _upsample_settings(args.settings)
    teacher_cfg = parse_teacher_spec(args.teacher, args.size)
    methods = mode.check_methods(args.upsampler, teacher_cfg, args.factors)
    if args.tasks is None and args.suite is None and settings.tasks is None:
        args.tasks = ["semseg"]  # the figure's metric
    tasks = _tasks(settings, "upsampler", args)
    if args.out.exists() and not args.out.is_dir():
        raise EvalError(f"--out {args.out} is a file; give a folder")
    teacher = build_teacher(teacher_cfg, "--teacher")
    input_sizes = args.input_sizes or [int(teacher.native_size)]
    mode.check_input_sizes([*input_sizes, *(args.teacher_sizes or ())], int(teacher.patch_size))
    cells = mode.plan_cells(methods, input_sizes, args.factors, args.teacher_sizes)
    rows = mode.evaluate_grid(
        teacher,
        teacher_cfg,
        cells,
        settings,
        tasks,
        args.out,
        device=args.device or default_device(),
        force=args.force,
        progress=_progress(args),
    )
    pictures = mode.write_pictures(rows, args.out)
    command = "python -m radiosharp.eval " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    report = args.out / mode.REPORT_FILE
    links = {alt: path.name for alt, path in pictures.items()}
    report.write_text(mode.markdown_grid_report(rows, teacher_cfg, links, command))
    if args.json:
        print(json.dumps({"cells": rows, "report": str(report), "pictures": [str(p) for p in pictures.values()]}))
    else:
        from radiosharp.bench.table import format_table

        print(format_table(*mode.grid_table(rows)))
        print(f"\nreport: {report}")
        print("pictures: " + ", ".join(str(p) for p in pictures.values()))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from radiosharp.eval import health
    from radiosharp.eval.runs import default_device, load_featurizer

    kind = check_run(args.run)
    if kind != "student":
        raise EvalError(f"{args.run}: eval health takes a student run, not a '{kind}' export")
    if args.images is not None and args.images < 1:
        raise EvalError(f"--images {args.images}: give a positive count")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise EvalError(f"--out {args.out} is a file; give a folder")
    student, _ = load_featurizer(args.run)
    report, pictures = health.run_health(
        args.run,
        student,
        teacher_names=args.teacher or None,
        sizes=args.sizes or health.DEFAULT_SIZES,
        images=args.images or health.DEFAULT_IMAGES,
        data=args.data,
        out=args.out,
        device=args.device or default_device(),
        k=health.OUTLIER_K if args.outlier_k is None else args.outlier_k,
    )
    out = (args.out or Path(args.run) / "eval") / health.HEALTH_FILE
    if args.json:
        print(json.dumps({**report, "json": str(out), "pictures": [str(p) for p in pictures.values()]}, indent=2))
    else:
        print(health.health_table(report))
        print(f"\nresults: {out}")
        print("pictures: " + ", ".join(str(p) for p in pictures.values()))
    return 0


COMMANDS = {"mtl": cmd_mtl, "run": cmd_run, "compare": cmd_compare, "upsample": cmd_upsample, "health": cmd_health}


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except INPUT_ERRORS as err:
        if os.environ.get("RADIOSHARP_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2

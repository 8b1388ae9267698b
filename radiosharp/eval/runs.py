"""Evaluating a run folder: load its exported featurizer, run the tasks, cache the results.

A run's export (``model.json`` + ``model.safetensors``) is turned back into a
featurizer by the loader for its ``kind`` ("student" ->
``radiosharp.student_io.load_student``, "upsampler" ->
``radiosharp.upsampled.load_upsampled_teacher``; imported lazily). A student gets its
CLIP text towers only when zero-shot is among the tasks: building them loads the
teachers' text weights, which no other task needs. Results go to
``RUN/eval/metrics.json``::

    {"run": ..., "kind": ..., "export": {fingerprint}, "context": {settings but tasks},
     "tasks": {name: {"options": {...}, "seconds": 12.3, "status": "ok", "metrics": {...}}
               | {"status": "skipped", ...}}}

(``seconds``: the task's wall time, its share of feature extraction included) and are
reused on the next call for every task whose options (defaults filled in), the context
(settings and radiosharp version) and the export fingerprint (size + mtime of the export
files) are unchanged, unless forced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from radiosharp.eval.features import FeatureStore
from radiosharp.eval.settings import EvalError, EvalSettings, resolved_options
from radiosharp.eval.task import EvalContext
from radiosharp.export import CONFIG, WEIGHTS, atomic_write_bytes, read_export_meta

METRICS_FILE = Path("eval") / "metrics.json"
EXAMPLES_DIR = Path("eval") / "examples"


def _load_student(run_dir: Path, text_towers: bool = False) -> nn.Module:
    from radiosharp.student_io import load_student

    return load_student(run_dir, text_towers=text_towers)


def _load_upsampled(run_dir: Path, text_towers: bool = False) -> nn.Module:
    from radiosharp.upsampled import load_upsampled_teacher

    return load_upsampled_teacher(run_dir)  # a CLIP teacher brings its own text tower


# kind -> loader(run_dir, text_towers) -> featurizer
RUN_LOADERS: dict[str, Callable[..., nn.Module]] = {"student": _load_student, "upsampler": _load_upsampled}


def check_run(run_dir: str | Path) -> str:
    """The export kind of ``run_dir``; EvalError (one line, naming the run) when it cannot be evaluated."""
    try:
        kind = read_export_meta(run_dir).kind
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err)) from None
    if kind not in RUN_LOADERS:
        raise EvalError(
            f"{run_dir}: cannot evaluate an export of kind '{kind}'; valid kinds: {', '.join(sorted(RUN_LOADERS))}"
        )
    return kind


def load_featurizer(run_dir: str | Path, text_towers: bool = False) -> tuple[nn.Module, str]:
    """The run's exported featurizer and its kind; EvalError naming the run when it cannot load.

    ``text_towers``: attach a student's CLIP text towers (for zero-shot)."""
    kind = check_run(run_dir)
    try:
        return RUN_LOADERS[kind](Path(run_dir), text_towers=text_towers), kind
    except (ImportError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvalError(f"{run_dir}: cannot load its '{kind}' export: {first}") from err


def export_fingerprint(run_dir: Path) -> dict[str, list[int]]:
    out = {}
    for name in (CONFIG, WEIGHTS):
        st = (run_dir / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def read_cached(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_run(
    run_dir: str | Path,
    settings: EvalSettings,
    tasks: dict[str, dict[str, Any]],
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
    featurizer: nn.Module | None = None,
    bar: Any = None,
) -> dict[str, dict[str, Any]]:
    """Task name -> result for ``run_dir`` (cached results reused; see module doc).

    Writes ``RUN/eval/metrics.json`` and the dense probes' example pictures under
    ``RUN/eval/examples``. ``featurizer`` skips loading the export (tests). ``bar``: a tqdm
    bar over (run, task) pairs that the caller owns; it is advanced once per task (cached ones
    included) and replaces this function's own bars, so several runs show one bar.
    """
    import radiosharp.registry as registry

    run_dir = Path(run_dir)
    kind = check_run(run_dir)
    device = device or default_device()
    context = settings.context()
    fingerprint = export_fingerprint(run_dir)
    cached = None if force else read_cached(run_dir)
    kept: dict[str, dict[str, Any]] = {}
    if cached and cached.get("context") == context and cached.get("export") == fingerprint:
        kept = dict(cached.get("tasks", {}))
    results: dict[str, dict[str, Any]] = {}
    todo = [
        name
        for name, opts in tasks.items()
        if name not in kept or kept[name].get("options") != resolved_options(name, opts)
    ]
    for name in tasks:
        if name not in todo:
            results[name] = kept[name]
            if bar is not None:
                bar.update(1)
    if todo:
        if featurizer is None:
            featurizer, _ = load_featurizer(run_dir, text_towers="zeroshot" in todo)
        featurizer = featurizer.to(device).eval()
        inner = progress and bar is None
        store = FeatureStore(
            featurizer, settings.image_size, settings.batch_size, device, settings.summary, settings.dense, inner
        )
        ctx = EvalContext(featurizer, store, settings.data, settings.val_data, kind, device, inner)
        ctx.extra["examples_dir"] = run_dir / EXAMPLES_DIR
        own = tqdm(todo, desc=f"tasks {run_dir.name}", leave=False, disable=None if inner else True)
        for name in own:
            own.set_postfix_str(name)
            if bar is not None:
                bar.set_postfix_str(f"{run_dir.name}: {name}")
            task = registry.TASKS.build(name, f"eval.tasks.{name}", **tasks[name])
            start = time.perf_counter()
            result = task.run(ctx)
            seconds = round(time.perf_counter() - start, 3)
            results[name] = {"options": resolved_options(name, tasks[name]), "seconds": seconds, **result}
            if bar is not None:
                bar.update(1)
    kept.update(results)
    record = {"run": str(run_dir), "kind": kind, "export": fingerprint, "context": context, "tasks": kept}
    atomic_write_bytes(run_dir / METRICS_FILE, json.dumps(record, indent=2, allow_nan=True).encode())
    return {name: results[name] for name in tasks}

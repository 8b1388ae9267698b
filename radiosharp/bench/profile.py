"""``python -m radiosharp.bench profile RECIPE``: where a training step's time goes, op by op.

The recipe's own trainer (any ``kind``) runs its real loop (:meth:`Trainer.loop`: autocast,
backward, the non-finite check, the optimizer) in a temporary run folder for ``warmup + steps``
steps; :mod:`torch.profiler` records the last ``steps`` of them. Nothing is exported or
checkpointed. The report lists the ops by self time (what an op costs without the ops it
calls), their calls per step, and three things a profile shows as avoidable work:

- ``host_syncs``: scalar reads per step (``aten::item`` / ``aten::_local_scalar_dense``): on a GPU
  each read of a device tensor makes the host wait for the device (the optimizers' step counts
  live on the host and cost nothing); on a CPU they only mark where such waits would be;
- ``copies``: ``aten::copy_`` / ``aten::to`` / ``aten::contiguous`` calls per step and their
  self time (layout and dtype round trips);
- ``teacher_calls``: forward calls of the frozen teachers per step (one batched call per
  teacher and input kind is what distillation plans).

``--trace PATH`` also writes the Chrome trace (open it in ``chrome://tracing`` or Perfetto).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from radiosharp.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")
COPY_OPS = ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone")
TEACHER_REGION = "radiosharp.teacher_forward"


def trainer_class(recipe: Recipe) -> type:
    """The trainer of the recipe's kind (the class its module defines for that kind)."""
    from radiosharp.engine.trainer import Trainer
    from radiosharp.train import TRAINERS

    module = importlib.import_module(TRAINERS[recipe.kind])
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Trainer) and getattr(value, "kind", None) == recipe.kind:
            return value
    raise RecipeError(f"kind '{recipe.kind}' has no trainer class in {module.__name__}")  # pragma: no cover


def _profiling_recipe(recipe: Recipe, run_dir: str, total: int, stats_images: int) -> Recipe:
    recipe = recipe.model_copy(deep=True)
    recipe.output_dir, recipe.resume = run_dir, False
    recipe.wandb.enabled = False
    recipe.train.steps = total
    recipe.train.log_every = total  # one log: at the end of the last profiled step
    recipe.train.checkpoint_every = 0
    if any(t.phi_s is None for t in (recipe.teachers or {}).values()):
        recipe.stats.num_images = max(2, min(recipe.stats.num_images, stats_images))
    return recipe


def frozen_teachers(trainer: Any) -> list[torch.nn.Module]:
    """The teachers a trainer calls: a distillation's teacher slots, an upsampler run's one teacher."""
    if hasattr(trainer, "stack"):
        return [slot.teacher for slot in trainer.stack.values()]
    teacher = getattr(getattr(trainer.unwrapped(), "upsampled", None), "teacher", None)
    return [teacher] if teacher is not None else []


def _mark_teacher_calls(trainer: Any) -> list[Any]:
    """Wrap every frozen teacher's forward in a named profiler region (removed after)."""
    handles = []
    for teacher in frozen_teachers(trainer):
        state: dict[str, Any] = {}

        def enter(_module: Any, _inputs: Any, state: dict[str, Any] = state) -> None:
            state["region"] = record_function(TEACHER_REGION)
            state["region"].__enter__()

        def leave(_module: Any, _inputs: Any, _output: Any, state: dict[str, Any] = state) -> None:
            state.pop("region").__exit__(None, None, None)

        handles += [teacher.register_forward_pre_hook(enter), teacher.register_forward_hook(leave)]
    return handles


def profile_training(
    recipe: Recipe,
    steps: int = 2,
    warmup: int = 1,
    top: int = 25,
    trace: str | Path | None = None,
    stats_images: int = 8,
) -> dict[str, Any]:
    """Profile ``steps`` training steps of ``recipe`` after ``warmup`` unrecorded ones (module doc)."""
    if steps < 1 or warmup < 0 or top < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and top >= 1, got {steps}, {warmup}, {top}")
    cls = trainer_class(recipe)
    with tempfile.TemporaryDirectory(prefix="radiosharp-profile-") as run_dir:
        trainer = cls(_profiling_recipe(recipe, run_dir, warmup + steps, stats_images))
        if hasattr(trainer, "untrained_upsamplers"):
            trainer.untrained_upsamplers = True  # an untrained FeatSharp costs what a trained one does
        trainer.export = lambda: None
        trainer.save_checkpoint = lambda: None
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        prof = profile(activities=activities, record_shapes=False)
        original_step = trainer.train_step

        def step_with_profiler(batch: dict[str, Any], step: int) -> Any:
            if step == warmup:
                prof.start()
            return original_step(batch, step)

        def stop_after_last_step(done: int) -> dict[str, float]:
            prof.stop()
            return {}

        trainer.train_step = step_with_profiler
        trainer.log_extra = stop_after_last_step
        handles: list[Any] = []
        try:
            session = trainer.setup()
            handles = _mark_teacher_calls(trainer)
            trainer.loop(session)
        finally:
            for handle in handles:
                handle.remove()
            trainer.close()
    if trace is not None:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return profile_report(prof.key_averages(), recipe, steps, top, trace)


def profile_report(events: Any, recipe: Recipe, steps: int, top: int, trace: str | Path | None) -> dict[str, Any]:
    """The report of :func:`profile_training` from the profiler's averaged events."""
    cuda = torch.cuda.is_available()

    def self_ms(event: Any) -> float:
        return (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1000.0

    ops = [e for e in events if not e.key.startswith(("ProfilerStep", "radiosharp."))]
    total = sum(self_ms(e) for e in ops) or 1e-9
    ranked = sorted(ops, key=self_ms, reverse=True)[:top]
    by_key = {e.key: e for e in events}
    copies = [by_key[k] for k in COPY_OPS if k in by_key]
    teacher = by_key.get(TEACHER_REGION)
    return {
        "recipe": recipe.name,
        "kind": recipe.kind,
        "steps": steps,
        "device": "cuda" if cuda else "cpu",
        "self_ms_per_step": total / steps,
        "ops": [
            {
                "op": e.key,
                "calls_per_step": e.count / steps,
                "self_ms_per_step": self_ms(e) / steps,
                "share": self_ms(e) / total,
            }
            for e in ranked
        ],
        "host_syncs_per_step": sum(by_key[k].count for k in SYNC_OPS if k in by_key) / steps,
        "copies": {
            "calls_per_step": sum(e.count for e in copies) / steps,
            "self_ms_per_step": sum(self_ms(e) for e in copies) / steps,
        },
        "teacher_calls_per_step": (teacher.count / steps) if teacher is not None else 0.0,
        "teacher_ms_per_step": (teacher.cpu_time_total / 1000.0 / steps) if teacher is not None else 0.0,
        "trace": str(trace) if trace is not None else None,
    }


def profile_table(report: dict[str, Any]) -> str:
    """The report as text: the summary lines, then the top ops."""
    lines = [
        f"{report['kind']} {report['recipe']}: {report['steps']} profiled steps on {report['device']}, "
        f"{report['self_ms_per_step']:.1f} ms of op self time per step",
        f"host syncs per step: {report['host_syncs_per_step']:g}; copies per step: "
        f"{report['copies']['calls_per_step']:g} ({report['copies']['self_ms_per_step']:.1f} ms); "
        f"teacher calls per step: {report['teacher_calls_per_step']:g} ({report['teacher_ms_per_step']:.1f} ms)",
        "",
        f"{'op':48s} {'calls/step':>10s} {'self ms/step':>12s} {'share':>7s}",
    ]
    for op in report["ops"]:
        lines.append(
            f"{op['op'][:48]:48s} {op['calls_per_step']:10g} {op['self_ms_per_step']:12.2f} {100 * op['share']:6.1f}%"
        )
    if report.get("trace"):
        lines += ["", f"Chrome trace: {report['trace']}"]
    return "\n".join(lines)

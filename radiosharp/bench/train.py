"""``python -m radiosharp.bench train RECIPE [k=v ...]``: where a distillation step spends its time.

The distill trainer is set up as for a run (``Trainer.setup`` in a temporary run
folder: ``DistillTrainer.build`` makes the teacher stack with its upsamplers and PHI-S,
the student and the data; model and optimizer are prepared by Accelerate; the data
comes in the run's step order), and a few steps are run phase by phase, per
partition, with the device synchronized at every phase boundary:

- ``teachers``: the frozen teachers (a forward hook times every teacher call, also
  the global view and the tiles an upsampler asks for);
- ``upsamplers``: the rest of an upsampled teacher's call (JBU, attention block, ...);
- ``student_forward``; ``loss`` (summary + PHI-S feature losses); ``backward``;
- ``optimizer`` (clipping + step, once per step) and ``other`` (the remainder).

A measured step here is one micro-batch (``train.batch_size / train.grad_accum``
images) followed by an optimizer step. Each partition's backward runs on its own
loss (the partitions' graphs are disjoint, so the gradients are those of the summed
loss). PHI-S statistics do not change the cost, so when a teacher has no statistics
file they are computed over only ``stats_images`` images. Nor does training change an
upsampler's cost, so FeatUp / FeatSharp named without a run
(``teachers.dfn_clip.upsampler=featsharp``) are built untrained here, and teachers at
``size=random`` give real-size costs without the weights.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from radiosharp.bench.measure import synchronize
from radiosharp.recipe import Recipe, RecipeError

if TYPE_CHECKING:
    from radiosharp.engine.trainer import RunSession

PHASES = ("teachers", "upsamplers", "student_forward", "loss", "backward")
STEP_PHASES = (*PHASES, "optimizer", "other")


class PhaseClock:
    """Seconds per ``(partition, phase)``, read with the device synchronized."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, partition: str, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.seconds[(partition, name)] += self.now() - start


class TeacherTimer:
    """Forward hooks that add up the time spent inside a teacher's forward."""

    def __init__(self, clock: PhaseClock, modules: list[torch.nn.Module]) -> None:
        self.clock, self.total, self._start = clock, 0.0, 0.0
        self.handles = []
        for module in modules:
            self.handles.append(module.register_forward_pre_hook(self._before))
            self.handles.append(module.register_forward_hook(self._after))

    def _before(self, *_: Any) -> None:
        self._start = self.clock.now()

    def _after(self, *_: Any) -> None:
        self.total += self.clock.now() - self._start

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _prepared_trainer(recipe: Recipe, run_dir: str, stats_images: int) -> tuple[Any, RunSession]:
    """A DistillTrainer set up in ``run_dir`` as for a run (``Trainer.setup``: model and
    optimizer prepared, frozen modules placed, data opened at step 0), and its session."""
    from radiosharp.trainers.distill import DistillTrainer

    if recipe.kind != "distill":
        raise RecipeError(
            f"bench train measures distillation steps: the recipe has kind '{recipe.kind}', "
            "expected 'distill' (for upsamplers use: python -m radiosharp.bench upsample)"
        )
    recipe = recipe.model_copy(deep=True)
    if recipe.deepspeed:
        # Each partition's backward is timed on its own, and under DeepSpeed every
        # backward also steps the optimizer; the phases are those of a DDP step.
        print("bench train: the recipe's deepspeed block is left out; the step is timed as under DDP")
        recipe.deepspeed = None
    recipe.output_dir, recipe.resume = run_dir, False
    recipe.wandb.enabled = False
    if any(t.phi_s is None for t in recipe.teachers.values()):
        recipe.stats.num_images = max(2, min(recipe.stats.num_images, stats_images))
    trainer = DistillTrainer(recipe)
    trainer.untrained_upsamplers = True  # the cost of a FeatSharp step does not depend on its training
    session = trainer.setup()
    return trainer, session


def _timed_step(
    trainer: Any, batch: dict[str, Any], clock: PhaseClock, teacher_timer: TeacherTimer, step: int = 0
) -> float:
    """One micro-batch + optimizer step, phase by phase; returns the step's seconds.

    Teachers run as in a run (``trainer.target_calls``: one batched call per teacher and
    input kind); a call's time is shared among the partitions it serves by image count.
    Each partition's input is the one a run draws at ``step`` (its size, aspect and mosaic);
    the shift-equivariant loss's shifted views are not measured.
    """
    acc, recipe = trainer.accelerator, trainer.recipe
    partitions = trainer.section.partitions
    student = acc.unwrap_model(trainer.model).student
    images = list(batch["image"].to(acc.device).split(trainer.local_sizes))
    inputs = [trainer.partition_inputs(index, x, step) for index, x in enumerate(images)]
    slices = [teacher_input for _, teacher_input in inputs]
    step_start = clock.now()
    targets: list[dict[str, Any]] = [{} for _ in slices]
    with trainer.step_autocast():  # as in a run: teachers, student and loss at the run's precision
        for call in trainer.target_calls:
            before, t0 = teacher_timer.total, clock.now()
            for index, target in call.run(slices).items():
                targets[index][call.slot.key] = target
            spent = clock.now() - t0
            in_teacher = teacher_timer.total - before if call.upsample else spent
            images = sum(len(slices[i]) for i in call.parts)
            for i in call.parts:
                share = len(slices[i]) / images
                clock.seconds[(partitions[i].name, "teachers")] += share * in_teacher
                clock.seconds[(partitions[i].name, "upsamplers")] += share * (spent - in_teacher)
    for part, (x, _), part_targets in zip(partitions, inputs, targets):
        with trainer.step_autocast():
            with clock.phase(part.name, "student_forward"):
                out = student(x)
            with clock.phase(part.name, "loss"):
                loss, _ = trainer.partition_loss(part, out, part_targets)
        with clock.phase(part.name, "backward"):
            acc.backward(loss)
    with clock.phase("all", "optimizer"):
        if recipe.train.optim.grad_clip:  # the deepspeed block was left out (_prepared_trainer)
            acc.clip_grad_norm_(trainer.model.parameters(), recipe.train.optim.grad_clip)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return clock.now() - step_start


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of the measured steps: on CUDA the allocator's peak (weights, optimizer
    state, activations); on a CPU the process's peak resident size since it started."""
    if device.type == "cuda":
        return {"what": "CUDA max_memory_allocated", "mib": torch.cuda.max_memory_allocated(device) / 2**20}
    try:
        import resource
    except ImportError:  # not on this platform
        return {"what": "not measured", "mib": None}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"what": "process peak RSS", "mib": kib / 1024}


def missing_inputs(recipe: Recipe) -> list[str]:
    """What the recipe reads from disk that is not there, each with how to make it or do without.

    Checked before any teacher is built (minutes at real sizes): the ``init_from``
    student, each ``teachers.<key>.phi_s`` file, each upsampler run, the data.
    """
    from pathlib import Path

    from radiosharp.builders import build_dataset
    from radiosharp.data.errors import first_line

    out = []
    if recipe.init_from and not (Path(recipe.init_from) / "model.json").is_file():
        out.append(
            f"init_from {recipe.init_from} (an exported student: train the previous stage first, or add "
            "init_from=null: a step's cost does not depend on the starting weights)"
        )
    for key, cfg in recipe.teachers.items():
        if cfg.phi_s and not Path(cfg.phi_s).is_file():
            out.append(
                f"teachers.{key}.phi_s {cfg.phi_s} (python -m radiosharp.stats RECIPE writes it, or add "
                f"teachers.{key}.phi_s=null: computed here over --stats-images images)"
            )
        run = cfg.upsampler.run if cfg.upsampler is not None else None
        if run and not (Path(run) / "model.json").is_file():
            out.append(
                f"teachers.{key}.upsampler {run} (an exported upsampler run: train it first, or name an upsampler "
                f"instead, e.g. teachers.{key}.upsampler=featsharp teachers.{key}.upsampler.factor=3, built untrained)"
            )
    try:
        build_dataset(recipe.data)
    except (ValueError, FileNotFoundError, OSError) as err:
        out.append(f"data ({first_line(err)}; e.g. 'data={{source: synthetic, num_images: 64, size: 1024}}')")
    return out


def bench_train(recipe: Recipe, steps: int = 3, warmup: int = 1, stats_images: int = 8) -> dict[str, Any]:
    """Images/s per partition and the share of step time per phase (see the module docstring).

    What the recipe reads from disk is checked first (:func:`missing_inputs`): a
    RecipeError names everything missing before any teacher is built.
    """
    from radiosharp.engine.order import next_readable

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if recipe.kind == "distill":
        missing = missing_inputs(recipe)
        if missing:
            raise RecipeError(f"bench train: the recipe needs what is not here: {'; '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="radiosharp-bench-") as run_dir:
        trainer, session = _prepared_trainer(recipe, run_dir, stats_images)
        acc = trainer.accelerator
        batches = session.batches
        clock = PhaseClock(acc.device)
        timer = TeacherTimer(clock, [slot.teacher for slot in trainer.stack.values()])
        try:
            step_times = []
            for i in range(warmup + steps):
                batch = next_readable(batches)
                if i == warmup:
                    clock.seconds.clear()
                    if acc.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(acc.device)
                seconds = _timed_step(trainer, batch, clock, timer, step=i)
                if i >= warmup:
                    step_times.append(seconds)
        finally:
            timer.remove()
            trainer.close()  # the temporary run folder's lock
        partitions = trainer.section.partitions
        sizes = dict(zip((p.name for p in partitions), trainer.local_sizes))
    per_step = {k: v / steps for k, v in clock.seconds.items()}
    total = sum(step_times) / steps
    phase_seconds = {ph: sum(v for (_, name), v in per_step.items() if name == ph) for ph in STEP_PHASES}
    phase_seconds["other"] = max(0.0, total - sum(phase_seconds.values()))
    total = sum(phase_seconds.values())  # equals the step time unless clock jitter made "other" negative
    rows = []
    for part in partitions:
        seconds = {ph: per_step.get((part.name, ph), 0.0) for ph in PHASES}
        part_total = sum(seconds.values())
        rows.append(
            {
                "name": part.name,
                "size": part.size if part.size is not None else part.sizes,
                "batch": sizes[part.name],
                "upsample": part.upsample,
                "seconds": part_total,
                "images_per_s": sizes[part.name] / part_total if part_total > 0 else None,
                "shares": {ph: s / part_total if part_total > 0 else 0.0 for ph, s in seconds.items()},
            }
        )
    micro = sum(sizes.values())
    return {
        "recipe": recipe.name,
        "device": str(acc.device),
        "mixed_precision": acc.mixed_precision,
        "steps": steps,
        "warmup": warmup,
        "micro_batch": micro,
        "step_s": statistics.median(step_times),
        "images_per_s": micro / statistics.median(step_times),
        "peak_memory": _peak_memory(acc.device),
        "seconds": phase_seconds,
        "shares": {ph: s / total if total > 0 else 0.0 for ph, s in phase_seconds.items()},
        "partitions": rows,
    }

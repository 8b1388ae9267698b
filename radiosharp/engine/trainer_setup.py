"""The setup half of the :class:`~radiosharp.engine.trainer.Trainer`: everything before the first step.

Checks and locks the run folder, builds and prepares the model and optimizer (seeded
alike on every process, then apart), restores a resumed run's checkpoint, writes the
recipe, starts the metrics log (and wandb) and opens the data at the step the run starts
at (:class:`RunSession`). Also the per-step helpers the loop and ``bench train`` share:
the learning rate at a step and the autocast of a step's forward work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from radiosharp.engine.checkpointing import CheckpointedRun, TrainState
from radiosharp.engine.errors import RunLockedError
from radiosharp.engine.launch import make_accelerator, run_precision
from radiosharp.engine.optim import lr_at, make_optimizer
from radiosharp.engine.order import step_loader
from radiosharp.engine.rundir import MetricsLog, prepare_run_dir, start_wandb
from radiosharp.engine.runlock import RunLock, lock_holder
from radiosharp.recipe import Recipe, RecipeError, recipe_to_yaml

__all__ = ["RunSession", "TrainerSetup"]


@dataclass
class RunSession:
    """What :meth:`Trainer.setup` hands to :meth:`Trainer.loop`.

    ``batches``: the endless micro-batches from the step the run starts at (pass them
    through :func:`~radiosharp.engine.order.next_readable`); ``metrics``: the run's
    metrics log; ``wandb_run``: its wandb run, or None.
    """

    batches: Iterator[dict[str, Any] | None]
    metrics: MetricsLog
    wandb_run: Any = None


class TrainerSetup(CheckpointedRun):
    """The Trainer's construction, its hooks and :meth:`setup` (a base of the Trainer)."""

    kind = "base"
    find_unused_parameters: bool = False

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.accelerator = make_accelerator(recipe, self.find_unused_parameters)
        self.micro_batch = self._micro_batch()
        self.run_dir = recipe.run_dir
        self.lock: RunLock | None = None
        self._on_main(self._check_run_dir)
        self.state = TrainState()
        self.model: torch.nn.Module
        self.dataset: Dataset
        self.last_checkpoint = None

    # -- to implement
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def export(self) -> None:
        """Write the run's exported model (``model.safetensors`` + ``model.json``)."""

    def log_extra(self, step: int) -> dict[str, float]:
        """Metrics computed every ``log_every`` steps beside the loss (optional)."""
        return {}

    # -- before the first step
    def _micro_batch(self) -> int:
        """The global micro-batch (all processes); checked before anything is written."""
        train, world = self.recipe.train, self.accelerator.num_processes
        if train.batch_size % train.grad_accum != 0:
            raise RecipeError(
                f"train.batch_size {train.batch_size} is not divisible by train.grad_accum {train.grad_accum}"
            )
        if train.skip_nonfinite and self.recipe.deepspeed:
            raise RecipeError(
                "train.skip_nonfinite cannot be used with a 'deepspeed:' block: DeepSpeed updates the "
                "weights inside backward, before a step could be skipped; drop one of them"
            )
        micro = train.batch_size // train.grad_accum
        if micro % world != 0:
            raise RecipeError(
                f"train.batch_size / train.grad_accum = {micro} samples per micro-step cannot be "
                f"split evenly between {world} processes; make train.batch_size a multiple of "
                f"{train.grad_accum * world}"
            )
        return micro

    def _check_run_dir(self) -> None:
        """Whether the run folder may be used, before any work: nothing is written.

        A folder that another process writes is refused naming that process, before
        any other check (:func:`~radiosharp.engine.runlock.lock_holder`); then
        :func:`prepare_run_dir`.
        """
        holder = lock_holder(self.run_dir)
        if holder is not None:
            raise RunLockedError(holder)
        prepare_run_dir(self.recipe)

    def _lock_run_dir(self) -> RunLock:
        """Take the run folder's lock (the first thing :meth:`setup` writes), and check the folder again under it.

        Between the check of ``__init__`` and now another writer may have started or
        finished a run there: the lock refuses the first, the second check the other.
        """
        lock = RunLock.acquire(self.run_dir)
        try:
            if not self.recipe.resume:
                prepare_run_dir(self.recipe)
        except BaseException:
            lock.release()
            raise
        return lock

    def close(self) -> None:
        """Release the run folder's lock (idempotent; :meth:`run` does it on any exit)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _write_recipe(self) -> None:
        if self.is_main:
            from radiosharp.export import atomic_write_bytes

            with self.writing("recipe.yaml"):
                atomic_write_bytes(self.run_dir / "recipe.yaml", recipe_to_yaml(self.recipe).encode())

    def step_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast at the run's reduced precision (bf16/fp16) for a step's forward work.

        Accelerate autocasts only the prepared model's forward, and under DeepSpeed not
        even that (DeepSpeed only casts the weights). Frozen teachers, upsampled targets
        and losses run outside the model, so the whole step is autocast here and every
        trainer stays precision-agnostic.
        """
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run_precision(self.accelerator))
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=dtype)

    def set_lr(self, step: int) -> float:
        """Set the optimizer's learning rate to the schedule's value at ``step``."""
        lr = lr_at(step, self.recipe.train.steps, self.recipe.train.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def setup(self) -> RunSession:
        """Everything before the first step.

        Builds and prepares model and optimizer (seeded alike on every process), moves
        the frozen modules to the device, seeds each process apart, restores the last
        checkpoint of a resumed run, writes the recipe, starts the metrics log (and
        wandb), and opens the data at the step the run starts at. Leaves the model in
        training mode. First of all it takes the run folder's lock (main process), held
        until :meth:`close` (:meth:`run` closes on any exit; so does a failed ``setup``).
        """
        try:
            return self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> RunSession:
        from accelerate.utils import set_seed

        recipe, acc = self.recipe, self.accelerator
        if self.lock is None:
            self.lock = self._on_main(self._lock_run_dir)  # before anything is written there
        set_seed(recipe.seed)  # the same model on every process
        self.build()
        self.optimizer = make_optimizer(list(self.model.named_parameters()), recipe.train.optim)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        for module in getattr(self, "frozen", []):
            module.to(acc.device)
        set_seed(recipe.seed, device_specific=True)  # different random numbers per process
        acc.register_for_checkpointing(self.state)
        if recipe.resume:
            self.load_checkpoint()
        self._write_recipe()  # on resume: records the allowed changes (check_resumed_recipe)
        wandb_run = start_wandb(recipe, self.run_dir) if self.is_main else None
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.is_main, wandb_run)
        loader = step_loader(
            self.dataset,
            self.micro_batch,
            recipe.seed,
            self.state.step * recipe.train.grad_accum,
            acc.process_index,
            acc.num_processes,
            recipe.train.num_workers,
        )
        batches = iter(loader)
        self.model.train()
        return RunSession(batches, metrics, wandb_run)

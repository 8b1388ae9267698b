"""The Trainer: the training loop shared by every kind of run.

One :class:`Trainer` owns the run folder, the Accelerator, the optimizer, the LR
schedule, logging, checkpoints and resume. A kind of run subclasses it and fills in
``build`` (models, data) and ``train_step`` (one micro-batch -> loss + metrics).
:meth:`Trainer.run` is :meth:`Trainer.setup` (everything before the first step) then
:meth:`Trainer.loop` (train, log, checkpoint, export); a tool that runs steps of its
own (``python -m radiosharp.bench train``) calls ``setup`` alone.

Random numbers: every process seeds its RNGs with ``seed`` before ``build`` (so all
processes build the same model), then with ``seed + process_index`` (so processes draw
different dropout masks and jitters). Accelerate's checkpoints hold the RNG states, and
the DataLoader seeds its workers from its own generator, never from the global RNG, so
a resumed run draws the same random numbers as one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from radiosharp.engine.launch import make_accelerator, run_precision
from radiosharp.engine.optim import lr_at, make_optimizer
from radiosharp.engine.order import next_readable, step_loader
from radiosharp.engine.rundir import (
    CHECKPOINTS,
    MetricsLog,
    checkpoint_dirs,
    prepare_run_dir,
    start_wandb,
    truncate_metrics,
)
from radiosharp.recipe import Recipe, RecipeError, recipe_to_yaml

log = logging.getLogger(__name__)

__all__ = ["RunSession", "TrainState", "Trainer"]


class TrainState:
    """The counters Accelerate checkpoints beside model and optimizer."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


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


class Trainer:
    """Owns the loop; subclasses provide ``build`` and ``train_step``.

    ``build`` must set ``self.model`` (the trainable nn.Module whose state is
    checkpointed) and ``self.dataset``; it may set ``self.frozen`` modules that are
    moved to the device but neither checkpointed nor optimized.

    ``find_unused_parameters``: set True in a subclass whose steps leave some trainable
    parameters without a gradient (e.g. a teacher's head in a partition it does not
    teach); DDP then looks for them each step instead of hanging or failing.
    """

    kind = "base"
    find_unused_parameters: bool = False

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.run_dir = prepare_run_dir(recipe)
        self.accelerator = make_accelerator(recipe, self.find_unused_parameters)
        self.micro_batch = self._micro_batch()
        self.state = TrainState()
        self.model: torch.nn.Module
        self.dataset: Dataset

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

    # -- the loop
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _micro_batch(self) -> int:
        """The global micro-batch (all processes); checked before anything is written."""
        train, world = self.recipe.train, self.accelerator.num_processes
        if train.batch_size % train.grad_accum != 0:
            raise RecipeError(
                f"train.batch_size {train.batch_size} is not divisible by train.grad_accum {train.grad_accum}"
            )
        micro = train.batch_size // train.grad_accum
        if micro % world != 0:
            raise RecipeError(
                f"train.batch_size / train.grad_accum = {micro} samples per micro-step cannot be "
                f"split evenly between {world} processes; make train.batch_size a multiple of "
                f"{train.grad_accum * world}"
            )
        return micro

    def _write_recipe(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(recipe_to_yaml(self.recipe))

    def save_checkpoint(self) -> Path:
        """Save to ``step_N.tmp``, mark it done, then rename: a crash leaves the last good one."""
        acc = self.accelerator
        root = self.run_dir / CHECKPOINTS
        final = root / f"step_{self.state.step:08d}"
        tmp = root / f"step_{self.state.step:08d}.tmp"
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob("step_*.tmp"):  # this one, or left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if self.is_main:
            (tmp / "DONE").write_text(str(self.state.step))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.run_dir)[: -self.recipe.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self) -> None:
        """Model, optimizer, RNG states and step from the last complete checkpoint."""
        last = checkpoint_dirs(self.run_dir)[-1]
        self.accelerator.load_state(str(last))
        if self.is_main:
            truncate_metrics(self.run_dir, self.state.step)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            log.info("resumed %s at step %d from %s", self.run_dir, self.state.step, last.name)

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
        training mode.
        """
        from accelerate.utils import set_seed

        recipe, acc = self.recipe, self.accelerator
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

    def loop(self, session: RunSession) -> Path:
        """Train from ``self.state.step`` to ``train.steps``: log, checkpoint, then export."""
        from tqdm.auto import tqdm

        recipe, acc = self.recipe, self.accelerator
        batches, metrics_log, wandb_run = session.batches, session.metrics, session.wandb_run
        start = self.state.step
        total = recipe.train.steps
        bar = tqdm(
            total=total, initial=start, desc=f"{self.kind} {recipe.name}", disable=not self.is_main, dynamic_ncols=True
        )
        window_t, window_n = time.perf_counter(), 0
        # Logged values are means over the steps since the last log (not the last step alone).
        window_sum: dict[str, torch.Tensor] = {}
        window_count: dict[str, int] = {}
        while self.state.step < total:
            step = self.state.step
            lr = self.set_lr(step)
            # Metrics stay on the device until a log step: reading them every micro-step
            # would make the host wait for the device each time.
            metrics_sum: dict[str, torch.Tensor] = {}
            for _ in range(recipe.train.grad_accum):
                batch = next_readable(batches)
                window_n += len(batch["image"]) * acc.num_processes
                with acc.accumulate(self.model):
                    with self.step_autocast():
                        loss, metrics = self.train_step(batch, step)
                    acc.backward(loss)
                    if acc.sync_gradients and recipe.train.optim.grad_clip and not recipe.deepspeed:
                        acc.clip_grad_norm_(self.model.parameters(), recipe.train.optim.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in {"loss": loss, **metrics}.items():
                    v = torch.as_tensor(v, device=acc.device).detach().float() / recipe.train.grad_accum
                    metrics_sum[k] = metrics_sum[k] + v if k in metrics_sum else v
            self.state.step += 1
            done = self.state.step
            for k, v in metrics_sum.items():
                window_sum[k] = window_sum[k] + v if k in window_sum else v
                window_count[k] = window_count.get(k, 0) + 1
            if done % recipe.train.log_every == 0 or done == total:
                reduced = {k: acc.reduce(v / window_count[k], "mean").item() for k, v in sorted(window_sum.items())}
                window_sum, window_count = {}, {}
                elapsed = time.perf_counter() - window_t
                reduced.update(lr=lr, images_per_s=window_n / max(elapsed, 1e-9))
                reduced.update(self.log_extra(done))
                metrics_log.log(done, reduced)
                bar.set_postfix(loss=f"{reduced['loss']:.4g}", img_s=f"{reduced['images_per_s']:.1f}")
                window_t, window_n = time.perf_counter(), 0
            bar.update(1)
            every = recipe.train.checkpoint_every
            if (every and done % every == 0) or done == total:
                self.save_checkpoint()
        bar.close()
        acc.wait_for_everyone()
        if self.is_main:
            self.export()
        acc.wait_for_everyone()
        if wandb_run is not None:
            wandb_run.finish()
        return self.run_dir

    def run(self) -> Path:
        """The whole run: :meth:`setup`, then :meth:`loop`; returns the run folder."""
        return self.loop(self.setup())

    def unwrapped(self) -> torch.nn.Module:
        """The trained module without its DDP / DeepSpeed wrapper."""
        return self.accelerator.unwrap_model(self.model)

    def exported_model(self) -> torch.nn.Module:
        """The module to export, in float32.

        Under DeepSpeed bf16/fp16 the module holds rounded weights; the float32 master
        weights live in the (ZeRO-sharded) optimizer state, so they are read back from
        the last checkpoint, which every run writes at its end, into a float32 copy.
        """
        model = self.unwrapped()
        if not self.recipe.deepspeed or all(p.dtype == torch.float32 for p in model.parameters()):
            return model
        import copy

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        master = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dirs(self.run_dir)[-1]))
        names = {name for name, _ in model.named_parameters()}
        if not names <= set(master):
            raise RuntimeError(f"the DeepSpeed checkpoint lacks the float32 weights of {sorted(names - set(master))}")
        full = copy.deepcopy(model).float()
        full.load_state_dict({k: v for k, v in master.items() if k in names}, strict=False)
        return full

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
import signal
import time
from pathlib import Path

import torch

from radiosharp.engine.checkpointing import TrainState
from radiosharp.engine.order import next_readable
from radiosharp.engine.signals import GracefulStop
from radiosharp.engine.step_guard import GuardedSteps
from radiosharp.engine.trainer_setup import RunSession, TrainerSetup

__all__ = ["RunSession", "TrainState", "Trainer"]


class Trainer(TrainerSetup, GuardedSteps):
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

    def loop(self, session: RunSession) -> Path:
        """Train from ``self.state.step`` to ``train.steps``: log, checkpoint, then export.

        Guarantees beside the schedule and logging:

        - non-finite guard: each step's loss terms (the loss and every metric
          ``train_step`` returns) and gradient norm are checked before the optimizer
          step; a bad step is skipped (no update, logged) while fewer than
          ``train.skip_nonfinite`` were, else the run stops with
          :class:`~radiosharp.engine.errors.NonFiniteError` naming the step, the terms
          and the last good checkpoint, before anything of that step is saved. Under
          fp16 the loss scaler handles non-finite gradients itself (only the loss terms
          are checked); under DeepSpeed the update is already made when the check runs,
          so a bad step always stops the run. The check reads one small tensor per step
          from the device (with several processes, after summing it over them, so all
          decide alike);
        - graceful stop: the first SIGTERM / SIGINT ends the run after the current step
          with a checkpoint and :class:`~radiosharp.engine.errors.RunStopped`
          (:mod:`~radiosharp.engine.signals`);
        - the metrics log is fsynced before every checkpoint, and nothing non-finite is
          exported.
        """
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
        with GracefulStop() as stop, contextlib.closing(bar):
            while self.state.step < total:
                step = self.state.step
                lr = self.set_lr(step)
                # Metrics stay on the device until a log step: reading them every micro-step
                # would make the host wait for the device each time.
                metrics_sum: dict[str, torch.Tensor] = {}
                bad: list[str] = []
                stop_now = False
                for _ in range(recipe.train.grad_accum):
                    batch = next_readable(batches)
                    window_n += len(batch["image"]) * acc.num_processes
                    with acc.accumulate(self.model):
                        with self.step_autocast():
                            loss, metrics = self.train_step(batch, step)
                        acc.backward(loss)
                        for k, v in {"loss": loss, **metrics}.items():
                            v = torch.as_tensor(v, device=acc.device).detach().float() / recipe.train.grad_accum
                            metrics_sum[k] = metrics_sum[k] + v if k in metrics_sum else v
                        if acc.sync_gradients:
                            bad, stop_now = self._check_step(metrics_sum, self._grad_norm(), stop.requested)
                            if not bad:
                                self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                done = step + 1
                if bad:
                    self._skip_or_stop(done, bad)
                self.state.step = done
                if not bad:
                    for k, v in metrics_sum.items():
                        window_sum[k] = window_sum[k] + v if k in window_sum else v
                        window_count[k] = window_count.get(k, 0) + 1
                if (done % recipe.train.log_every == 0 or done == total) and window_sum:
                    reduced = {k: acc.reduce(v / window_count[k], "mean").item() for k, v in sorted(window_sum.items())}
                    window_sum, window_count = {}, {}
                    elapsed = time.perf_counter() - window_t
                    reduced.update(lr=lr, images_per_s=window_n / max(elapsed, 1e-9))
                    reduced.update(self.log_extra(done))
                    with self.writing("metrics.jsonl"):
                        metrics_log.log(done, reduced)
                    bar.set_postfix(loss=f"{reduced['loss']:.4g}", img_s=f"{reduced['images_per_s']:.1f}")
                    window_t, window_n = time.perf_counter(), 0
                bar.update(1)
                every = recipe.train.checkpoint_every
                due = (every and done % every == 0) or done == total
                if due or (stop_now and done < total):
                    with self.writing("metrics.jsonl"):
                        metrics_log.sync()
                    self.save_checkpoint()
                if stop_now and done < total:
                    bar.close()
                    self._stopped(stop.requested or signal.SIGTERM, done)
        acc.wait_for_everyone()
        if self.is_main:
            self._check_finite_weights()
            with self.writing("the export (model.safetensors, model.json)"):
                self.export()
        acc.wait_for_everyone()
        if wandb_run is not None:
            wandb_run.finish()
        return self.run_dir

    def run(self) -> Path:
        """The whole run: :meth:`setup`, then :meth:`loop`; returns the run folder.

        The run folder's lock is released however the run ends. A full disk or quota
        anywhere in the run is :class:`~radiosharp.engine.errors.DiskFullError` (one line
        naming the folder and the last good checkpoint).
        """
        try:
            with self.writing("the run's files", infer=False):  # a step's own error is no write
                return self.loop(self.setup())
        finally:
            self.close()

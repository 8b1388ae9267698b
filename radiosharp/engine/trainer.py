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
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

from radiosharp.engine.errors import (
    DiskFullError,
    NonFiniteError,
    RunError,
    RunLockedError,
    RunStopped,
    disk_full_reason,
)
from radiosharp.engine.integrity import mark_done, newest_intact
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
from radiosharp.engine.runlock import RunLock, lock_holder
from radiosharp.engine.signals import GracefulStop
from radiosharp.recipe import Recipe, RecipeError, recipe_to_yaml

log = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = ["RunSession", "TrainState", "Trainer"]


class TrainState:
    """The counters Accelerate checkpoints beside model and optimizer.

    ``step``: steps done; ``skipped``: of those, how many were skipped as non-finite
    (``train.skip_nonfinite``).
    """

    def __init__(self) -> None:
        self.step = 0
        self.skipped = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))


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
        self.accelerator = make_accelerator(recipe, self.find_unused_parameters)
        self.micro_batch = self._micro_batch()
        self.run_dir = recipe.run_dir
        self.lock: RunLock | None = None
        self._on_main(self._check_run_dir)
        self.state = TrainState()
        self.model: torch.nn.Module
        self.dataset: Dataset
        self.last_checkpoint: Path | None = None

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

    def _on_main(self, work: Callable[[], _T], share: bool = False) -> _T | None:
        """``work()`` on the main process only; its error (a RunError or ValueError) is raised on all.

        ``share``: the other processes get its result too (else None): one process
        decides, the others follow, and none waits forever for a process that failed.
        """
        result: _T | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = work()
            except (RunError, ValueError) as err:
                error = err
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error, shared = broadcast_object_list([error, result if share else None])
            if share:
                result = shared
        if error is not None:
            raise error
        return result

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

    @contextlib.contextmanager
    def writing(self, what: str, infer: bool = True) -> Iterator[None]:
        """Turn a full disk or quota while writing ``what`` into :class:`DiskFullError`.

        An OSError ENOSPC / EDQUOT, or what a library raises instead (see
        :func:`~radiosharp.engine.errors.disk_full_reason`; ``infer``: also a RuntimeError
        when the run folder's filesystem is then nearly full); other errors pass unchanged.
        """
        try:
            yield
        except RunError:
            raise
        except Exception as err:
            reason = disk_full_reason(err, self.run_dir if infer else None)
            if reason is None:
                raise
            raise self.disk_full(reason, what) from err

    def disk_full(self, reason: str, what: str) -> DiskFullError:
        """The one-line error of a full disk: the folder, what was being written, the last good checkpoint."""
        done = checkpoint_dirs(self.run_dir)
        if done:
            then = (
                f"last good checkpoint: {done[-1]} (it and the earlier ones are intact); free space "
                "(or raise the quota) and continue with resume=true"
            )
        else:
            then = (
                f"last good checkpoint: none (the run wrote no checkpoint yet); free space and start again "
                f"after deleting {self.run_dir}"
            )
        return DiskFullError(f"disk full ({reason}) while writing {what} in {self.run_dir}; {then}")

    def save_checkpoint(self) -> Path:
        """Save to ``step_N.tmp``, mark it done, then rename: a crash leaves the last good one.

        ``DONE`` records the size and sha256 of every file, written after they are all
        flushed to disk (:func:`~radiosharp.engine.integrity.mark_done`); resume checks them.
        A full disk mid-save is :class:`~radiosharp.engine.errors.DiskFullError` and removes
        the half-written ``step_N.tmp`` (any other failure leaves it, cleared at the next save).
        """
        acc = self.accelerator
        root = self.run_dir / CHECKPOINTS
        final = root / f"step_{self.state.step:08d}"
        tmp = root / f"step_{self.state.step:08d}.tmp"
        if self.is_main:
            for stale in root.glob("step_*.tmp"):  # this one, or left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        try:
            with self.writing(f"checkpoint {tmp.name}"):
                if self.is_main:
                    root.mkdir(parents=True, exist_ok=True)
                acc.wait_for_everyone()
                acc.save_state(str(tmp), safe_serialization=True)
                acc.wait_for_everyone()
                if self.is_main:
                    _pause_mid_checkpoint(tmp)
                    mark_done(tmp, self.state.step)
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                    _fsync_dir(root)
        except DiskFullError:
            if self.is_main:  # free the half-written checkpoint's space; the earlier ones stay
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.is_main:
            for old in checkpoint_dirs(self.run_dir)[: -self.recipe.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def load_checkpoint(self) -> None:
        """Model, optimizer, RNG states and step from the newest intact checkpoint.

        Each checkpoint's files are checked against the sizes and sha256 its ``DONE``
        records: a corrupt newest one is skipped with a warning naming it, and
        :class:`~radiosharp.engine.errors.CheckpointError` says so when none is intact.
        """
        last = self._on_main(lambda: newest_intact(checkpoint_dirs(self.run_dir)), share=True)
        assert last is not None
        self.accelerator.load_state(str(last))
        self.last_checkpoint = last
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

    def _grad_norm(self) -> torch.Tensor | None:
        """The step's gradient norm (clipping to ``grad_clip`` if set); None where it is not checked.

        Under fp16 the gradients are scaled and an overflow is the loss scaler's to skip;
        under DeepSpeed the engine clips and steps inside ``backward``.
        """
        recipe, acc = self.recipe, self.accelerator
        if recipe.deepspeed:
            return None
        clip = recipe.train.optim.grad_clip
        norm = acc.clip_grad_norm_(self.model.parameters(), clip) if clip else None
        if acc.scaler is not None:
            return None
        if norm is None:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not grads:
                return None
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return torch.as_tensor(norm, device=acc.device)

    def _check_step(
        self, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor | None, signum: int | None
    ) -> tuple[list[str], bool]:
        """``(names of the non-finite terms, whether to stop)``, agreed between all processes.

        One small tensor is read from the device: per term 1 if not finite, then the
        stop request; summed over processes, so each decides as every other.
        """
        acc = self.accelerator
        checked = dict(terms)
        if grad_norm is not None:
            checked["grad_norm"] = grad_norm
        flags = [(~torch.isfinite(v)).any() for v in checked.values()]
        flags.append(torch.tensor(signum is not None, device=acc.device))
        sums = torch.stack([f.float() for f in flags])
        if acc.num_processes > 1:
            sums = acc.reduce(sums, "sum")
        values = sums.tolist()
        bad = [name for name, value in zip(checked, values) if value > 0]
        return bad, values[-1] > 0

    def _skip_or_stop(self, step: int, bad: list[str]) -> None:
        """Count a skipped non-finite step, or raise NonFiniteError when no more may be skipped."""
        allowed = self.recipe.train.skip_nonfinite
        terms = ", ".join(bad)
        if self.recipe.deepspeed or self.state.skipped >= allowed:
            last = self.last_checkpoint
            where = f"{last}" if last is not None else "none (the run wrote no checkpoint yet)"
            if self.recipe.deepspeed:
                how = "under DeepSpeed the update was already made; resume=true from the last good checkpoint"
            else:
                how = (
                    f"{self.state.skipped} of train.skip_nonfinite={allowed} bad steps were skipped before; "
                    "resume=true with a higher train.skip_nonfinite to skip such steps"
                )
            raise NonFiniteError(
                f"step {step}: non-finite {terms}; the run stopped with the weights of the step before "
                f"(nothing was saved or exported from this step); last good checkpoint: {where}; {how}, "
                "or start again with a lower train.optim.lr"
            )
        self.state.skipped += 1
        log.warning(
            "step %d: non-finite %s; its optimizer step was skipped (%d of train.skip_nonfinite=%d)",
            step,
            terms,
            self.state.skipped,
            allowed,
        )

    def _stopped(self, signum: int, step: int) -> None:
        name = signal.Signals(signum).name
        where = self.last_checkpoint
        raise RunStopped(
            f"stopped by {name} after step {step}; checkpoint {where}; continue with resume=true "
            f"(the same command plus resume=true)",
            int(signum),
            step,
            str(where),
        )

    def _check_finite_weights(self) -> None:
        """Refuse to export weights that are not finite (NonFiniteError naming the tensor)."""
        from radiosharp.export import nonfinite_tensor

        name = nonfinite_tensor(self.unwrapped().state_dict())
        if name is not None:
            raise NonFiniteError(
                f"the trained weights are not finite ({name}); nothing was exported; "
                f"last checkpoint: {self.last_checkpoint}"
            )

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


def _pause_mid_checkpoint(tmp: Path) -> None:
    """For fault-injection tests: ``RADIOSHARP_TEST_CHECKPOINT_PAUSE`` seconds slept with the checkpoint half-done.

    The files are written to ``step_N.tmp`` but not yet marked ``DONE`` nor renamed: a
    process killed now leaves the half-written checkpoint a crash mid-save leaves. A
    ``RADIOSHARP_TEST_CHECKPOINT_PAUSE_FILE`` names a file created when the pause starts.
    """
    pause = os.environ.get("RADIOSHARP_TEST_CHECKPOINT_PAUSE")
    if not pause:
        return
    flag = os.environ.get("RADIOSHARP_TEST_CHECKPOINT_PAUSE_FILE")
    if flag:
        Path(flag).write_text(str(tmp))
    time.sleep(float(pause))


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

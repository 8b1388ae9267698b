"""The run-folder half of the :class:`~radiosharp.engine.trainer.Trainer`: checkpoints and the writes around them.

:class:`TrainState` holds the counters Accelerate checkpoints beside model and optimizer.
:class:`CheckpointedRun` saves a checkpoint to ``step_N.tmp``, marks it ``DONE`` (sizes and
sha256 of its files) and renames it; loads the newest intact one on resume; turns a full
disk into one line (:class:`~radiosharp.engine.errors.DiskFullError`); and gives the
float32 module to export. It also runs work on the main process with its error raised on all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from radiosharp.engine.errors import DiskFullError, RunError, disk_full_reason
from radiosharp.engine.integrity import mark_done, newest_intact
from radiosharp.engine.rundir import CHECKPOINTS, checkpoint_dirs, truncate_metrics
from radiosharp.recipe import Recipe

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("radiosharp.engine.trainer")  # the Trainer's logger, as before the split
_T = TypeVar("_T")

__all__ = ["CheckpointedRun", "TrainState"]


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


class CheckpointedRun:
    """Checkpoints, resume and the guarded writes of a run (a base of :class:`~radiosharp.engine.trainer.Trainer`)."""

    recipe: Recipe
    accelerator: Accelerator
    run_dir: Path
    state: TrainState
    model: torch.nn.Module
    last_checkpoint: Path | None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

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

    def unwrapped(self) -> torch.nn.Module:
        """The trained module without its DDP / DeepSpeed / torch.compile wrapper (``train.compile``)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

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

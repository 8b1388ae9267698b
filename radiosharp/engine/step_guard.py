"""The step guard of the :class:`~radiosharp.engine.trainer.Trainer`: non-finite losses, gradients and weights,
and the stop a signal asks for.

Each step's loss terms and gradient norm are checked before the optimizer step, agreed
between all processes; a bad step is skipped while ``train.skip_nonfinite`` allows, else
the run stops with :class:`~radiosharp.engine.errors.NonFiniteError`. Nothing non-finite
is exported.
"""

from __future__ import annotations

import logging
import signal

import torch

from radiosharp.engine.checkpointing import CheckpointedRun
from radiosharp.engine.errors import NonFiniteError, RunStopped

log = logging.getLogger("radiosharp.engine.trainer")  # the Trainer's logger, as before the split

__all__ = ["GuardedSteps"]


class GuardedSteps(CheckpointedRun):
    """The non-finite checks and the graceful stop of a run's steps (a base of the Trainer)."""

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

"""The training engine shared by every kind of run.

One module per concern:

- :mod:`~radiosharp.engine.order`: the data order; the samples of step ``s`` depend
  only on ``(seed, s)``, also split between several processes;
- :mod:`~radiosharp.engine.optim`: the optimizer and the learning-rate schedule (a pure
  function of the step);
- :mod:`~radiosharp.engine.rundir`: the run folder (never clobbered), checkpoints
  (written to ``step_N.tmp``, marked ``DONE``, renamed), resume checks, the metrics
  log and wandb;
- :mod:`~radiosharp.engine.launch`: processes, devices, mixed precision and DeepSpeed;
- :mod:`~radiosharp.engine.integrity`: what a checkpoint's ``DONE`` records (sizes and
  sha256 of its files) and the check a resumed run makes (newest intact checkpoint);
- :mod:`~radiosharp.engine.runlock`: one writer per run folder (an OS-level lock);
- :mod:`~radiosharp.engine.signals`: SIGTERM / SIGINT stop a run at a step boundary,
  with a checkpoint;
- :mod:`~radiosharp.engine.errors`: the one-line errors a run stops with;
- :mod:`~radiosharp.engine.trainer`: the :class:`Trainer` a kind of run subclasses
  (``build`` and ``train_step``) and its loop, on three bases:
  :mod:`~radiosharp.engine.trainer_setup` (everything before the first step),
  :mod:`~radiosharp.engine.checkpointing` (checkpoints, resume, guarded writes, the
  float32 export module) and :mod:`~radiosharp.engine.step_guard` (non-finite steps,
  the graceful stop).

Determinism and resume: the batches, the learning rate and (through Accelerate's
state saving) the model, optimizer and RNG states of step ``s`` are those of the run
that never stopped, so a resumed run equals an uninterrupted one. On a machine without
a GPU, start several processes with ``torchrun --nproc_per_node N`` (they join one
gloo group; ``accelerate launch --cpu`` starts a single process).

The names below are importable from ``radiosharp.engine`` itself.
"""

from __future__ import annotations

from radiosharp.engine import errors, integrity, launch, optim, order, rundir, runlock, signals, trainer
from radiosharp.engine.errors import *  # noqa: F403
from radiosharp.engine.integrity import *  # noqa: F403
from radiosharp.engine.launch import *  # noqa: F403
from radiosharp.engine.optim import *  # noqa: F403
from radiosharp.engine.order import *  # noqa: F403
from radiosharp.engine.rundir import *  # noqa: F403
from radiosharp.engine.runlock import *  # noqa: F403
from radiosharp.engine.signals import *  # noqa: F403
from radiosharp.engine.trainer import *  # noqa: F403

__all__ = [
    *order.__all__,
    *optim.__all__,
    *rundir.__all__,
    *launch.__all__,
    *trainer.__all__,
    *errors.__all__,
    *integrity.__all__,
    *runlock.__all__,
    *signals.__all__,
]

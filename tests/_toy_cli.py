"""The train CLI (``radiosharp.train.main``) running the toy kind of run of ``_toy_trainer.py``.

Run as a script, ``python tests/_toy_cli.py RECIPE.yaml [key=value ...]`` is
``python -m radiosharp.train`` whose ``distill`` kind is :class:`SlowToyTrainer`: the
CLI's messages and exit statuses around the engine, at the toy's cost. The fault tests
import it too (``run`` is the kind's entry point). ``TOY_STEP_SLEEP`` seconds are slept
in every step from ``TOY_SLOW_FROM`` (0-based, default 0) on, so that a signal can be
sent while the run trains; ``TOY_NAN_AT`` (comma-separated steps) makes those losses NaN;
``TOY_NOISE=1`` adds dropout and noise (a resumed run then matches only when its RNG states came back).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _toy_trainer import ToyTrainer  # noqa: E402

from radiosharp.recipe import Recipe  # noqa: E402


class SlowToyTrainer(ToyTrainer):
    """:class:`ToyTrainer` that sleeps ``TOY_STEP_SLEEP`` seconds per step from ``TOY_SLOW_FROM`` on."""

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if step >= int(os.environ.get("TOY_SLOW_FROM", "0")):
            time.sleep(float(os.environ.get("TOY_STEP_SLEEP", "0")))
        return super().train_step(batch, step)


def run(recipe: Recipe) -> Path:
    nan_at = tuple(int(s) for s in os.environ.get("TOY_NAN_AT", "").split(",") if s)
    return SlowToyTrainer(recipe, noise=bool(os.environ.get("TOY_NOISE")), nan_at=nan_at).run()


if __name__ == "__main__":
    import radiosharp.train as train

    train.TRAINERS["distill"] = "_toy_cli"
    sys.exit(train.main(sys.argv[1:]))

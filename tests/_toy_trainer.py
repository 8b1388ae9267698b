"""A toy kind of run for the engine tests: a small MLP regressing a fixed random target.

It needs no teachers, so the engine's own behaviour (schedule, checkpoints, resume,
several processes) is what the tests see. Run as a script it trains one recipe given
as a JSON file; ``tests/test_engine.py`` launches it under ``torchrun`` that way::

    torchrun --nproc_per_node 2 tests/_toy_trainer.py recipe.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from radiosharp.engine import Trainer
from radiosharp.export import save_export
from radiosharp.recipe import OptimConfig, Recipe, TrainConfig

IMAGE_SHAPE = (3, 8, 8)
TARGET_DIM = 4


class ToyDataset(Dataset):
    """``n`` seeded samples ``{"image": [3,8,8], "target": [4], "index": i}``: each image is
    one random colour plus a little noise, its target a fixed random linear map of the
    colour, so a small MLP learns it in a few dozen steps."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        colors = torch.rand(n, IMAGE_SHAPE[0], generator=g)
        self.images = colors[:, :, None, None] + 0.1 * torch.rand(n, *IMAGE_SHAPE, generator=g)
        mix = torch.randn(TARGET_DIM, IMAGE_SHAPE[0], generator=g)
        self.targets = (colors - 0.5) @ mix.T * 2

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i], "index": torch.tensor(i)}


class ToyMLP(nn.Module):
    def __init__(self, dropout: float = 0.0, unused_head: bool = False) -> None:
        super().__init__()
        dim = 1
        for s in IMAGE_SHAPE:
            dim *= s
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(dim, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, TARGET_DIM)
        )
        # A head the loss never touches: DDP needs find_unused_parameters for it.
        self.unused = nn.Linear(4, 4) if unused_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Interrupted(RuntimeError):
    """Stands for a killed process: raised when step ``kill_at`` begins."""


class ToyTrainer(Trainer):
    """The engine's loop around :class:`ToyMLP`.

    ``noise`` adds dropout and ``torch.randn`` noise to every step, so a resumed run
    only matches when the RNG states come back; ``kill_at`` raises
    :class:`Interrupted` as that (0-based) step begins, after the steps before it were
    logged and checkpointed as the recipe says; ``unused_head`` adds parameters the loss
    never reaches (``find_unused``, by default the same, sets the DDP option); ``seen``
    records the sample indices of every micro-batch and ``lrs`` the learning rate the
    optimizer used at each one; ``nan_at``: the (0-based) steps whose loss is made NaN.
    """

    kind = "toy"

    def __init__(
        self,
        recipe: Recipe,
        noise: bool = False,
        kill_at: int | None = None,
        dataset_size: int = 64,
        unused_head: bool = False,
        find_unused: bool | None = None,
        nan_at: tuple[int, ...] = (),
    ) -> None:
        self.noise, self.kill_at, self.nan_at = noise, kill_at, set(nan_at)
        self.dataset_size, self.unused_head = dataset_size, unused_head
        self.find_unused_parameters = unused_head if find_unused is None else find_unused
        self.seen: list[list[int]] = []
        self.lrs: list[float] = []
        super().__init__(recipe)

    def build(self) -> None:
        self.dataset = ToyDataset(self.dataset_size)
        self.model = ToyMLP(dropout=0.3 if self.noise else 0.0, unused_head=self.unused_head)

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if step == self.kill_at:
            raise Interrupted(f"killed as step {step} began")
        self.seen.append(batch["index"].tolist())
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        images = batch["image"].to(self.accelerator.device)
        target = batch["target"].to(self.accelerator.device)
        pred = self.model(images)
        if self.noise:
            pred = pred + 0.05 * torch.randn_like(pred)
        loss = F.mse_loss(pred, target)
        if step in self.nan_at:
            loss = loss * float("nan")
        return loss, {"mse": loss.detach()}

    def export(self) -> None:
        save_export(self.run_dir, self.exported_model(), "toy", {"dropout": 0.3 if self.noise else 0.0})


def toy_recipe(
    output_dir: str | Path,
    steps: int = 30,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 1e-2,
    warmup_steps: int = 5,
    log_every: int = 5,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    seed: int = 0,
    resume: bool = False,
    grad_clip: float | None = 1.0,
    skip_nonfinite: int = 0,
    compile: str = "no",
) -> Recipe:
    """A CPU recipe for :class:`ToyTrainer` (kind ``distill`` only to satisfy the schema)."""
    optim = OptimConfig(lr=lr, warmup_steps=warmup_steps, min_lr_ratio=0.1, weight_decay=0.01, grad_clip=grad_clip)
    train = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        mixed_precision="auto",
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        skip_nonfinite=skip_nonfinite,
        compile=compile,
        optim=optim,
    )
    return Recipe(kind="distill", name="toy", output_dir=str(output_dir), seed=seed, resume=resume, train=train)


def main(argv: list[str]) -> int:
    """``_toy_trainer.py JOBS_JSON``: run each ``{"recipe": {...}, "options": {...}}`` of the
    list in turn (any number of processes; ``options`` are ToyTrainer keywords). A job
    stopped by ``kill_at`` counts as a killed process: the next job starts afresh."""
    from accelerate.state import AcceleratorState, GradientState

    for job in json.loads(Path(argv[0]).read_text()):
        recipe = Recipe.model_validate(job["recipe"])
        try:
            ToyTrainer(recipe, **job.get("options", {})).run()
        except Interrupted:
            pass
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def recipe_file(path: Path, **kwargs: Any) -> Path:
    """A toy recipe as a YAML file (``toy_recipe`` keywords; ``output_dir`` is a keyword too)."""
    import yaml

    out = kwargs.pop("output_dir")
    path.write_text(yaml.safe_dump(toy_recipe(out, **kwargs).model_dump(mode="json")))
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (folders as ``<dir>``): what a refused run must leave as it was."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(path.rglob("*"))}

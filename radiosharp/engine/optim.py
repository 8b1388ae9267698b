"""The optimizer and the learning-rate schedule of a training run.

The learning rate is a pure function of the step (:func:`lr_at`), so a resumed run
follows the schedule of the run that never stopped; :func:`make_optimizer` builds the
recipe's optimizer with weight decay only where it helps.
"""

from __future__ import annotations

import math

import torch

from radiosharp.recipe import OptimConfig, RecipeError

__all__ = ["NO_DECAY_NAMES", "lr_at", "make_optimizer"]


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Linear warm-up to ``optim.lr``, then cosine decay to ``optim.lr * min_lr_ratio``."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, total - optim.warmup_steps)
    t = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


NO_DECAY_NAMES = ("token", "pos", "table", "debias", "alibi", "tap_", "register")


def make_optimizer(
    params: list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]], optim: OptimConfig
) -> torch.optim.Optimizer:
    """The recipe's optimizer; no weight decay on biases, norms, 1-D parameters, and on
    learned tokens, position tables and de-bias buffers (named ones: ``NO_DECAY_NAMES``),
    which decay would pull toward zero for no benefit. Pass ``named_parameters()`` so
    names can be read; bare parameters fall back to the 1-D rule alone.
    """
    named = [item if isinstance(item, tuple) else ("", item) for item in params]
    named = [(n, p) for n, p in named if p.requires_grad]

    def decays(name: str, p: torch.nn.Parameter) -> bool:
        leaf = name.lower()
        return p.ndim >= 2 and not any(key in leaf for key in NO_DECAY_NAMES)

    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)
    if optim.name == "nadam":
        return torch.optim.NAdam(groups, lr=optim.lr, betas=optim.betas, decoupled_weight_decay=True)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.betas[0])
    if optim.name == "lamb":
        try:
            from timm.optim import Lamb
        except ImportError as err:  # pragma: no cover - timm is a dependency
            raise RecipeError("optimizer 'lamb' needs timm") from err
        return Lamb(groups, lr=optim.lr, betas=optim.betas)
    raise RecipeError(f"unknown optimizer '{optim.name}'")

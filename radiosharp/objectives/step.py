"""One training pass of an upsampled teacher under any objective of :mod:`radiosharp.objectives`."""

from __future__ import annotations

from typing import Any

import torch

from radiosharp.multiview.loss import Downsample, consistency_step
from radiosharp.multiview.views import ViewConfig
from radiosharp.objectives.config import ObjectiveConfig
from radiosharp.objectives.targets import TARGETS

__all__ = ["objective_step"]


def objective_step(
    up: Any,
    images: torch.Tensor,
    objective: ObjectiveConfig,
    views: ViewConfig,
    downsample: Downsample | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, extra)`` of one batch; ``downsample`` (the attention downsampler) is what
    ``multiview`` compares through, and the other objectives need none."""
    if objective.name == "multiview":
        if downsample is None:
            raise ValueError("objective multiview needs a downsampler (the attention downsampler of the run)")
        return consistency_step(up, images, views, downsample, generator, objective.mse, objective.cosine)
    return TARGETS[objective.name](up, images, objective, views, generator)

"""Training objectives of upsamplers: what an upsampler's output is compared with.

- :mod:`radiosharp.objectives.config`: the recipe's ``objective`` and its checks;
- :mod:`radiosharp.objectives.losses`: masked MSE / cosine, the terms of every objective;
- :mod:`radiosharp.objectives.targets`: the self-supervised targets (``low_to_high``,
  ``crop_hires``, ``hires_teacher``); ``multiview`` is :mod:`radiosharp.multiview`;
- :mod:`radiosharp.objectives.step`: one training pass of an upsampled teacher under any
  objective (:func:`~radiosharp.objectives.step.objective_step`).

This package's ``__init__`` imports only the two leaf modules, so
:mod:`radiosharp.multiview` can use the loss terms without an import cycle.
"""

from radiosharp.objectives.config import OBJECTIVES, ObjectiveConfig, ObjectiveError, check_objective
from radiosharp.objectives.losses import masked_cosine, masked_mse, regression_loss

__all__ = [
    "OBJECTIVES",
    "ObjectiveConfig",
    "ObjectiveError",
    "check_objective",
    "masked_cosine",
    "masked_mse",
    "regression_loss",
]

"""What the dense probes (``semseg``, ``depth``, ``normals``) share: their probe options and how a task keeps them.

The shared options are one option group (:class:`ProbeOptions`, :mod:`radiosharp.option_groups`):
a task builder takes ``probe: ProbeOptions`` beside its own options, so the registry checks every
key and a recipe sees one flat list of defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from radiosharp.eval.features import FeatureSet
from radiosharp.eval.task import EvalContext, EvalTask

FIT_KEYS = ("steps", "lr", "weight_decay", "batch_size", "pixels_per_image")


@dataclass(frozen=True)
class ProbeOptions:
    """``data`` / ``val_data``: the probe's train and val sources (default: the eval's);
    ``steps`` ... ``pixels_per_image``: the probe's fit (AdamW, full-batch pixels sampled per
    image); ``seeds``: probe seeds (mean ± std); ``val_fraction`` / ``split_seed``: the split
    of ``data`` when no ``val_data`` is given."""

    data: dict[str, Any] | None = None
    val_data: dict[str, Any] | None = None
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 16
    pixels_per_image: int | None = 1024
    seeds: int = 3
    val_fraction: float = 0.25
    split_seed: int = 0


class DenseProbeTask(EvalTask):
    """A dense probe task: every option an attribute (the probe's and the task's own), the fit
    options gathered in ``fit_args``."""

    def __init__(self, probe: ProbeOptions, **options: Any) -> None:
        shared = {field.name: getattr(probe, field.name) for field in dataclasses.fields(probe)}
        for key, value in {**shared, **options}.items():
            setattr(self, key, value)
        self.fit_args = {key: shared[key] for key in FIT_KEYS}

    def fit_options(self, ctx: EvalContext, train: FeatureSet, seed: int) -> dict[str, Any]:
        """The keywords every dense probe fit takes: the probe ``seed``, the eval's device, the
        train features' statistics and the task's fit options (``fit_args``)."""
        return dict(seed=seed, device=ctx.device, stats=train.dense_stats, **self.fit_args)

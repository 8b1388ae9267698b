"""What the dense probes (``semseg``, ``depth``) share: their probe options and how a task keeps them.

The shared options live in one signature (:func:`_probe_options`); :func:`dense_probe_builder`
gives a task builder that signature plus its own options, so the registry checks every key
and a recipe sees one list of defaults.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from radiosharp.eval.features import FeatureSet
from radiosharp.eval.task import EvalContext, EvalTask

FIT_KEYS = ("steps", "lr", "weight_decay", "batch_size", "pixels_per_image")
Builder = TypeVar("Builder", bound=Callable[..., Any])


def _probe_options(
    data: dict[str, Any] | None = None,
    val_data: dict[str, Any] | None = None,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    pixels_per_image: int | None = 1024,
    seeds: int = 3,
    val_fraction: float = 0.25,
    split_seed: int = 0,
) -> None:
    """``data`` / ``val_data``: the probe's train and val sources (default: the eval's);
    ``steps`` ... ``pixels_per_image``: the probe's fit (AdamW, full-batch pixels sampled per
    image); ``seeds``: probe seeds (mean ± std); ``val_fraction`` / ``split_seed``: the split
    of ``data`` when no ``val_data`` is given."""


PROBE_OPTIONS = tuple(inspect.signature(_probe_options).parameters.values())


def dense_probe_builder(builder: Builder) -> Builder:
    """``builder(**own options, **probe options)`` with the shared probe options in its signature."""
    own = [p for p in inspect.signature(builder).parameters.values() if p.kind is not p.VAR_KEYWORD]
    signature = inspect.signature(builder).replace(parameters=[*PROBE_OPTIONS, *own])

    @functools.wraps(builder)
    def build(**options: Any) -> Any:
        bound = signature.bind(**options)
        bound.apply_defaults()
        return builder(**bound.arguments)

    build.__signature__ = signature  # type: ignore[attr-defined]
    return build  # type: ignore[return-value]


class DenseProbeTask(EvalTask):
    """A dense probe task: every option an attribute, the fit options gathered in ``fit_args``."""

    def __init__(self, **options: Any) -> None:
        for key, value in options.items():
            setattr(self, key, value)
        self.fit_args = {key: options[key] for key in FIT_KEYS}

    def fit_options(self, ctx: EvalContext, train: FeatureSet, seed: int) -> dict[str, Any]:
        """The keywords every dense probe fit takes: the probe ``seed``, the eval's device, the
        train features' statistics and the task's fit options (``fit_args``)."""
        return dict(seed=seed, device=ctx.device, stats=train.dense_stats, **self.fit_args)

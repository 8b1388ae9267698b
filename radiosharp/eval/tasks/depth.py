"""``depth``: linear per-pixel depth probe on the dense map; RMSE and delta1."""
from __future__ import annotations

from typing import Any

from radiosharp.eval.features import train_val_features
from radiosharp.eval.metrics import depth_errors
from radiosharp.eval.probes import fit_depth_probe
from radiosharp.eval.task import EvalContext, EvalTask, over_seeds
from radiosharp.registry import TASKS


class DepthTask(EvalTask):
    """A 1x1-conv probe to depth (standardised by the training set, bilinearly upsampled to
    the depth map, MSE on valid pixels). ``rmse`` (lower is better) in the data's depth
    units and ``delta1`` = fraction of pixels with max(p/g, g/p) < 1.25 (higher is better).
    """

    name = "depth"
    metrics = {"rmse": False, "delta1": True}

    def __init__(self, data, val_data, steps, lr, weight_decay, batch_size, pixels_per_image, seeds, min_depth,
                 val_fraction, split_seed) -> None:
        self.data, self.val_data = data, val_data
        self.fit_args = dict(steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                             pixels_per_image=pixels_per_image)
        self.seeds, self.min_depth = seeds, min_depth
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(ctx, self.data, self.val_data, self.val_fraction, self.split_seed)
        where = self.data or ctx.default_data
        train_depth, val_depth = train.require("depth", self.name, where), val.require("depth", self.name, where)
        size = tuple(val_depth.shape[-2:])

        def one_seed(seed: int) -> dict[str, float]:
            probe = fit_depth_probe(train.dense, train_depth, self.min_depth, seed=seed, device=ctx.device,
                                    stats=train.dense_stats, **self.fit_args)
            return depth_errors(probe.predict(val.dense, size, device=ctx.device), val_depth, self.min_depth)

        return over_seeds(self.seeds, one_seed)


@TASKS.register("depth")
def build_depth(data: dict[str, Any] | None = None, val_data: dict[str, Any] | None = None, steps: int = 300,
                lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 16,
                pixels_per_image: int | None = 1024, seeds: int = 3,
                min_depth: float = 1e-3, val_fraction: float = 0.25, split_seed: int = 0) -> DepthTask:
    """Linear depth probe on data with ``depth`` (pixels <= ``min_depth`` or non-finite are invalid)."""
    return DepthTask(data, val_data, steps, lr, weight_decay, batch_size, pixels_per_image, seeds, min_depth,
                     val_fraction, split_seed)

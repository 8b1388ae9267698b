"""``depth``: linear per-pixel depth probe on the dense map; RMSE and delta1."""

from __future__ import annotations

from typing import Any

import torch

from radiosharp.eval.examples import EXAMPLES, write_examples
from radiosharp.eval.features import train_val_features
from radiosharp.eval.metrics import depth_errors
from radiosharp.eval.probes import fit_depth_probe
from radiosharp.eval.task import EvalContext, over_seeds
from radiosharp.eval.tasks._dense import DenseProbeTask, dense_probe_builder
from radiosharp.registry import TASKS


class DepthTask(DenseProbeTask):
    """A 1x1-conv probe to depth (standardised by the training set, bilinearly upsampled to
    the depth map, MSE on valid pixels). ``rmse`` (lower is better) in the data's depth
    units and ``delta1`` = fraction of pixels with max(p/g, g/p) < 1.25 (higher is better).
    """

    name = "depth"
    metrics = {"rmse": False, "delta1": True}

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(ctx, self.data, self.val_data, self.val_fraction, self.split_seed)
        where = self.data or ctx.default_data
        train_depth, val_depth = train.require("depth", self.name, where), val.require("depth", self.name, where)
        size = tuple(val_depth.shape[-2:])
        shown: dict[str, torch.Tensor] = {}

        def one_seed(seed: int) -> dict[str, float]:
            probe = fit_depth_probe(
                train.dense,
                train_depth,
                self.min_depth,
                seed=seed,
                device=ctx.device,
                stats=train.dense_stats,
                **self.fit_args,
            )
            pred = probe.predict(val.dense, size, device=ctx.device)
            if seed == 0:
                shown["pred"] = pred[:EXAMPLES]
            return depth_errors(pred, val_depth, self.min_depth)

        values = over_seeds(self.seeds, one_seed)
        truth = val_depth[:EXAMPLES]
        valid = torch.isfinite(truth) & (truth > self.min_depth)
        write_examples(ctx, self.name, val.thumbnails, truth, shown["pred"], "depth", valid)
        return values


@TASKS.register("depth")
@dense_probe_builder
def build_depth(min_depth: float = 1e-3, **probe: Any) -> DepthTask:
    """Linear depth probe on data with ``depth`` (pixels <= ``min_depth`` or non-finite are invalid).
    The probe options (``steps``, ``lr``, ... ) are the dense probes' shared ones (``_dense``)."""
    return DepthTask(min_depth=min_depth, **probe)

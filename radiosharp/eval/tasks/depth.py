"""``depth``: Probe3D-style depth probe on the dense map; RMSE, AbsRel and delta1-3."""

from __future__ import annotations

import torch

from radiosharp.eval.examples import EXAMPLES, write_examples
from radiosharp.eval.features import train_val_features
from radiosharp.eval.metrics import depth_errors
from radiosharp.eval.probes import fit_binned_depth_probe, fit_depth_probe
from radiosharp.eval.task import EvalContext, over_seeds
from radiosharp.eval.tasks._dense import DenseProbeTask, ProbeOptions
from radiosharp.registry import TASKS

HEADS = ("binned", "linear")


class DepthTask(DenseProbeTask):
    """A 1x1-conv probe on frozen dense features, bilinearly upsampled to the depth map.

    ``head: binned`` (default, Probe3D's): ``bins`` logits per pixel over fixed bins spanning
    the training depths, depth = the softmax-weighted mean of the bin centres, trained with the
    scale-invariant log loss. ``head: linear``: one output, depth standardised by the training
    set, MSE. Metrics on valid pixels: ``rmse`` (in the data's depth units) and ``absrel``,
    lower is better; ``delta1`` / ``delta2`` / ``delta3``, the fraction of pixels with
    max(p/g, g/p) < 1.25^k, higher is better.
    """

    name = "depth"
    metrics = {"rmse": False, "absrel": False, "delta1": True, "delta2": True, "delta3": True}

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(ctx, self.data, self.val_data, self.val_fraction, self.split_seed)
        where = self.data or ctx.default_data
        train_depth, val_depth = train.require("depth", self.name, where), val.require("depth", self.name, where)
        size = tuple(val_depth.shape[-2:])
        shown: dict[str, torch.Tensor] = {}

        def one_seed(seed: int) -> dict[str, float]:
            common = self.fit_options(ctx, train, seed)
            if self.head == "binned":
                probe = fit_binned_depth_probe(train.dense, train_depth, self.min_depth, self.bins, **common)
            else:
                probe = fit_depth_probe(train.dense, train_depth, self.min_depth, **common)
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
def build_depth(probe: ProbeOptions, min_depth: float = 1e-3, head: str = "binned", bins: int = 256) -> DepthTask:
    """Depth probe on data with ``depth`` (pixels <= ``min_depth`` or non-finite are invalid);
    ``head``: ``binned`` (``bins`` fixed bins, Probe3D) or ``linear``. The probe options
    (``steps``, ``lr``, ... ) are the dense probes' shared ones (``_dense``)."""
    if head not in HEADS:
        raise ValueError(f"head '{head}' is not valid; valid: {', '.join(HEADS)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    return DepthTask(probe, min_depth=min_depth, head=head, bins=bins)

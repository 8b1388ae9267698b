"""``normals``: Probe3D-style linear surface-normal probe on the dense map; angular errors.

Targets come from the data: a ``normals`` key per sample ([3,H,W] camera-space unit
vectors, with an optional ``normals_valid`` [H,W] mask; all-zero or non-finite vectors are
invalid), else normals derived from its ``depth`` by
:func:`radiosharp.data.synthetic.normals_from_depth` (pinhole camera, focal = image width
unless ``focal`` is given, principal point at the centre; pixels next to a depth
discontinuity are invalid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.data.synthetic import normals_from_depth
from radiosharp.eval.examples import EXAMPLES, write_examples
from radiosharp.eval.features import FeatureSet, describe_data, train_val_features
from radiosharp.eval.metrics import normal_errors
from radiosharp.eval.probes import DenseLinearProbe, fit_dense_probe, predict_dense
from radiosharp.eval.task import EvalContext, TaskSkipped, over_seeds
from radiosharp.eval.tasks._dense import DenseProbeTask, ProbeOptions
from radiosharp.registry import TASKS


def fit_normals_probe(
    features: torch.Tensor, normals: torch.Tensor, valid: torch.Tensor, **kwargs: Any
) -> DenseLinearProbe:
    """A 3-channel ``DenseLinearProbe`` trained with the cosine loss ``1 - cos(out, n)`` on valid pixels.

    ``features`` [N,D,h,w], ``normals`` [N,3,S,S], ``valid`` [N,S,S]; ``kwargs`` are
    ``fit_dense_probe``'s (steps, lr, seed, pixels_per_image, ...). ``fit_dense_probe`` samples
    pixels of a one-channel target, so its target here is each pixel's id and the loss looks
    up that pixel's normal and validity (the same sampling, seeding and device handling).
    """
    if normals.shape[1] != 3 or normals.shape[-2:] != valid.shape[-2:]:
        raise ValueError(f"fit_normals_probe: normals {tuple(normals.shape)} and valid {tuple(valid.shape)}")
    if not valid.any():
        raise ValueError("fit_normals_probe: no valid normal pixels")
    table = torch.cat([F.normalize(torch.nan_to_num(normals.float()), dim=1), valid[:, None].float()], 1)
    table = table.movedim(1, -1).reshape(-1, 4)  # pixel id -> (nx, ny, nz, valid)
    ids = torch.arange(table.shape[0]).view(valid.shape)
    on_device: dict[torch.device, torch.Tensor] = {}

    def loss_fn(out: torch.Tensor, pixel_ids: torch.Tensor) -> torch.Tensor:
        rows = on_device.setdefault(out.device, table.to(out.device))[pixel_ids.long()]  # [...,4]
        cos = (F.normalize(out.movedim(1, -1), dim=-1) * rows[..., :3]).sum(-1)
        ok = rows[..., 3]
        return ((1 - cos) * ok).sum() / ok.sum().clamp_min(1)

    return fit_dense_probe(features, ids, 3, loss_fn, **kwargs)


def predict_normals(
    probe: DenseLinearProbe, features: torch.Tensor, size: tuple[int, int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Unit normals ``[N,3,S,S]``: the probe's output bilinearly resized to ``size``, then normalised."""
    return predict_dense(probe, features, size, device=device, reduce=lambda out: F.normalize(out, dim=1))


def _data_normals(ctx: EvalContext, data: Mapping[str, Any], feats: FeatureSet) -> tuple[torch.Tensor, ...] | None:
    """(normals, valid) of ``feats``' images read from the samples' ``normals`` keys, or None when
    the data has none. The feature cache keeps only label / mask / depth targets, so the samples
    are read again and matched to the features by key (or by position when they are all there)."""
    dataset = ctx.features.dataset(data)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return None  # streamed (webdataset shards): no second read by index
    try:
        first = dataset[0]
    except (TypeError, NotImplementedError, KeyError):
        return None
    if not isinstance(first, Mapping) or first.get("normals") is None:
        return None
    samples = [dataset[i] for i in range(len(dataset))]
    if feats.keys and all(isinstance(s, Mapping) and s.get("key") is not None for s in samples):
        by_key = {str(s["key"]): s for s in samples}
        missing = [k for k in feats.keys if k not in by_key]
        if missing:
            raise TaskSkipped(f"normals: the data {describe_data(data)} has no sample '{missing[0]}' of the features")
        samples = [by_key[k] for k in feats.keys]
    elif len(samples) != len(feats):
        raise TaskSkipped(
            f"normals: {len(feats)} feature maps but {len(samples)} samples in {describe_data(data)}, without keys "
            "to match them"
        )
    normals, valid = [], []
    for sample in samples:
        n = torch.as_tensor(sample["normals"]).float()
        ok = torch.isfinite(n).all(0) & (n.norm(dim=0) > 0)
        if sample.get("normals_valid") is not None:
            ok &= torch.as_tensor(sample["normals_valid"]).bool()
        normals.append(torch.nan_to_num(n))
        valid.append(ok)
    return torch.stack(normals), torch.stack(valid)


class NormalsTask(DenseProbeTask):
    """A 1x1-conv probe to 3 channels, bilinearly upsampled to the target and normalised to unit
    length, trained with a cosine loss on valid pixels (see ``fit_normals_probe``). Metrics over
    valid val pixels (``metrics.normal_errors``): ``angular_rmse`` and ``angular_mean`` in degrees
    (lower is better), ``within_11_25`` / ``within_22_5`` / ``within_30`` in % (higher is better).
    """

    name = "normals"
    metrics = {
        "angular_rmse": False,
        "angular_mean": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }

    def targets(self, ctx: EvalContext, feats: FeatureSet, data: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """(normals [N,3,S,S], valid [N,S,S]): the features' own ``normals`` (when the cache has them),
        the samples' ``normals`` keys, else normals derived from ``depth``."""
        if getattr(feats, "normals", None) is not None:
            normals = feats.normals.float()
            valid = getattr(feats, "normals_valid", None)
            valid = (normals.norm(dim=1) > 0) if valid is None else valid.bool()
            return normals, valid
        read = _data_normals(ctx, data, feats)
        if read is not None:
            return read
        if feats.depth is None:
            raise TaskSkipped(f"{self.name}: the data {dict(data)} has neither 'normals' nor 'depth'")
        return normals_from_depth(feats.depth, self.focal, self.min_depth, self.max_jump)

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(ctx, self.data, self.val_data, self.val_fraction, self.split_seed)
        where = self.data or ctx.default_data
        val_where = self.val_data or (ctx.default_val_data if self.data is None else None) or where
        train_normals, train_valid = self.targets(ctx, train, where)
        val_normals, val_valid = self.targets(ctx, val, val_where)
        if not train_valid.any() or not val_valid.any():
            raise TaskSkipped(
                f"{self.name}: no valid normal pixels in the {'val' if train_valid.any() else 'train'} data"
            )
        size = tuple(val_normals.shape[-2:])
        shown: dict[str, torch.Tensor] = {}

        def one_seed(seed: int) -> dict[str, float]:
            probe = fit_normals_probe(train.dense, train_normals, train_valid, **self.fit_options(ctx, train, seed))
            pred = predict_normals(probe, val.dense, size, ctx.device)
            if seed == 0:
                shown["pred"] = pred[:EXAMPLES]
            return normal_errors(pred, val_normals, val_valid)

        values = over_seeds(self.seeds, one_seed)
        write_examples(
            ctx, self.name, val.thumbnails, val_normals[:EXAMPLES], shown["pred"], "normals", val_valid[:EXAMPLES]
        )
        return values


@TASKS.register("normals")
def build_normals(
    probe: ProbeOptions, focal: float | None = None, min_depth: float = 1e-3, max_jump: float = 0.01
) -> NormalsTask:
    """Linear surface-normal probe on data with ``normals`` or, failing that, ``depth``.

    ``focal`` (pixels; default the image width), ``min_depth`` and ``max_jump`` (the relative second
    difference of depth that marks a discontinuity) are ``normals_from_depth``'s, used only for normals derived
    from depth. The probe options (``steps``, ``lr``, ... ) are the dense probes' shared ones (``_dense``)."""
    return NormalsTask(probe, focal=focal, min_depth=min_depth, max_jump=max_jump)

"""``keypoints``: zero-shot keypoint correspondence by nearest-neighbour dense features; PCK@alpha.

For every pair of a keypoint source (``keypoint_pairs``: SPair-71k, :mod:`radiosharp.data.keypoint_pairs`;
``synthetic_pairs``: known affine warps, :mod:`radiosharp.data.synthetic_pairs`), each source keypoint's
feature is the source dense map sampled bilinearly at the point; the prediction is the
pixel of the target whose feature is most cosine-similar to it, searched over the target
map bilinearly upsampled to a ``match_size`` square (default: the image side, so every
image pixel is a candidate) and mapped back to that pixel's centre. A prediction is
correct when it lies within ``alpha * scale`` of the ground-truth target keypoint, where
``scale`` is ``max(h, w)`` of the target object's box (SPair) or the image side (no box).

Protocol note. This follows the zero-shot correspondence protocol of SPair-71k, DIFT and
Probe3D: frozen features, no training, nearest neighbour under cosine similarity, PCK with
the threshold relative to the target bounding box. Like DIFT we search the target map
upsampled to image resolution (``match_size: null``); setting ``match_size`` to the feature
grid's side gives the coarser grid search, which caps a patch-16 ViT at 224 px to 14x14
candidate positions. The reported ``pck@0.1`` pools every keypoint of the split ("per
point", as SPair / DIFT report it); ``average: pairs`` gives the mean of per-pair PCKs
instead. Differences to keep in mind when comparing with published numbers: images are
padded to a square of ``size`` (``fit: pad``) rather than resized to the models' own
resolutions, no viewpoint / truncation bins (Probe3D reports PCK binned by viewpoint
change) and no mutual-nearest-neighbour or soft-argmax refinement; the result is
deterministic given the features, so one value per metric (std 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.eval.features import FeatureSet, describe_data
from radiosharp.eval.metrics import PCK_ALPHAS, pck
from radiosharp.eval.task import EvalContext, EvalTask, TaskSkipped
from radiosharp.images import resize
from radiosharp.registry import TASKS

AVERAGES = ("points", "pairs")
DEFAULT_DATA = {"source": "synthetic_pairs", "num_pairs": 32, "num_keypoints": 32, "seed": 0}


def sample_features(dense: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """``[K,D]`` unit features of ``dense`` [D,h,w] at continuous pixel points ``[K,2]`` of a ``size``
    square image (bilinear, ``align_corners=False``: the map spans the whole image)."""
    grid = (2 * points.to(dense) / size - 1).view(1, 1, -1, 2)
    sampled = F.grid_sample(dense[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(sampled[0, :, 0].T, dim=1)


def match_keypoints(
    src_dense: torch.Tensor, trg_dense: torch.Tensor, src_kps: torch.Tensor, size: int, match_size: int | None = None
) -> torch.Tensor:
    """Predicted target points ``[K,2]`` of the source keypoints: the centre of the target pixel (of the
    ``match_size`` square, default ``size``) whose upsampled, L2-normalised feature has the highest
    cosine similarity to the source feature at the keypoint."""
    m = int(match_size or size)
    query = sample_features(src_dense, src_kps, size)  # [K,D]
    keys = F.normalize(resize(trg_dense[None], (m, m))[0].flatten(1), dim=0)  # [D,m*m]
    best = (query @ keys).argmax(1)
    cols, rows = best % m, torch.div(best, m, rounding_mode="floor")
    return (torch.stack([cols, rows], 1).to(torch.float64) + 0.5) * (size / m)


class KeypointsTask(EvalTask):
    """PCK of nearest-neighbour keypoint transfer (see the module doc); metrics in 0..1, higher is better."""

    name = "keypoints"
    metrics = {f"pck@{alpha:g}": True for alpha in PCK_ALPHAS}

    def __init__(self, data: dict[str, Any] | str | None, match_size: int | None, average: str) -> None:
        if average not in AVERAGES:
            raise ValueError(f"keypoints: average must be one of {', '.join(AVERAGES)}, got '{average}'")
        if match_size is not None and match_size < 1:
            raise ValueError(f"keypoints: match_size must be >= 1 (or null for the image side), got {match_size}")
        self.data, self.match_size, self.average = data, match_size, average

    def data_config(self, ctx: EvalContext) -> dict[str, Any]:
        if isinstance(self.data, str):  # a bare source name, as build_dataset takes it
            return {"source": self.data}
        if self.data is not None:
            return dict(self.data)
        size = (ctx.default_data or {}).get("size")
        return {**DEFAULT_DATA, "size": size if isinstance(size, int) else 224}

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        data = self.data_config(ctx)
        dataset = ctx.features.dataset(data)
        pairs = getattr(dataset, "keypoint_pairs", None)
        if not pairs:
            raise TaskSkipped(
                f"keypoints: the data {describe_data(data)} has no keypoint pairs (use source keypoint_pairs or "
                "synthetic_pairs)"
            )
        size = int(dataset.size)
        feats = ctx.features.get(data, dense=True)
        rows = _rows(feats, list(getattr(dataset, "image_keys", [])), data)
        dense = feats.require("dense", self.name, data)
        preds, targets, scales, groups = [], [], [], []
        left_out = 0
        with torch.no_grad():
            for index, pair in enumerate(pairs):
                if pair.src not in rows or pair.trg not in rows or len(pair.src_kps) == 0:
                    left_out += 1
                    continue
                src = dense[rows[pair.src]].to(ctx.device, torch.float32)
                trg = dense[rows[pair.trg]].to(ctx.device, torch.float32)
                preds.append(match_keypoints(src, trg, pair.src_kps.to(ctx.device), size, self.match_size).cpu())
                targets.append(pair.trg_kps.double())
                scales.append(torch.full((len(pair.trg_kps),), float(pair.scale), dtype=torch.float64))
                groups.append(torch.full((len(pair.trg_kps),), index))
        if not preds:
            raise TaskSkipped(f"keypoints: no pair of {describe_data(data)} has features for both images")
        if left_out:
            import warnings

            warnings.warn(
                f"keypoints: {left_out} of {len(pairs)} pairs of {describe_data(data)} are left out (an image "
                "without features, e.g. unreadable, or no keypoints)",
                stacklevel=2,
            )
        values = pck(
            torch.cat(preds),
            torch.cat(targets),
            torch.cat(scales),
            PCK_ALPHAS,
            groups=torch.cat(groups) if self.average == "pairs" else None,
        )
        return {name: [value] for name, value in values.items()}


def _rows(feats: FeatureSet, image_keys: list[str], data: Mapping[str, Any]) -> dict[str, int]:
    """Image key -> row of ``feats``: by the cached sample keys, else by position (all images there)."""
    if feats.keys:
        return {key: i for i, key in enumerate(feats.keys)}
    if len(image_keys) == len(feats):
        return {key: i for i, key in enumerate(image_keys)}
    raise TaskSkipped(
        f"keypoints: {len(feats)} feature maps but {len(image_keys)} images in {describe_data(data)}, without keys "
        "to match them"
    )


@TASKS.register("keypoints")
def build_keypoints(
    data: dict[str, Any] | str | None = None, match_size: int | None = None, average: str = "points"
) -> KeypointsTask:
    """Keypoint correspondence PCK@0.05 / 0.1 / 0.15 (``pck@0.1`` is the headline number).

    ``data``: a keypoint source (default ``{source: synthetic_pairs, num_pairs: 32, num_keypoints: 32,
    seed: 0}`` at the eval data's size, else 224); ``match_size``: side of the square the target
    features are upsampled to for the nearest-neighbour search (default null: the image side);
    ``average``: ``points`` (every keypoint counts once, default) or ``pairs`` (mean of per-pair PCK).
    """
    return KeypointsTask(data, match_size, average)

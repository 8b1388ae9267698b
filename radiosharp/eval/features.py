"""Frozen features for the probes: one (global vector, dense map) pair per image.

``split_output`` (:mod:`radiosharp.eval.feature_outputs`) turns what any featurizer returns
into ``(global [B,D], dense [B,D,h,w])``.

``FeatureStore`` runs the featurizer once per data config (batched, no grad, tqdm
progress) and keeps the result in memory, every global vector included, so kNN,
segmentation, depth and zero-shot (which reads the CLIP adaptor's summary) on the same
data share one pass. Probes then train on the cached tensors.

Labels of two data configs (train and val) are made to share the train split's class
ids by :func:`align_classes` (two image folders number their sub-folders apart as soon
as one lacks a class). A data source that cannot be opened raises
:class:`~radiosharp.data.errors.DataError` (the CLI's one-line error, exit 2).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from radiosharp.contracts import TeacherOutput
from radiosharp.data.errors import DataError
from radiosharp.data.loader import make_loader
from radiosharp.eval.feature_outputs import AUTO, BACKBONE, choose_summary, output_vectors, split_output
from radiosharp.eval.probes import channel_stats
from radiosharp.eval.settings import EvalError
from radiosharp.images import resize

__all__ = [
    "AUTO",
    "BACKBONE",
    "FeatureSet",
    "FeatureStore",
    "align_classes",
    "choose_summary",
    "describe_data",
    "output_vectors",
    "resolve_image_size",
    "seeded_split",
    "split_output",
    "thumbnail",
    "train_val_features",
]


@dataclass
class FeatureSet:
    """Cached features of one dataset plus its targets (any of them may be absent)."""

    vectors: torch.Tensor  # [N,D] global vectors
    dense: torch.Tensor | None = None  # [N,D,h,w]
    labels: torch.Tensor | None = None  # [N] long
    masks: torch.Tensor | None = None  # [N,S,S] long, 255 = ignore
    depth: torch.Tensor | None = None  # [N,S,S] float
    normals: torch.Tensor | None = None  # [N,3,S,S] unit vectors (the samples' own, when they carry them)
    normals_valid: torch.Tensor | None = None  # [N,S,S] bool
    class_names: list[str] | None = None
    num_classes: int | None = None
    keys: list[str] | None = None  # the sample keys (file names), to name an image in an error
    thumbnails: torch.Tensor | None = None  # [N,3,T,T] uint8 images (data with dense targets), for example pictures

    def __len__(self) -> int:
        return len(self.vectors)

    @cached_property
    def dense_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) of ``dense``, computed once: every probe seed and dense task
        on this set standardises with them."""
        return channel_stats(self.dense)

    def subset(self, index: torch.Tensor) -> FeatureSet:
        def take(t):
            if isinstance(t, torch.Tensor):
                return t[index]
            return [t[i] for i in index.tolist()] if isinstance(t, list) and len(t) == len(self) else t

        return replace(self, **{f.name: take(getattr(self, f.name)) for f in fields(self)})

    def require(self, what: str, task: str, data: Mapping[str, Any]) -> torch.Tensor:
        value = getattr(self, what)
        if value is None:
            from radiosharp.eval.task import TaskSkipped

            raise TaskSkipped(f"{task}: the data {dict(data)} has no '{what}'")
        return value


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) of a seeded random split of ``n`` items."""
    if not 0 < val_fraction < 1:
        raise EvalError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, min(n - 1, round(n * val_fraction)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def resolve_image_size(featurizer: nn.Module, image_size: int | None, data_size: int) -> int:
    """The input side: ``image_size``, else the featurizer's ``native_size``, else the data size,
    rounded to the nearest multiple of the featurizer's ``patch_size`` (>= one patch)."""
    size = image_size or getattr(featurizer, "native_size", None) or data_size
    patch = getattr(featurizer, "patch_size", None)
    if image_size is None and patch:
        size = max(patch, round(size / patch) * patch)
    return int(size)


@dataclass
class _Extracted:
    """One extraction pass over a dataset: its features with the "auto" global vectors,
    every global vector by source, and views of the features per summary source."""

    features: FeatureSet
    vectors: dict[str, torch.Tensor]
    teacher: bool
    views: dict[str, FeatureSet] = field(default_factory=dict)

    def view(self, summary: str) -> FeatureSet:
        """The features with the global vectors of ``summary`` (the same object on every call)."""
        vectors = choose_summary(self.vectors, summary, self.teacher)
        if vectors is self.features.vectors:
            return self.features
        if summary not in self.views:
            self.views[summary] = replace(self.features, vectors=vectors)
        return self.views[summary]


class FeatureStore:
    """Extracts and caches features of ``featurizer`` for data configs (see module doc).

    ``summary`` / ``dense`` are the default sources for students (see ``split_output``);
    a task may ask for another summary (zero-shot asks for the CLIP adaptor's): the cache
    holds every global vector, so that costs no second pass.
    """

    def __init__(
        self,
        featurizer: nn.Module,
        image_size: int | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        summary: str = AUTO,
        dense: str = AUTO,
        progress: bool = True,
    ) -> None:
        self.featurizer = featurizer
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.summary = summary
        self.dense = dense
        self.progress = progress
        self._cache: dict[str, _Extracted] = {}
        self._datasets: dict[str, Any] = {}
        self.passes = 0  # how many extraction passes ran (for tests / logs)

    @staticmethod
    def _key(data: Mapping[str, Any]) -> str:
        return json.dumps(dict(data), sort_keys=True, default=str)

    def dataset(self, data: Mapping[str, Any]) -> Any:
        """The data source built from ``data`` (once); DataError when it cannot be opened."""
        key = self._key(data)
        if key not in self._datasets:
            from radiosharp.builders import build_dataset

            try:
                self._datasets[key] = build_dataset(dict(data), where="eval data")
            except DataError:
                raise
            except (ValueError, FileNotFoundError) as err:  # a source's own check, or a library's
                raise DataError(f"eval data {describe_data(data)}: {err}") from None
        return self._datasets[key]

    def get(self, data: Mapping[str, Any], dense: bool = True, summary: str | None = None) -> FeatureSet:
        """Features of the dataset built from ``data`` (cached per data config), with the global
        vectors of ``summary`` (default: the store's)."""
        summary = summary or self.summary
        key = self._key(data)
        cached = self._cache.get(key)
        if cached is None or (dense and cached.features.dense is None):
            cached = self._cache[key] = self._extract(data, dense, summary)
        return cached.view(summary)

    @torch.no_grad()
    def _extract(self, data: Mapping[str, Any], keep_dense: bool, summary: str) -> _Extracted:
        dataset = self.dataset(data)
        was_training = self.featurizer.training
        self.featurizer.eval()
        parts: dict[str, list[torch.Tensor]] = {}  # summary source -> global vectors per batch
        denses, targets = [], {"label": [], "mask": [], "depth": [], "normals": [], "normals_valid": []}
        thumbs: list[torch.Tensor] = []
        keys: list[Any] = []
        teacher = False
        loader = make_loader(dataset, self.batch_size, shuffle=False)
        desc = f"features {data.get('source', '?')}"
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=None if self.progress else True):
                if not batch:
                    continue
                images = batch["image"].to(self.device, torch.float32, non_blocking=True)
                size = resolve_image_size(self.featurizer, self.image_size, images.shape[-1])
                if tuple(images.shape[-2:]) != (size, size):
                    images = resize(images, (size, size)).clamp(0, 1)
                output = self.featurizer(images)
                teacher = isinstance(output, TeacherOutput)
                globs, feats = output_vectors(output, self.dense)
                if not parts:  # a summary the featurizer lacks fails on the first batch, not the last
                    choose_summary(globs, summary, teacher)
                for name, glob in globs.items():
                    parts.setdefault(name, []).append(glob.float().cpu())
                # data with dense targets keeps its maps even when the asking task needs none:
                # the dense probes on the same data will ask next.
                if keep_dense or any(key in batch for key in ("mask", "depth", "normals")):
                    denses.append(feats.float().cpu())
                if any(key in batch for key in ("mask", "depth", "normals")):
                    thumbs.append(thumbnail(batch["image"]))
                for name in targets:
                    value = batch.get(name)
                    if value is not None and not isinstance(value, torch.Tensor):
                        try:  # a list with holes (some samples lack the key) cannot be a target
                            value = torch.as_tensor(value)
                        except (TypeError, ValueError, RuntimeError):
                            value = None
                    if value is not None:
                        targets[name].append(value)
                batch_keys = batch.get("key")
                keys.extend(batch_keys if isinstance(batch_keys, list) else [None] * len(images))
        finally:
            self.featurizer.train(was_training)
        self.passes += 1
        if not parts:
            raise DataError(
                f"eval data {describe_data(data)} yielded no readable image (see the skipped-sample warnings)"
            )
        vectors = {name: torch.cat(batches) for name, batches in parts.items()}
        n = len(vectors[AUTO])
        cat = {k: torch.cat(v) if v and sum(len(t) for t in v) == n else None for k, v in targets.items()}
        if denses and sum(len(d) for d in denses) != n:
            denses = []
        names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
        features = FeatureSet(
            vectors=vectors[AUTO],
            dense=torch.cat(denses) if denses else None,
            labels=cat["label"].long() if cat["label"] is not None else None,
            masks=cat["mask"].long() if cat["mask"] is not None else None,
            depth=cat["depth"].float() if cat["depth"] is not None else None,
            normals=cat["normals"].float() if cat["normals"] is not None else None,
            normals_valid=cat["normals_valid"].bool() if cat["normals_valid"] is not None else None,
            class_names=list(names) if names is not None else None,
            num_classes=getattr(dataset, "num_classes", None) or (len(names) if names is not None else None),
            keys=[str(k) for k in keys] if len(keys) == n and all(k is not None for k in keys) else None,
            thumbnails=torch.cat(thumbs) if thumbs and sum(len(t) for t in thumbs) == n else None,
        )
        return _Extracted(features, vectors, teacher)


THUMBNAIL_SIDE = 96


def thumbnail(images: torch.Tensor, side: int = THUMBNAIL_SIDE) -> torch.Tensor:
    """``[B,3,side,side]`` uint8 copies of images in [0,1] (the example pictures' left column)."""
    small = resize(images.float(), (side, side)) if tuple(images.shape[-2:]) != (side, side) else images.float()
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def describe_data(data: Mapping[str, Any] | None) -> str:
    """A data config in an error message: its folder (or dataset), else the whole mapping."""
    if not data:
        return "(default)"
    for key in ("root", "name_or_path", "shards"):
        if data.get(key):
            return f"'{data[key]}'"
    return str(dict(data))


def align_classes(
    train: FeatureSet, val: FeatureSet, train_data: Mapping[str, Any] | None, val_data: Mapping[str, Any] | None
) -> FeatureSet:
    """``val`` with its labels renumbered to the train split's class ids, matched by class name.

    Two data configs number their classes on their own (an image folder by its sorted
    sub-folders), so a val folder that lacks one class would shift every later id and
    score a perfect model near 0. Here the train split's class list is the one map:

    - val images of a class the train split lacks: :class:`DataError` naming the class
      and the val data (a classifier cannot be right about a class it never saw);
    - train classes the val split lacks: the train ids are kept, with a warning naming them.

    Without class names on both sides the labels are taken to share one id space already.
    """
    if train.labels is None or val.labels is None or not train.class_names or not val.class_names:
        return val
    index = {name: i for i, name in enumerate(train.class_names)}
    used = sorted(set(val.labels.tolist()))
    if used and (used[0] < 0 or used[-1] >= len(val.class_names)):
        raise DataError(
            f"val data {describe_data(val_data)}: label {used[-1] if used[0] >= 0 else used[0]} is outside its "
            f"{len(val.class_names)} class names"
        )
    val_names = [val.class_names[i] for i in used]
    unknown = [name for name in val_names if name not in index]
    if unknown:
        shown = ", ".join(f"'{n}'" for n in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise DataError(
            f"val data {describe_data(val_data)} has images of class {shown}, which the train data "
            f"{describe_data(train_data)} lacks (train classes: {', '.join(train.class_names[:20])}"
            f"{' ...' if len(train.class_names) > 20 else ''}); add the class to the train data or "
            "remove its images from the val data"
        )
    missing = [name for name in train.class_names if name not in set(val_names)]
    if missing:
        warnings.warn(
            f"val data {describe_data(val_data)} has no images of train classes "
            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}; the val labels keep the train "
            "class ids (matched by name)",
            stacklevel=2,
        )
    if list(val.class_names) == list(train.class_names):
        return val
    lookup = torch.tensor([index.get(name, -1) for name in val.class_names], dtype=torch.long)
    return replace(
        val,
        labels=lookup[val.labels.long()],
        class_names=list(train.class_names),
        num_classes=train.num_classes or len(train.class_names),
    )


def train_val_features(
    ctx: Any,
    data: Mapping[str, Any] | None,
    val_data: Mapping[str, Any] | None,
    val_fraction: float = 0.25,
    split_seed: int = 0,
    dense: bool = True,
    summary: str | None = None,
    labels: bool = False,
) -> tuple[FeatureSet, FeatureSet]:
    """Train and val features for a task.

    Two data configs give the two sets; one (``data`` without ``val_data``) is split
    with a seeded random split; neither falls back to the context's default pair
    (the default suite: synthetic seed 0 / seed 1). ``labels``: the task scores class
    labels, so two configs' labels are put on the train split's class ids
    (:func:`align_classes`).
    """
    if data is None:
        data, val_data = ctx.default_data, (ctx.default_val_data if val_data is None else val_data)
    train = ctx.features.get(data, dense=dense, summary=summary)
    if val_data is not None:
        val = ctx.features.get(val_data, dense=dense, summary=summary)
        return train, (align_classes(train, val, data, val_data) if labels else val)
    tr, va = seeded_split(len(train), val_fraction, split_seed)
    return train.subset(tr), train.subset(va)

"""Frozen features for the probes: one (global vector, dense map) pair per image.

``split_output`` turns what any featurizer returns into ``(global [B,D], dense [B,D,h,w])``:

- a ``TeacherOutput``: dense = ``features``; global = ``summary``, or the mean-pooled
  features when the teacher has no summary (SAM).
- a ``StudentOutput``: dense = ``backbone`` (or a teacher's adaptor ``features[name]``
  with ``dense=name``); global = the mean-pooled backbone (``summary="backbone"``) or a
  teacher's adaptor summary (``summary=name``, e.g. the CLIP one for zero-shot).

``FeatureStore`` runs the featurizer once per data config (batched, no grad, tqdm
progress) and keeps the result in memory, every global vector included, so kNN,
segmentation, depth and zero-shot (which reads the CLIP adaptor's summary) on the same
data share one pass. Probes then train on the cached tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from radiosharp.contracts import StudentOutput, TeacherOutput
from radiosharp.data.loader import make_loader
from radiosharp.eval.probes import channel_stats
from radiosharp.images import resize

AUTO = "auto"
BACKBONE = "backbone"


def output_vectors(output: Any, dense: str = AUTO) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({summary source: global [B,D]}, dense [B,D,h,w])`` from a TeacherOutput or StudentOutput.

    Every global vector the output offers, so one pass serves every task: "auto" (the
    teacher's summary or mean-pooled features; the student's mean-pooled backbone) and,
    for a student, each adaptor summary by teacher name. ``dense`` as in ``split_output``.
    """
    if isinstance(output, TeacherOutput):
        if dense not in (AUTO, BACKBONE):
            raise ValueError(
                f"dense='{dense}' selects a student adaptor head, but this featurizer is a teacher; use 'auto'"
            )
        feats = output.features
        return {AUTO: output.summary if output.summary is not None else feats.mean((2, 3))}, feats
    if isinstance(output, StudentOutput):
        if dense in (AUTO, BACKBONE):
            if output.backbone is None:
                raise ValueError(
                    "student output has no backbone features; choose dense=<teacher name> "
                    f"among {sorted(output.features)}"
                )
            feats = output.backbone
        elif dense in output.features:
            feats = output.features[dense]
        else:
            raise ValueError(
                f"dense='{dense}': the student has no feature head of that name; valid: "
                f"{', '.join([BACKBONE, *sorted(output.features)])}"
            )
        base = output.backbone if output.backbone is not None else feats
        return {**output.summary, AUTO: base.mean((2, 3))}, feats
    raise TypeError(f"a featurizer must return TeacherOutput or StudentOutput, got {type(output).__name__}")


def choose_summary(vectors: Mapping[str, torch.Tensor], summary: str, teacher: bool) -> torch.Tensor:
    """The global vectors of source ``summary`` among ``output_vectors``' (``teacher``: they came
    from a teacher, which only has "auto")."""
    if summary in (AUTO, BACKBONE):
        return vectors[AUTO]
    if teacher:
        raise ValueError(
            f"summary='{summary}' selects a student adaptor head, but this featurizer is a teacher; use 'auto'"
        )
    if summary in vectors:
        return vectors[summary]
    raise ValueError(
        f"summary='{summary}': the student has no summary head of that name; valid: "
        f"{', '.join([BACKBONE, *sorted(k for k in vectors if k != AUTO)])}"
    )


def split_output(output: Any, summary: str = AUTO, dense: str = AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global [B,D], dense [B,D,h,w])`` from a TeacherOutput or StudentOutput.

    ``summary`` / ``dense`` choose the source for a student: "auto"/"backbone" or a
    teacher name among its adaptor heads. Teachers only accept "auto".
    """
    vectors, feats = output_vectors(output, dense)
    return choose_summary(vectors, summary, isinstance(output, TeacherOutput)), feats


@dataclass
class FeatureSet:
    """Cached features of one dataset plus its targets (any of them may be absent)."""

    vectors: torch.Tensor  # [N,D] global vectors
    dense: torch.Tensor | None = None  # [N,D,h,w]
    labels: torch.Tensor | None = None  # [N] long
    masks: torch.Tensor | None = None  # [N,S,S] long, 255 = ignore
    depth: torch.Tensor | None = None  # [N,S,S] float
    class_names: list[str] | None = None
    num_classes: int | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @cached_property
    def dense_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) of ``dense``, computed once: every probe seed and dense task
        on this set standardises with them."""
        return channel_stats(self.dense)

    def subset(self, index: torch.Tensor) -> FeatureSet:
        def take(t):
            return t[index] if isinstance(t, torch.Tensor) else t

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
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
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
        key = self._key(data)
        if key not in self._datasets:
            from radiosharp.builders import build_dataset

            self._datasets[key] = build_dataset(dict(data), where="eval data")
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
        denses, targets = [], {"label": [], "mask": [], "depth": []}
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
                if keep_dense or "mask" in batch or "depth" in batch:
                    denses.append(feats.float().cpu())
                for name in targets:
                    value = batch.get(name)
                    if value is not None and not isinstance(value, torch.Tensor):
                        try:  # a list with holes (some samples lack the key) cannot be a target
                            value = torch.as_tensor(value)
                        except (TypeError, ValueError, RuntimeError):
                            value = None
                    if value is not None:
                        targets[name].append(value)
        finally:
            self.featurizer.train(was_training)
        self.passes += 1
        if not parts:
            raise ValueError(f"eval data {dict(data)} yielded no images")
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
            class_names=list(names) if names is not None else None,
            num_classes=getattr(dataset, "num_classes", None) or (len(names) if names is not None else None),
        )
        return _Extracted(features, vectors, teacher)


def train_val_features(
    ctx: Any,
    data: Mapping[str, Any] | None,
    val_data: Mapping[str, Any] | None,
    val_fraction: float = 0.25,
    split_seed: int = 0,
    dense: bool = True,
    summary: str | None = None,
) -> tuple[FeatureSet, FeatureSet]:
    """Train and val features for a task.

    Two data configs give the two sets; one (``data`` without ``val_data``) is split
    with a seeded random split; neither falls back to the context's default pair
    (the default suite: synthetic seed 0 / seed 1).
    """
    if data is None:
        data, val_data = ctx.default_data, (ctx.default_val_data if val_data is None else val_data)
    train = ctx.features.get(data, dense=dense, summary=summary)
    if val_data is not None:
        return train, ctx.features.get(val_data, dense=dense, summary=summary)
    tr, va = seeded_split(len(train), val_fraction, split_seed)
    return train.subset(tr), train.subset(va)

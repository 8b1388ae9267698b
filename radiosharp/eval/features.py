"""Frozen features for the probes: one (global vector, dense map) pair per image.

``split_output`` turns what any featurizer returns into ``(global [B,D], dense [B,D,h,w])``:

- a ``TeacherOutput``: dense = ``features``; global = ``summary``, or the mean-pooled
  features when the teacher has no summary (SAM).
- a ``StudentOutput``: dense = ``backbone`` (or a teacher's adaptor ``features[name]``
  with ``dense=name``); global = the mean-pooled backbone (``summary="backbone"``) or a
  teacher's adaptor summary (``summary=name``, e.g. the CLIP one for zero-shot).

``FeatureStore`` runs the featurizer once per data config (batched, no grad, tqdm
progress) and keeps the result in memory, so kNN, segmentation and depth probes on the
same data share one pass. Probes then train on the cached tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from radiosharp.contracts import StudentOutput, TeacherOutput

AUTO = "auto"
BACKBONE = "backbone"


def split_output(output: Any, summary: str = AUTO, dense: str = AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global [B,D], dense [B,D,h,w])`` from a TeacherOutput or StudentOutput.

    ``summary`` / ``dense`` choose the source for a student: "auto"/"backbone" or a
    teacher name among its adaptor heads. Teachers only accept "auto".
    """
    if isinstance(output, TeacherOutput):
        for opt, value in (("summary", summary), ("dense", dense)):
            if value not in (AUTO, BACKBONE):
                raise ValueError(f"{opt}='{value}' selects a student adaptor head, but this featurizer "
                                 "is a teacher; use 'auto'")
        feats = output.features
        glob = output.summary if output.summary is not None else feats.mean((2, 3))
        return glob, feats
    if isinstance(output, StudentOutput):
        if dense in (AUTO, BACKBONE):
            if output.backbone is None:
                raise ValueError("student output has no backbone features; choose dense=<teacher name> "
                                 f"among {sorted(output.features)}")
            feats = output.backbone
        elif dense in output.features:
            feats = output.features[dense]
        else:
            raise ValueError(f"dense='{dense}': the student has no feature head of that name; valid: "
                             f"{', '.join([BACKBONE, *sorted(output.features)])}")
        if summary in (AUTO, BACKBONE):
            base = output.backbone if output.backbone is not None else feats
            glob = base.mean((2, 3))
        elif summary in output.summary:
            glob = output.summary[summary]
        else:
            raise ValueError(f"summary='{summary}': the student has no summary head of that name; valid: "
                             f"{', '.join([BACKBONE, *sorted(output.summary)])}")
        return glob, feats
    raise TypeError(f"a featurizer must return TeacherOutput or StudentOutput, got {type(output).__name__}")


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

    def subset(self, index: torch.Tensor) -> "FeatureSet":
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


def _collate(samples: list[dict | None]) -> dict[str, Any]:
    samples = [s for s in samples if s is not None]
    out: dict[str, Any] = {}
    for key in samples[0] if samples else ():
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def make_eval_loader(dataset: Any, batch_size: int) -> Iterable[dict[str, Any]]:
    """The project's loader (``radiosharp.data.loader.make_loader``), else a plain DataLoader."""
    try:
        from radiosharp.data.loader import make_loader
    except ImportError:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    return make_loader(dataset, batch_size, shuffle=False)


def resolve_image_size(featurizer: nn.Module, image_size: int | None, data_size: int) -> int:
    """The input side: ``image_size``, else the featurizer's ``native_size``, else the data size,
    rounded to the nearest multiple of the featurizer's ``patch_size`` (>= one patch)."""
    size = image_size or getattr(featurizer, "native_size", None) or data_size
    patch = getattr(featurizer, "patch_size", None)
    if image_size is None and patch:
        size = max(patch, round(size / patch) * patch)
    return int(size)


class FeatureStore:
    """Extracts and caches features of ``featurizer`` for data configs (see module doc).

    ``summary`` / ``dense`` are the default sources for students (see ``split_output``);
    a task may ask for another summary (zero-shot asks for the CLIP adaptor's).
    """

    def __init__(self, featurizer: nn.Module, image_size: int | None = None, batch_size: int = 16,
                 device: str | torch.device = "cpu", summary: str = AUTO, dense: str = AUTO,
                 progress: bool = True) -> None:
        self.featurizer = featurizer
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.summary = summary
        self.dense = dense
        self.progress = progress
        self._cache: dict[str, FeatureSet] = {}
        self._datasets: dict[str, Any] = {}
        self.passes = 0  # how many extraction passes ran (for tests / logs)

    def dataset(self, data: Mapping[str, Any]) -> Any:
        key = json.dumps(dict(data), sort_keys=True, default=str)
        if key not in self._datasets:
            import radiosharp

            self._datasets[key] = radiosharp.build_dataset(dict(data), where="eval data")
        return self._datasets[key]

    def get(self, data: Mapping[str, Any], dense: bool = True, summary: str | None = None) -> FeatureSet:
        """Features of the dataset built from ``data`` (cached per config and summary source)."""
        summary = summary or self.summary
        key = json.dumps({"data": dict(data), "summary": summary}, sort_keys=True, default=str)
        cached = self._cache.get(key)
        if cached is not None and (cached.dense is not None or not dense):
            return cached
        self._cache[key] = self._extract(data, dense, summary)
        return self._cache[key]

    @torch.no_grad()
    def _extract(self, data: Mapping[str, Any], keep_dense: bool, summary: str) -> FeatureSet:
        dataset = self.dataset(data)
        was_training = self.featurizer.training
        self.featurizer.eval()
        vectors, denses, targets = [], [], {"label": [], "mask": [], "depth": []}
        loader = make_eval_loader(dataset, self.batch_size)
        desc = f"features {data.get('source', '?')}"
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=None if self.progress else True):
                if not batch:
                    continue
                images = batch["image"].to(self.device, torch.float32)
                size = resolve_image_size(self.featurizer, self.image_size, images.shape[-1])
                if tuple(images.shape[-2:]) != (size, size):
                    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=size < images.shape[-1]).clamp(0, 1)
                glob, feats = split_output(self.featurizer(images), summary=summary, dense=self.dense)
                vectors.append(glob.float().cpu())
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
        if not vectors:
            raise ValueError(f"eval data {dict(data)} yielded no images")
        n = sum(len(v) for v in vectors)
        cat = {k: torch.cat(v) if v and sum(len(t) for t in v) == n else None for k, v in targets.items()}
        if denses and sum(len(d) for d in denses) != n:
            denses = []
        names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
        return FeatureSet(
            vectors=torch.cat(vectors),
            dense=torch.cat(denses) if denses else None,
            labels=cat["label"].long() if cat["label"] is not None else None,
            masks=cat["mask"].long() if cat["mask"] is not None else None,
            depth=cat["depth"].float() if cat["depth"] is not None else None,
            class_names=list(names) if names is not None else None,
            num_classes=getattr(dataset, "num_classes", None) or (len(names) if names is not None else None),
        )


def train_val_features(ctx: Any, data: Mapping[str, Any] | None, val_data: Mapping[str, Any] | None,
                       val_fraction: float = 0.25, split_seed: int = 0, dense: bool = True,
                       summary: str | None = None) -> tuple[FeatureSet, FeatureSet]:
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

"""``knn``: weighted k-NN classification of frozen global vectors (DINO's kNN eval)."""

from __future__ import annotations

from typing import Any

from radiosharp.eval.features import train_val_features
from radiosharp.eval.metrics import top1_accuracy
from radiosharp.eval.probes import knn_predict
from radiosharp.eval.task import EvalContext, EvalTask
from radiosharp.registry import TASKS


class KnnTask(EvalTask):
    """Top-1 accuracy of cosine-similarity k-NN (k=20, votes weighted by exp(sim / 0.07)).

    Deterministic given the features, so one value (std 0). Needs ``label`` in the data.
    Train and val labels share the train split's class ids, matched by class name (a val
    folder without one class keeps the train ids; val images of a class the train data
    lacks are refused), see ``radiosharp.eval.features.align_classes``.
    """

    name = "knn"
    metrics = {"top1": True}

    def __init__(
        self,
        data: dict[str, Any] | None,
        val_data: dict[str, Any] | None,
        k: int,
        temperature: float,
        val_fraction: float,
        split_seed: int,
    ) -> None:
        if k < 1 or temperature <= 0:
            raise ValueError(f"knn: k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.data, self.val_data, self.k, self.temperature = data, val_data, k, temperature
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(
            ctx, self.data, self.val_data, self.val_fraction, self.split_seed, dense=False, labels=True
        )
        train_labels = train.require("labels", self.name, self.data or ctx.default_data)
        val_labels = val.require("labels", self.name, self.val_data or self.data or ctx.default_data)
        # val labels are on the train split's class ids (train_val_features aligns them by class name)
        num_classes = max(len(train.class_names or ()), int(train_labels.max()) + 1, int(val_labels.max()) + 1)
        pred = knn_predict(train.vectors, train_labels, val.vectors, self.k, self.temperature, num_classes)
        return {"top1": [top1_accuracy(pred, val_labels)]}


@TASKS.register("knn")
def build_knn(
    data: dict[str, Any] | None = None,
    val_data: dict[str, Any] | None = None,
    k: int = 20,
    temperature: float = 0.07,
    val_fraction: float = 0.25,
    split_seed: int = 0,
) -> KnnTask:
    """k-NN on ``data`` (train) vs ``val_data``; without ``val_data`` a seeded split of ``data``."""
    return KnnTask(data, val_data, k, temperature, val_fraction, split_seed)

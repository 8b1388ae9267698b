"""``semseg``: linear segmentation probe on the dense map; mIoU and mIoU of small objects."""

from __future__ import annotations

from typing import Any

import torch

from radiosharp.data.errors import DataError
from radiosharp.data.paired_folders import mask_id_fix, out_of_range_id
from radiosharp.eval.examples import EXAMPLES, write_examples
from radiosharp.eval.features import FeatureSet, describe_data, train_val_features
from radiosharp.eval.metrics import confusion_matrix, mean_iou, small_segment_pixels
from radiosharp.eval.probes import fit_segmentation_probe, predict_segmentation
from radiosharp.eval.task import EvalContext, over_seeds
from radiosharp.eval.tasks._dense import DenseProbeTask, ProbeOptions
from radiosharp.registry import TASKS


class SemsegTask(DenseProbeTask):
    """A 1x1-conv probe on frozen dense features, logits bilinearly upsampled to the mask,
    cross-entropy (255 ignored). ``miou`` over all classes; ``miou_small`` is the per-class
    IoU over the pixels of small ground-truth segments only (connected components of one
    class with area < ``small_area`` of the image; see ``metrics.small_segment_pixels``).
    Every train and val mask id must be below ``num_classes`` or the ignore index, else a
    DataError names the image, the id and the option that fixes it.
    """

    name = "semseg"
    metrics = {"miou": True, "miou_small": True}

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        train, val = train_val_features(ctx, self.data, self.val_data, self.val_fraction, self.split_seed)
        where = self.data or ctx.default_data
        train_masks, val_masks = train.require("masks", self.name, where), val.require("masks", self.name, where)
        if self.num_classes:
            num_classes, source = self.num_classes, "eval.tasks.semseg.num_classes"
        elif train.num_classes:
            num_classes, source = train.num_classes, "the train data's num_classes"
        else:
            num_classes = _max_class(train_masks, val_masks, ignore_index=self.ignore_index) + 1
            source = "the largest class id seen + 1"
        for split, feats, masks, cfg in (
            ("train", train, train_masks, where),
            ("val", val, val_masks, self.val_data or (ctx.default_val_data if self.data is None else None) or where),
        ):
            self._check_ids(split, feats, masks, cfg, num_classes, source)
        small = small_segment_pixels(val_masks, self.small_area, self.ignore_index)
        size = tuple(val_masks.shape[-2:])
        shown: dict[str, torch.Tensor] = {}

        def one_seed(seed: int) -> dict[str, float]:
            fit = self.fit_options(ctx, train, seed)
            probe = fit_segmentation_probe(train.dense, train_masks, num_classes, self.ignore_index, **fit)
            pred = predict_segmentation(probe, val.dense, size, device=ctx.device)
            if seed == 0:
                shown["pred"] = pred[:EXAMPLES]
            miou, _ = mean_iou(confusion_matrix(pred, val_masks, num_classes, self.ignore_index))
            small_conf = confusion_matrix(pred, val_masks, num_classes, self.ignore_index, where=small)
            miou_small, _ = mean_iou(small_conf)
            return {"miou": miou, "miou_small": miou_small}

        values = over_seeds(self.seeds, one_seed)
        write_examples(ctx, self.name, val.thumbnails, val_masks[:EXAMPLES], shown["pred"], "mask")
        return values

    def _check_ids(
        self, split: str, feats: FeatureSet, masks: torch.Tensor, data: Any, num_classes: int, source: str
    ) -> None:
        """DataError naming the first image whose mask holds an id outside 0..num_classes-1 and not the ignore index
        (cross-entropy would stop with "Target out of bounds" on train masks; val pixels would silently drop out)."""
        bad_pixels = ((masks < 0) | (masks >= num_classes)) & (masks != self.ignore_index)
        if not bool(bad_pixels.any()):
            return
        i = int(bad_pixels.flatten(1).any(1).nonzero()[0, 0])
        bad = out_of_range_id(masks[i], num_classes, self.ignore_index)
        name = feats.keys[i] if feats.keys else f"image {i}"
        fix = mask_id_fix(
            bad,
            num_classes,
            num_classes_option="eval.tasks.semseg.num_classes (or the data's num_classes)",
            reduce_option="the data's reduce_zero_label",
        )
        raise DataError(
            f"semseg: the {split} mask of '{name}' in {describe_data(data)} holds class id {bad}, but num_classes is "
            f"{num_classes} ({source}; ignore index {self.ignore_index}); {fix}"
        )


def _max_class(*masks: torch.Tensor, ignore_index: int = 255) -> int:
    return max(int(m[m != ignore_index].max()) for m in masks)


@TASKS.register("semseg")
def build_semseg(
    probe: ProbeOptions, num_classes: int | None = None, small_area: float = 0.01, ignore_index: int = 255
) -> SemsegTask:
    """Linear segmentation probe; ``num_classes`` defaults to the data's, else max mask class + 1.
    The probe options (``steps``, ``lr``, ... ) are the dense probes' shared ones (``_dense``)."""
    return SemsegTask(probe, num_classes=num_classes, small_area=small_area, ignore_index=ignore_index)

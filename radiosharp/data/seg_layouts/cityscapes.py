"""Cityscapes ``leftImg8bit`` + ``gtFine`` as distributed: label ids (or train ids) -> the 19 train ids."""

from __future__ import annotations

import os
from pathlib import Path

from radiosharp.data.errors import DataError
from radiosharp.data.paired_folders import IGNORE_INDEX
from radiosharp.data.seg_layouts.ids import IdTable, RemappedSegFolder, identity_table, lookup_table
from radiosharp.registry import DATASETS

# The 19 evaluated classes in train-id order, with their Cityscapes label id (the
# convention of cityscapesScripts' labels.py: every other label id is ignored).
CITYSCAPES_EVAL_CLASSES: tuple[tuple[str, int], ...] = (
    ("road", 7),
    ("sidewalk", 8),
    ("building", 11),
    ("wall", 12),
    ("fence", 13),
    ("pole", 17),
    ("traffic light", 19),
    ("traffic sign", 20),
    ("vegetation", 21),
    ("terrain", 22),
    ("sky", 23),
    ("person", 24),
    ("rider", 25),
    ("car", 26),
    ("truck", 27),
    ("bus", 28),
    ("train", 31),
    ("motorcycle", 32),
    ("bicycle", 33),
)
CITYSCAPES_CLASSES = [name for name, _ in CITYSCAPES_EVAL_CLASSES]
CITYSCAPES_NUM_LABEL_IDS = 34  # label ids 0..33; the license plate (-1) is stored as 255
CITYSCAPES_LABELS = {"label_ids": "_gtFine_labelIds.png", "train_ids": "_gtFine_labelTrainIds.png"}
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"

CITYSCAPES_LABEL_ID_TABLE = IdTable(
    lookup_table(
        {
            **dict.fromkeys(range(CITYSCAPES_NUM_LABEL_IDS), IGNORE_INDEX),
            IGNORE_INDEX: IGNORE_INDEX,
            **{label_id: train_id for train_id, (_, label_id) in enumerate(CITYSCAPES_EVAL_CLASSES)},
        }
    ),
    expected="*_gtFine_labelIds.png masks hold the Cityscapes label ids 0..33 (255 = license plate / ignore)",
    fix="is it an _instanceIds or _color file? use the gtFine_trainvaltest labelIds PNGs",
)
CITYSCAPES_TRAIN_ID_TABLE = IdTable(
    lookup_table(identity_table(len(CITYSCAPES_EVAL_CLASSES))),
    expected="*_gtFine_labelTrainIds.png masks hold the train ids 0..18 (255 = ignore)",
    fix="regenerate them with cityscapesScripts' createTrainIdLabelImgs, or set labels: label_ids to read "
    "the *_gtFine_labelIds.png files",
)


class Cityscapes(RemappedSegFolder):
    """Cityscapes ``leftImg8bit/<split>`` + ``gtFine/<split>`` (the ``cityscapes`` data source); ``mask`` as the
    19 train ids, 255 = ignore; see the module doc.

    ``labels: label_ids`` (default) maps the ``*_gtFine_labelIds.png`` files; ``train_ids``
    reads ``*_gtFine_labelTrainIds.png`` as they are.
    """

    kind = "cityscapes"

    def __init__(
        self, root: str | os.PathLike | None = None, size: int = 224, split: str = "val", labels: str = "label_ids"
    ) -> None:
        if labels not in CITYSCAPES_LABELS:
            raise DataError(f"cityscapes: labels '{labels}' is not valid; valid: {', '.join(CITYSCAPES_LABELS)}")
        self.labels, self.target_suffix = labels, CITYSCAPES_LABELS[labels]
        ids = CITYSCAPES_LABEL_ID_TABLE if labels == "label_ids" else CITYSCAPES_TRAIN_ID_TABLE
        try:
            super().__init__(root, size, f"leftImg8bit/{split}", f"gtFine/{split}", None, ids, CITYSCAPES_CLASSES)
        except DataError:
            if getattr(self, "pairs", None) != []:  # not "no image has a target": a missing folder, ...
                raise
            raise DataError(self._no_pairs_message()) from None

    def _find_target(self, stem: str) -> Path | None:
        if not stem.endswith(CITYSCAPES_IMAGE_SUFFIX):
            return None
        candidate = self.target_root / f"{stem[: -len(CITYSCAPES_IMAGE_SUFFIX)]}{self.target_suffix}"
        return candidate if candidate.is_file() else None

    def _no_pairs_message(self) -> str:
        message = (
            f"cityscapes {self.root}: no image <city>/<stem>{CITYSCAPES_IMAGE_SUFFIX}.png in '{self.image_root}' "
            f"has its <city>/<stem>{self.target_suffix} in '{self.target_root}'"
        )
        for labels, suffix in CITYSCAPES_LABELS.items():
            if labels != self.labels and next(self.target_root.rglob(f"*{suffix}"), None) is not None:
                return f"{message}; the folder holds *{suffix} files: set labels: {labels}"
        return message


# the class is the builder (one signature)
build_cityscapes = DATASETS.register("cityscapes")(Cityscapes)

"""Pascal-Context in mmsegmentation's converted layout: 59 classes (background ignored) or 60."""

from __future__ import annotations

import os
from pathlib import Path

from radiosharp.data.errors import DataNotFoundError
from radiosharp.data.folders import existing_folder
from radiosharp.data.paired_folders import IGNORE_INDEX
from radiosharp.data.seg_layouts.ids import IdTable, RemappedSegFolder, identity_table, lookup_table
from radiosharp.registry import DATASETS

# The 59 classes of Pascal-Context in the order of the converted masks' ids 1..59
# (alphabetical, as in mmsegmentation's PascalContextDataset59 metainfo).
PASCAL_CONTEXT_CLASSES = [
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
]
PASCAL_CONTEXT_BACKGROUND = "background"


def pascal_context_table(reduce_zero_label: bool) -> IdTable:
    n = len(PASCAL_CONTEXT_CLASSES)
    if reduce_zero_label:
        mapping = {0: IGNORE_INDEX, **{k: k - 1 for k in range(1, n + 1)}, IGNORE_INDEX: IGNORE_INDEX}
    else:
        mapping = identity_table(n + 1)
    return IdTable(
        lookup_table(mapping),
        expected=f"SegmentationClassContext masks hold 0 = background and the {n} classes as 1..{n} (255 = ignore)",
        fix="convert the Pascal-Context annotations with mmsegmentation's pascal_context converter "
        "(the 459-class .mat / .tif labels are another format)",
    )


class PascalContext(RemappedSegFolder):
    """Pascal-Context in mmsegmentation's converted layout (the ``pascal_context`` data source): ``JPEGImages`` +
    ``SegmentationClassContext`` of ``ImageSets/SegmentationContext/<split>.txt``, 59 or 60 classes; see the module doc.

    ``reduce_zero_label: true`` (default): 59 classes, background ignored; ``false``: 60
    classes with background = 0. ``list_file`` (relative to ``root``) replaces the split's list.
    """

    kind = "pascal_context"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        size: int = 224,
        split: str = "val",
        reduce_zero_label: bool = True,
        list_file: str | None = None,
    ) -> None:
        names = PASCAL_CONTEXT_CLASSES if reduce_zero_label else [PASCAL_CONTEXT_BACKGROUND, *PASCAL_CONTEXT_CLASSES]
        base = existing_folder(root, "pascal_context root")
        listed = list_file or f"ImageSets/SegmentationContext/{split}.txt"
        if not (base / Path(listed).expanduser()).is_file():
            raise DataNotFoundError(
                f"pascal_context: list of split '{split}' not found: {base / Path(listed).expanduser()}; "
                "set split (train / val) or list_file (relative to root)"
            )
        super().__init__(
            base, size, "JPEGImages", "SegmentationClassContext", listed, pascal_context_table(reduce_zero_label), names
        )
        self.reduce_zero_label = reduce_zero_label  # what the id table does (map_mask), for whoever reads it


# the class is the builder (one signature)
build_pascal_context = DATASETS.register("pascal_context")(PascalContext)

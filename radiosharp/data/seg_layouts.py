"""Sources for segmentation and depth datasets in the layouts they are distributed in.

``seg_folder`` / ``depth_folder`` want ``images/`` + ``masks/`` (or ``depth/``) folders
whose files share a stem and whose masks hold the class index. The usual benchmarks
come otherwise: other file names, another id space in the masks, image and depth in
one folder. Each source here reads one of them as distributed and gives the samples of
``seg_folder`` (``{"image": [3,S,S] float in [0,1], "mask": [S,S] long, 255 = ignore,
"key": str}`` with ``num_classes`` and ``class_names``) or of ``depth_folder``
(``"depth"`` [S,S] float in metres). They are built on those sources' classes, so EXIF
handling, the centre crop, nearest-neighbour mask resizing and the skipping of
unreadable files are the same.

``cityscapes`` (``root`` = the folder holding ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png          labels: label_ids (default)
    gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png     labels: train_ids

``labelIds`` masks hold the 34 Cityscapes label ids 0..33 (the license plate, id -1,
is stored as 255); they are mapped to the 19 train ids of the benchmark (road = 7 -> 0,
..., bicycle = 33 -> 18, see :data:`CITYSCAPES_EVAL_CLASSES`) and every other id to
255. ``labelTrainIds`` masks (made by cityscapesScripts' ``createTrainIdLabelImgs``)
already hold 0..18 / 255 and are read as they are.

``coco_stuff27`` (``root`` = the folder holding ``images/`` and ``annotations/``)::

    images/<split>2017/<id>.jpg  +  annotations/<split>2017/<id>.png

The masks are COCO-Stuff-164k's ``stuffthingmaps_trainval2017`` PNGs: 0-based fine ids
0..181 (COCO category id - 1; 0..90 things, 91..181 stuff) and 255 = unlabeled. They are
mapped to the 27 coarse classes of the unsupervised-segmentation benchmark (IIC, PiCIE,
STEGO, FeatUp, JAFAR): the 12 thing and 15 stuff supercategories of the COCO-Stuff
hierarchy, things first (:data:`COCO_STUFF27_CLASSES`). ``list_file`` picks a subset
by image id, e.g. STEGO's curated ``curated/val2017/Coco164kFull_Stuff_Coarse_7.txt``.

``pascal_context`` (``root`` = ``VOCdevkit/VOC2010`` after mmsegmentation's converter)::

    JPEGImages/<id>.jpg  +  SegmentationClassContext/<id>.png
    ImageSets/SegmentationContext/<split>.txt

The masks hold 0 = background and the 59 classes as 1..59. ``reduce_zero_label: true``
(the default, the usual "Pascal-Context 59" protocol) maps 0 -> 255 and k -> k-1: 59
classes. ``false`` keeps background as class 0: 60 classes ("Pascal-Context 60").

``nyu_bts``: NYU Depth v2 as BTS (and the methods that reuse its loaders) distribute
it, image and depth in one folder and told apart by a prefix::

    <scene>/rgb_<n>.jpg  +  <scene>/sync_depth_<n>.png     (16-bit PNG, millimetres)

``root`` is ``sync/`` (train) or ``official_splits/test/``. Without ``list_file`` every
``rgb_<n>`` that has its ``sync_depth_<n>`` is a sample; with one (BTS's
``nyu_test_files_with_gt.txt`` / ``nyu_train_files_with_gt.txt``: ``rgb_path depth_path
focal`` per line, relative to ``root``, a leading ``/`` allowed) the listed pairs are, in
list order. Depth in metres = stored value * ``depth_scale`` (default 1/1000 for 16-bit
files), as in ``depth_folder``; BTS's evaluation crop (Eigen crop) is the eval's business,
not the source's. ``depth_folder`` pointed at such a folder is refused with a one-line
``DataError`` that names this source.

A mask holding an id outside what its format allows (a Cityscapes ``_instanceIds``
file, a COCO-Stuff stuff-only map, a 459-class Pascal-Context mask) raises
:class:`~radiosharp.data.errors.DataError` naming the file, the id and the expected ids
when it is read, instead of being mapped to a wrong class.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from radiosharp.data.decode import IMAGE_EXTENSIONS
from radiosharp.data.errors import DataError, DataNotFoundError
from radiosharp.data.folders import existing_folder, list_images
from radiosharp.data.paired_folders import (
    BTS_DEPTH_PREFIX,
    BTS_IMAGE_PREFIX,
    DEPTH_EXTENSIONS,
    IGNORE_INDEX,
    DepthFolder,
    SegFolder,
)
from radiosharp.data.transforms import DEPTH_RESIZE_MODES, check_size
from radiosharp.registry import DATASETS

# ----------------------------------------------------------------------------- id tables

INVALID = -1  # in a lookup table: a stored id that the format does not have


def lookup_table(mapping: dict[int, int], size: int = 256) -> torch.Tensor:
    """long ``[size]``: stored id -> class id for the ids of ``mapping``, ``INVALID`` for the rest."""
    table = torch.full((size,), INVALID, dtype=torch.long)
    for stored, target in mapping.items():
        table[stored] = target
    return table


@dataclass(frozen=True)
class IdTable:
    """How the stored ids of one mask format become class ids (``255`` = ignore).

    ``table[stored]`` is the class id; a stored id outside the table or mapped to
    ``INVALID`` is a file of another format: ``apply`` raises a ``DataError`` naming the
    file, the ids, ``expected`` (what the format holds) and ``fix``.
    """

    table: torch.Tensor
    expected: str
    fix: str

    def apply(self, mask: torch.Tensor, path: Path, kind: str) -> torch.Tensor:
        size = self.table.numel()
        inside = (mask >= 0) & (mask < size)
        mapped = self.table[mask.clamp(0, size - 1)]
        bad = ~inside | (mapped == INVALID)
        if bool(bad.any()):
            ids = mask[bad].unique().tolist()
            shown = ", ".join(str(i) for i in ids[:5]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
            raise DataError(f"{kind}: mask {path} holds id {shown}, but {self.expected}; {self.fix}")
        return mapped


def identity_table(num_classes: int) -> dict[int, int]:
    """``0..num_classes-1`` and 255 (ignore) as they are."""
    return {**{i: i for i in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX}


class RemappedSegFolder(SegFolder):
    """A ``SegFolder`` whose mask files hold another id space, mapped by an :class:`IdTable`."""

    kind = "remapped_seg_folder"

    def __init__(
        self,
        root: str | os.PathLike | None,
        size: int,
        images: str,
        masks: str,
        list_file: str | None,
        ids: IdTable,
        class_names: list[str],
    ) -> None:
        self.ids = ids
        super().__init__(root, size, images, masks, list_file, num_classes=len(class_names), class_names=class_names)

    def map_mask(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        return self.ids.apply(mask, path, self.kind)


# ----------------------------------------------------------------------------- cityscapes

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
    """Cityscapes ``leftImg8bit`` images with their ``gtFine`` masks as 19 train ids; see module doc."""

    kind = "cityscapes"

    def __init__(
        self, root: str | os.PathLike | None, size: int = 224, split: str = "val", labels: str = "label_ids"
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


# ----------------------------------------------------------------------------- coco-stuff 27

# The 27 coarse classes: COCO-Stuff's 12 thing and 15 stuff supercategories, things
# first, in the order of the benchmark's coarse ids (IIC's cocostuff_fine_to_coarse.py,
# github.com/xu-ji/IIC, reused by PiCIE, STEGO, FeatUp and JAFAR).
COCO_STUFF27_CLASSES = [
    "electronic-things",
    "appliance-things",
    "food-things",
    "furniture-things",
    "indoor-things",
    "kitchen-things",
    "accessory-things",
    "animal-things",
    "outdoor-things",
    "person-things",
    "sports-things",
    "vehicle-things",
    "ceiling-stuff",
    "floor-stuff",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial-stuff",
    "textile-stuff",
    "wall-stuff",
    "window-stuff",
    "building-stuff",
    "ground-stuff",
    "plant-stuff",
    "sky-stuff",
    "solid-stuff",
    "structural-stuff",
    "water-stuff",
]

# Thing fine ids (COCO category id - 1) by supercategory. The ranges include the 11
# category ids COCO never annotated (street sign 11, hat 25, shoe 28, eye glasses 29,
# plate 44, mirror 65, window 67, desk 68, door 70, blender 82, hair brush 90); the maps
# do not hold them, and they get the supercategory of their neighbours, as in the
# benchmark's 182-entry table.
COCO_STUFF_THINGS: dict[str, range] = {
    "person-things": range(0, 1),
    "vehicle-things": range(1, 9),  # bicycle .. boat
    "outdoor-things": range(9, 15),  # traffic light .. bench
    "animal-things": range(15, 25),  # bird .. giraffe
    "accessory-things": range(25, 33),  # hat .. suitcase
    "sports-things": range(33, 43),  # frisbee .. tennis racket
    "kitchen-things": range(43, 51),  # bottle .. bowl
    "food-things": range(51, 61),  # banana .. cake
    "furniture-things": range(61, 71),  # chair .. door
    "electronic-things": range(71, 77),  # tv .. cell phone
    "appliance-things": range(77, 83),  # microwave .. blender
    "indoor-things": range(83, 91),  # book .. hair brush
}

# The 91 stuff classes, fine ids 91..181 in order, with their supercategory (COCO-Stuff's
# labels.txt and cocostuff hierarchy; suffix "-stuff" left out).
COCO_STUFF_STUFF: tuple[tuple[str, str], ...] = (
    ("banner", "textile"),
    ("blanket", "textile"),
    ("branch", "plant"),
    ("bridge", "building"),
    ("building-other", "building"),
    ("bush", "plant"),
    ("cabinet", "furniture"),
    ("cage", "structural"),
    ("cardboard", "rawmaterial"),
    ("carpet", "floor"),
    ("ceiling-other", "ceiling"),
    ("ceiling-tile", "ceiling"),
    ("cloth", "textile"),
    ("clothes", "textile"),
    ("clouds", "sky"),
    ("counter", "furniture"),
    ("cupboard", "furniture"),
    ("curtain", "textile"),
    ("desk-stuff", "furniture"),
    ("dirt", "ground"),
    ("door-stuff", "furniture"),
    ("fence", "structural"),
    ("floor-marble", "floor"),
    ("floor-other", "floor"),
    ("floor-stone", "floor"),
    ("floor-tile", "floor"),
    ("floor-wood", "floor"),
    ("flower", "plant"),
    ("fog", "water"),
    ("food-other", "food"),
    ("fruit", "food"),
    ("furniture-other", "furniture"),
    ("grass", "plant"),
    ("gravel", "ground"),
    ("ground-other", "ground"),
    ("hill", "solid"),
    ("house", "building"),
    ("leaves", "plant"),
    ("light", "furniture"),
    ("mat", "textile"),
    ("metal", "rawmaterial"),
    ("mirror-stuff", "furniture"),
    ("moss", "plant"),
    ("mountain", "solid"),
    ("mud", "ground"),
    ("napkin", "textile"),
    ("net", "structural"),
    ("paper", "rawmaterial"),
    ("pavement", "ground"),
    ("pillow", "textile"),
    ("plant-other", "plant"),
    ("plastic", "rawmaterial"),
    ("platform", "ground"),
    ("playingfield", "ground"),
    ("railing", "structural"),
    ("railroad", "ground"),
    ("river", "water"),
    ("road", "ground"),
    ("rock", "solid"),
    ("roof", "building"),
    ("rug", "textile"),
    ("salad", "food"),
    ("sand", "ground"),
    ("sea", "water"),
    ("shelf", "furniture"),
    ("sky-other", "sky"),
    ("skyscraper", "building"),
    ("snow", "ground"),
    ("solid-other", "solid"),
    ("stairs", "furniture"),
    ("stone", "solid"),
    ("straw", "plant"),
    ("structural-other", "structural"),
    ("table", "furniture"),
    ("tent", "building"),
    ("textile-other", "textile"),
    ("towel", "textile"),
    ("tree", "plant"),
    ("vegetable", "food"),
    ("wall-brick", "wall"),
    ("wall-concrete", "wall"),
    ("wall-other", "wall"),
    ("wall-panel", "wall"),
    ("wall-stone", "wall"),
    ("wall-tile", "wall"),
    ("wall-wood", "wall"),
    ("water-other", "water"),
    ("waterdrops", "water"),
    ("window-blind", "window"),
    ("window-other", "window"),
    ("wood", "solid"),
)
COCO_STUFF_FIRST_STUFF_ID = 91
COCO_STUFF_NUM_FINE = COCO_STUFF_FIRST_STUFF_ID + len(COCO_STUFF_STUFF)  # 182


def coco_stuff_fine_to_coarse() -> dict[int, int]:
    """Fine id 0..181 -> coarse id 0..26 (an index of :data:`COCO_STUFF27_CLASSES`)."""
    coarse = {name: i for i, name in enumerate(COCO_STUFF27_CLASSES)}
    table = {fine: coarse[name] for name, fines in COCO_STUFF_THINGS.items() for fine in fines}
    for offset, (_, group) in enumerate(COCO_STUFF_STUFF):
        table[COCO_STUFF_FIRST_STUFF_ID + offset] = coarse[f"{group}-stuff"]
    return dict(sorted(table.items()))


COCO_STUFF27_TABLE = IdTable(
    lookup_table({**coco_stuff_fine_to_coarse(), IGNORE_INDEX: IGNORE_INDEX}),
    expected="COCO-Stuff-164k stuffthingmaps PNGs hold the fine ids 0..181 (255 = unlabeled)",
    fix="use the stuffthingmaps_trainval2017 masks (the stuff-only pixel maps count from 1 and hold 183 = other)",
)


def coco_split_folder(split: str) -> str:
    """``val`` -> ``val2017`` (a split that already names its year is kept)."""
    return split if split[-4:].isdigit() else f"{split}2017"


class CocoStuff27(RemappedSegFolder):
    """COCO-Stuff-164k images with their fine-id masks as the 27 coarse classes; see module doc."""

    kind = "coco_stuff27"

    def __init__(
        self, root: str | os.PathLike | None, size: int = 224, split: str = "val", list_file: str | None = None
    ) -> None:
        folder = coco_split_folder(split)
        super().__init__(
            root, size, f"images/{folder}", f"annotations/{folder}", list_file, COCO_STUFF27_TABLE, COCO_STUFF27_CLASSES
        )


# ----------------------------------------------------------------------------- pascal context

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
    """Pascal-Context (mmsegmentation's converted layout) with 59 or 60 classes; see module doc."""

    kind = "pascal_context"

    def __init__(
        self,
        root: str | os.PathLike | None,
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


# ----------------------------------------------------------------------------- nyu (bts layout)


class NyuBts(DepthFolder):
    """NYU Depth v2 in the BTS layout: ``<scene>/rgb_<n>.jpg`` + ``<scene>/sync_depth_<n>.png``; see module doc."""

    kind = "nyu_bts"

    def __init__(
        self,
        root: str | os.PathLike | None,
        size: int = 224,
        depth_scale: float | None = None,
        depth_resize: str = "nearest",
        list_file: str | None = None,
    ) -> None:
        if depth_resize not in DEPTH_RESIZE_MODES:
            raise DataError(
                f"nyu_bts: depth_resize '{depth_resize}' is not valid; valid: {', '.join(DEPTH_RESIZE_MODES)}"
            )
        base = existing_folder(root, "nyu_bts root")
        self.root, self.size = base, check_size(size)
        self.image_root = self.target_root = base
        self.depth_scale, self.depth_resize = depth_scale, depth_resize
        self.pairs = self._listed(base / Path(list_file).expanduser()) if list_file else self._found()

    def _found(self) -> list[tuple[Path, Path]]:
        pairs, missing = [], []
        for image in list_images(self.root, IMAGE_EXTENSIONS):
            if not image.name.startswith(BTS_IMAGE_PREFIX):
                continue
            number = image.stem[len(BTS_IMAGE_PREFIX) :]
            depth = next(
                (
                    image.with_name(f"{BTS_DEPTH_PREFIX}{number}{ext}")
                    for ext in DEPTH_EXTENSIONS
                    if image.with_name(f"{BTS_DEPTH_PREFIX}{number}{ext}").is_file()
                ),
                None,
            )
            if depth is None:
                missing.append(image.relative_to(self.root).as_posix())
            else:
                pairs.append((image, depth))
        if not pairs:
            raise DataError(
                f"nyu_bts {self.root}: no {BTS_IMAGE_PREFIX}<n> image below it has its {BTS_DEPTH_PREFIX}<n>.png "
                "in the same folder; root is the BTS 'sync' or 'official_splits/test' folder of <scene>/ folders"
            )
        if missing:
            warnings.warn(
                f"nyu_bts {self.root}: {len(missing)} images have no {BTS_DEPTH_PREFIX} file and are left out "
                f"(first: {missing[:3]})",
                stacklevel=3,
            )
        return pairs

    def _listed(self, path: Path) -> list[tuple[Path, Path]]:
        if not path.is_file():
            raise DataNotFoundError(f"nyu_bts: list_file not found: {path}")
        pairs, missing, no_depth = [], [], 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise DataError(
                    f"nyu_bts: list_file {path} line {number} is '{line.strip()}'; expected "
                    "'rgb_path depth_path focal' per line (BTS's nyu_test_files_with_gt.txt)"
                )
            if tokens[1] == "None":  # an image without ground truth in BTS's lists
                no_depth += 1
                continue
            image, depth = (self.root / token.lstrip("/") for token in tokens[:2])
            if image.is_file() and depth.is_file():
                pairs.append((image, depth))
            else:
                missing.append(tokens[0])
        if not pairs:
            raise DataError(
                f"nyu_bts {self.root}: no line of list_file {path} names an rgb and a depth file that exist below "
                f"the root (first: {missing[:1]}); root must be the folder the list's paths are relative to"
            )
        if missing or no_depth:
            warnings.warn(
                f"nyu_bts {self.root}: {len(missing) + no_depth} entries of {path.name} are left out "
                f"({len(missing)} with a missing file, first: {missing[:3]}; {no_depth} without depth)",
                stacklevel=3,
            )
        return pairs


# ----------------------------------------------------------------------------- builders


@DATASETS.register("cityscapes")
def build_cityscapes(
    root: str | None = None, size: int = 224, split: str = "val", labels: str = "label_ids"
) -> Cityscapes:
    """Cityscapes ``leftImg8bit/<split>`` + ``gtFine/<split>``; ``mask`` as the 19 train ids, 255 = ignore.

    ``labels: label_ids`` (default) maps the ``*_gtFine_labelIds.png`` files; ``train_ids``
    reads ``*_gtFine_labelTrainIds.png`` as they are.
    """
    return Cityscapes(root, size, split, labels)


@DATASETS.register("coco_stuff27")
def build_coco_stuff27(
    root: str | None = None, size: int = 224, split: str = "val", list_file: str | None = None
) -> CocoStuff27:
    """COCO-Stuff-164k ``images/<split>2017`` + ``annotations/<split>2017``; ``mask`` as the 27 coarse classes.

    ``list_file`` (relative to ``root``) keeps the listed image ids, e.g. a curated
    ``Coco164kFull_Stuff_Coarse_7.txt``.
    """
    return CocoStuff27(root, size, split, list_file)


@DATASETS.register("pascal_context")
def build_pascal_context(
    root: str | None = None,
    size: int = 224,
    split: str = "val",
    reduce_zero_label: bool = True,
    list_file: str | None = None,
) -> PascalContext:
    """Pascal-Context ``JPEGImages`` + ``SegmentationClassContext`` of ``ImageSets/SegmentationContext/<split>.txt``.

    ``reduce_zero_label: true`` (default): 59 classes, background ignored; ``false``: 60
    classes with background = 0. ``list_file`` (relative to ``root``) replaces the split's list.
    """
    return PascalContext(root, size, split, reduce_zero_label, list_file)


@DATASETS.register("nyu_bts")
def build_nyu_bts(
    root: str | None = None,
    size: int = 224,
    depth_scale: float | None = None,
    depth_resize: str = "nearest",
    list_file: str | None = None,
) -> NyuBts:
    """NYU Depth v2 in BTS's ``<scene>/rgb_<n>.jpg`` + ``<scene>/sync_depth_<n>.png`` layout; ``depth`` in metres.

    ``depth_scale`` / ``depth_resize`` as in ``depth_folder``; ``list_file`` in BTS's
    ``rgb_path depth_path focal`` format picks and orders the pairs.
    """
    return NyuBts(root, size, depth_scale, depth_resize, list_file)

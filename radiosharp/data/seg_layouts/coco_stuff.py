"""COCO-Stuff-164k as distributed: the stuffthingmaps fine ids 0..181 -> the 27 coarse classes of the benchmark."""

from __future__ import annotations

import os

from radiosharp.data.paired_folders import IGNORE_INDEX
from radiosharp.data.seg_layouts.ids import IdTable, RemappedSegFolder, lookup_table
from radiosharp.registry import DATASETS

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
    """COCO-Stuff-164k ``images/<split>2017`` + ``annotations/<split>2017`` (the ``coco_stuff27`` data source); its
    fine-id masks as ``mask`` in the 27 coarse classes; see the module doc.

    ``list_file`` (relative to ``root``) keeps the listed image ids, e.g. a curated
    ``Coco164kFull_Stuff_Coarse_7.txt``.
    """

    kind = "coco_stuff27"

    def __init__(
        self, root: str | os.PathLike | None = None, size: int = 224, split: str = "val", list_file: str | None = None
    ) -> None:
        folder = coco_split_folder(split)
        super().__init__(
            root, size, f"images/{folder}", f"annotations/{folder}", list_file, COCO_STUFF27_TABLE, COCO_STUFF27_CLASSES
        )


# the class is the builder (one signature)
build_coco_stuff27 = DATASETS.register("coco_stuff27")(CocoStuff27)

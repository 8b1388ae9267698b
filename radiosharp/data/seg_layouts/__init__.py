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

from radiosharp.data.seg_layouts.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_EVAL_CLASSES,
    CITYSCAPES_LABEL_ID_TABLE,
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_ID_TABLE,
    Cityscapes,
    build_cityscapes,
)
from radiosharp.data.seg_layouts.coco_stuff import (
    COCO_STUFF27_CLASSES,
    COCO_STUFF27_TABLE,
    CocoStuff27,
    build_coco_stuff27,
    coco_stuff_fine_to_coarse,
)
from radiosharp.data.seg_layouts.ids import INVALID, IdTable, RemappedSegFolder, identity_table, lookup_table
from radiosharp.data.seg_layouts.nyu_bts import NyuBts, build_nyu_bts
from radiosharp.data.seg_layouts.pascal_context import PASCAL_CONTEXT_CLASSES, PascalContext, build_pascal_context

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_EVAL_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_LABEL_ID_TABLE",
    "CITYSCAPES_TRAIN_ID_TABLE",
    "COCO_STUFF27_CLASSES",
    "COCO_STUFF27_TABLE",
    "INVALID",
    "PASCAL_CONTEXT_CLASSES",
    "Cityscapes",
    "CocoStuff27",
    "IdTable",
    "NyuBts",
    "PascalContext",
    "RemappedSegFolder",
    "build_cityscapes",
    "build_coco_stuff27",
    "build_nyu_bts",
    "build_pascal_context",
    "coco_stuff_fine_to_coarse",
    "identity_table",
    "lookup_table",
]

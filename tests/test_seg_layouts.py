"""Dataset layouts as distributed: Cityscapes, COCO-Stuff-27, Pascal-Context and NYU in the BTS layout.

Each case is a tiny folder in the real layout, with masks whose stored ids are known, so
the mapping to class ids is checked value by value (8x8 files read at size 8: no resize).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import radiosharp
from radiosharp.data.errors import DataError, DataNotFoundError
from radiosharp.data.loader import make_loader
from radiosharp.registry import DATASETS

SIDE = 8


def build(**cfg):
    return radiosharp.build_dataset(cfg)


def save_rgb(path: Path, rgb=(90, 120, 150), side: int = SIDE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.array(rgb, np.uint8), (side, side, 3)).copy()).save(path)


def save_ids(path: Path, ids, dtype=np.uint8, side: int = SIDE) -> np.ndarray:
    """A side x side single-channel PNG holding ``ids`` row by row (the rest filled with the last one)."""
    flat = list(ids) + [list(ids)[-1]] * (side * side - len(ids))
    array = np.array(flat, dtype).reshape(side, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def flat_mask(sample: dict, n: int) -> list[int]:
    return sample["mask"].flatten()[:n].tolist()


# ----------------------------------------------------------------------------- cityscapes

# the benchmark's label id -> train id (cityscapesScripts labels.py), written out here independently
CITYSCAPES_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def cityscapes_root(tmp_path: Path, suffix: str = "_gtFine_labelIds.png") -> Path:
    root = tmp_path / "cityscapes"
    save_ids(root / "gtFine/val/frankfurt" / f"frankfurt_000000_000294{suffix}", [*range(34), 255])
    save_rgb(root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png")
    save_ids(root / "gtFine/val/lindau" / f"lindau_000001_000019{suffix}", [26, 0, 24, 255])
    save_rgb(root / "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png")
    save_rgb(root / "gtFine/val/lindau/lindau_000001_000019_gtFine_color.png", (1, 2, 3))  # not a mask: unused
    save_rgb(root / "leftImg8bit/val/munster/munster_000002_000019_leftImg8bit.png")  # no gtFine: left out
    return root


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    root = cityscapes_root(tmp_path)
    with pytest.warns(UserWarning, match="1 images have no target"):
        ds = build(source="cityscapes", root=str(root), size=SIDE)
    assert len(ds) == 2 and ds.num_classes == 19 and len(ds.class_names) == 19
    assert [ds.class_names[i] for i in (0, 1, 5, 6, 10, 13, 18)] == [
        "road",
        "sidewalk",
        "pole",
        "traffic light",
        "sky",
        "car",
        "bicycle",
    ]
    first = ds[0]
    assert first["key"] == "frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert first["image"].shape == (3, SIDE, SIDE) and first["mask"].dtype == torch.long
    # every label id 0..33 and 255 (the license plate's -1 as stored): the train id or 255
    assert flat_mask(first, 35) == [CITYSCAPES_TRAIN_ID.get(i, 255) for i in range(34)] + [255]
    second = ds[1]
    assert second["key"].startswith("lindau/lindau_000001_000019")  # the pairs match by stem, not by position
    assert flat_mask(second, 4) == [13, 255, 11, 255]  # car, unlabeled, person, ignore


def test_cityscapes_train_ids_are_read_as_they_are(tmp_path):
    root = tmp_path / "cityscapes"
    save_ids(root / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", [0, 5, 13, 18, 255])
    save_rgb(root / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png")
    ds = build(source="cityscapes", root=str(root), size=SIDE, labels="train_ids")
    assert flat_mask(ds[0], 5) == [0, 5, 13, 18, 255]  # as label ids, 5 and 13 would become 255 and 4
    with pytest.raises(DataError, match=r"labelTrainIds\.png files: set labels: train_ids"):
        build(source="cityscapes", root=str(root), size=SIDE)  # default label_ids: no *_labelIds.png here
    with pytest.raises(DataError, match="labels 'trainids' is not valid; valid: label_ids, train_ids"):
        build(source="cityscapes", root=str(root), labels="trainids")
    bad = root / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    save_ids(bad, [0, 19])
    with pytest.raises(DataError, match="train ids 0..18") as err:
        build(source="cityscapes", root=str(root), size=SIDE, labels="train_ids")[0]
    assert str(bad) in str(err.value) and "holds id 19" in str(err.value) and "\n" not in str(err.value)


def test_cityscapes_refuses_ids_outside_the_label_ids(tmp_path):
    root = tmp_path / "cityscapes"
    bad = root / "gtFine/val/bonn/bonn_000000_000019_gtFine_labelIds.png"
    save_ids(bad, [7, 34, 40])
    save_rgb(root / "leftImg8bit/val/bonn/bonn_000000_000019_leftImg8bit.png")
    ds = build(source="cityscapes", root=str(root), size=SIDE)
    with pytest.raises(DataError) as err:
        ds[0]
    message = str(err.value)
    assert message.startswith("cityscapes: mask ") and str(bad) in message and "holds id 34, 40" in message
    assert "label ids 0..33" in message and "\n" not in message
    save_ids(bad, [7, 26001], np.uint16)  # an _instanceIds-style file (label id * 1000 + instance)
    with pytest.raises(DataError, match="holds id 26001"):
        ds[0]
    with pytest.raises(DataNotFoundError, match=r"leftImg8bit[/\\]test"):
        build(source="cityscapes", root=str(root), split="test")


# ----------------------------------------------------------------------------- coco-stuff 27

# The benchmark's 27 coarse classes as the unsupervised-segmentation code writes them (STEGO's
# get_class_labels("cocostuff27"): coarse id order, 12 thing then 15 stuff supercategories, bare names).
STEGO_COCOSTUFF27 = [
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor", "person",
    "sports", "vehicle", "ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
]  # fmt: skip
COCO_STUFF27 = [f"{name}-things" for name in STEGO_COCOSTUFF27[:12]] + [
    f"{name}-stuff" for name in STEGO_COCOSTUFF27[12:]
]

# fine id (0-based stuffthingmaps id) -> its coarse class, for a few known classes
COCO_KNOWN = {
    0: "person-things",  # person
    2: "vehicle-things",  # car
    9: "outdoor-things",  # traffic light
    15: "animal-things",  # bird
    26: "accessory-things",  # backpack
    43: "kitchen-things",  # bottle
    51: "food-things",  # banana
    61: "furniture-things",  # chair
    71: "electronic-things",  # tv
    77: "appliance-things",  # microwave
    83: "indoor-things",  # book
    91: "textile-stuff",  # banner
    100: "floor-stuff",  # carpet
    101: "ceiling-stuff",  # ceiling-other
    105: "sky-stuff",  # clouds
    119: "water-stuff",  # fog
    123: "plant-stuff",  # grass
    148: "ground-stuff",  # road
    156: "sky-stuff",  # sky-other
    157: "building-stuff",  # skyscraper
    170: "wall-stuff",  # wall-brick
    180: "window-stuff",  # window-other
    181: "solid-stuff",  # wood
}


def test_coco_stuff27_maps_fine_ids_to_the_27_coarse_classes(tmp_path):
    root = tmp_path / "cocostuff"
    fine = [*COCO_KNOWN, 255]
    save_ids(root / "annotations/val2017/000000000139.png", fine)
    save_rgb(root / "images/val2017/000000000139.jpg")
    save_ids(root / "annotations/val2017/000000000285.png", list(range(64)))
    save_rgb(root / "images/val2017/000000000285.jpg")
    ds = build(source="coco_stuff27", root=str(root), size=SIDE)
    assert ds.class_names == COCO_STUFF27 and ds.num_classes == 27 and len(ds) == 2
    sample = ds[0]
    assert sample["key"] == "000000000139.jpg" and sample["image"].shape == (3, SIDE, SIDE)
    coarse = flat_mask(sample, len(fine))
    assert coarse[-1] == 255  # unlabeled stays ignored
    assert [ds.class_names[c] for c in coarse[:-1]] == list(COCO_KNOWN.values())
    assert set(flat_mask(ds[1], 64)) <= set(range(27))  # every thing id 0..63 has a coarse class
    (root / "curated/val2017").mkdir(parents=True)
    (root / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000285\n")
    listed = build(
        source="coco_stuff27", root=str(root), size=SIDE, list_file="curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
    )
    assert len(listed) == 1 and listed[0]["key"] == "000000000285.jpg"


# how many of the 182 fine ids each coarse class gathers (things: COCO's id blocks, unused ids included)
COCO_FINE_PER_COARSE = {
    "person-things": 1,
    "vehicle-things": 8,
    "outdoor-things": 6,
    "animal-things": 10,
    "accessory-things": 8,
    "sports-things": 10,
    "kitchen-things": 8,
    "food-things": 10,
    "furniture-things": 10,
    "electronic-things": 6,
    "appliance-things": 6,
    "indoor-things": 8,
    "ceiling-stuff": 2,
    "floor-stuff": 6,
    "food-stuff": 4,
    "furniture-stuff": 11,
    "rawmaterial-stuff": 4,
    "textile-stuff": 11,
    "wall-stuff": 7,
    "window-stuff": 2,
    "building-stuff": 6,
    "ground-stuff": 11,
    "plant-stuff": 9,
    "sky-stuff": 2,
    "solid-stuff": 6,
    "structural-stuff": 5,
    "water-stuff": 5,
}


def test_coco_stuff27_maps_every_fine_id(tmp_path):
    root = tmp_path / "cocostuff"
    save_ids(root / "annotations/val2017/1.png", [*range(182), 255], side=16)
    save_rgb(root / "images/val2017/1.jpg", side=16)
    ds = build(source="coco_stuff27", root=str(root), size=16)
    coarse = flat_mask(ds[0], 183)
    assert coarse[182] == 255
    names = [ds.class_names[c] for c in coarse[:182]]
    assert {name: names.count(name) for name in COCO_STUFF27} == COCO_FINE_PER_COARSE
    assert all(name.endswith("-things") for name in names[:91]) and all(n.endswith("-stuff") for n in names[91:])
    starts = [0, 1, 9, 15, 25, 33, 43, 51, 61, 71, 77, 83, 91]  # a COCO thing supercategory is a run of ids
    assert all(len(set(names[a:b])) == 1 for a, b in zip(starts, starts[1:]))


def test_coco_stuff27_refuses_ids_outside_the_182_fine_ids(tmp_path):
    root = tmp_path / "cocostuff"
    bad = root / "annotations/train2017/000000000009.png"
    save_ids(bad, [0, 181, 182, 183])
    save_rgb(root / "images/train2017/000000000009.jpg")
    with pytest.raises(DataError) as err:
        build(source="coco_stuff27", root=str(root), size=SIDE, split="train")[0]
    message = str(err.value)
    assert message.startswith("coco_stuff27: mask") and str(bad) in message and "holds id 182, 183" in message
    assert "0..181" in message and "\n" not in message


# ----------------------------------------------------------------------------- pascal context


def pascal_context_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2010"
    for name, ids in {"2008_000002": [0, 1, 37, 59, 255], "2008_000003": [2, 3], "2008_000007": [4]}.items():
        save_rgb(root / "JPEGImages" / f"{name}.jpg")
        save_ids(root / "SegmentationClassContext" / f"{name}.png", ids)
    save_rgb(root / "JPEGImages/2008_000008.jpg")  # in no list: never read
    (root / "ImageSets/SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n2008_000003\n")
    (root / "ImageSets/SegmentationContext/train.txt").write_text("2008_000007\n")
    return root


def test_pascal_context_59_and_60_classes(tmp_path):
    root = pascal_context_root(tmp_path)
    ds = build(source="pascal_context", root=str(root), size=SIDE)
    assert len(ds) == 2 and ds.num_classes == 59 and len(ds.class_names) == 59
    assert [s["key"] for s in (ds[0], ds[1])] == ["2008_000002.jpg", "2008_000003.jpg"]
    assert flat_mask(ds[0], 5) == [255, 0, 36, 58, 255]  # background ignored, k -> k-1
    assert [ds.class_names[i] for i in (0, 36, 58)] == ["aeroplane", "person", "wood"]
    full = build(source="pascal_context", root=str(root), size=SIDE, reduce_zero_label=False)
    assert full.num_classes == 60 and full.class_names[0] == "background" and full.class_names[37] == "person"
    assert flat_mask(full[0], 5) == [0, 1, 37, 59, 255]
    train = build(source="pascal_context", root=str(root), size=SIDE, split="train")
    assert len(train) == 1 and train[0]["key"] == "2008_000007.jpg" and flat_mask(train[0], 1) == [3]
    (root / "mine.txt").write_text("2008_000003\n")
    mine = build(source="pascal_context", root=str(root), size=SIDE, list_file="mine.txt")
    assert len(mine) == 1 and mine[0]["key"] == "2008_000003.jpg"
    with pytest.raises(DataNotFoundError, match="list of split 'test' not found"):
        build(source="pascal_context", root=str(root), split="test")


def test_pascal_context_refuses_ids_above_59(tmp_path):
    root = pascal_context_root(tmp_path)
    bad = root / "SegmentationClassContext/2008_000002.png"
    save_ids(bad, [0, 60])
    for reduce in (True, False):
        with pytest.raises(DataError) as err:
            build(source="pascal_context", root=str(root), size=SIDE, reduce_zero_label=reduce)[0]
        message = str(err.value)
        assert message.startswith("pascal_context: mask") and str(bad) in message and "holds id 60" in message


# ----------------------------------------------------------------------------- nyu, bts layout


def bts_root(tmp_path: Path) -> Path:
    root = tmp_path / "official_splits" / "test"
    for scene, number, mm in (("bathroom", "00045", 1000), ("kitchen", "00001", 2500)):
        save_rgb(root / scene / f"rgb_{number}.jpg")
        depth = np.tile(np.array([mm, mm + 1000, 0, 4321], np.uint16), (SIDE, SIDE // 4))
        Image.fromarray(depth).save(root / scene / f"sync_depth_{number}.png")
    save_rgb(root / "kitchen" / "rgb_00002.jpg")  # no sync_depth_00002: left out
    return root


def test_nyu_bts_reads_millimetres_as_metres_and_pairs_by_prefix(tmp_path):
    root = bts_root(tmp_path)
    with pytest.warns(UserWarning, match="1 images have no sync_depth_ file"):
        ds = build(source="nyu_bts", root=str(root), size=SIDE)
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert first["key"] == "bathroom/rgb_00045.jpg" and second["key"] == "kitchen/rgb_00001.jpg"
    assert first["image"].shape == (3, SIDE, SIDE) and first["depth"].dtype == torch.float32
    assert torch.allclose(first["depth"][0, :4], torch.tensor([1.0, 2.0, 0.0, 4.321]))  # 0 = no measurement
    assert torch.allclose(second["depth"][0, :4], torch.tensor([2.5, 3.5, 0.0, 4.321]))
    with pytest.warns(UserWarning):
        raw = build(source="nyu_bts", root=str(root), size=SIDE, depth_scale=1.0)
    assert raw[0]["depth"][0, :2].tolist() == [1000.0, 2000.0]
    with pytest.raises(DataError, match="^nyu_bts: depth_resize 'cubic' is not valid; valid: nearest, bilinear$"):
        build(source="nyu_bts", root=str(root), depth_resize="cubic")


def test_nyu_bts_list_file_picks_and_orders_the_pairs(tmp_path):
    root = bts_root(tmp_path)
    (root / "nyu_test_files_with_gt.txt").write_text(
        "/kitchen/rgb_00001.jpg /kitchen/sync_depth_00001.png 518.8579\n"
        "bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579\n"
        "kitchen/rgb_00002.jpg None 518.8579\n"
    )
    with pytest.warns(UserWarning, match="1 entries .* left out .*1 without depth"):
        ds = build(source="nyu_bts", root=str(root), size=SIDE, list_file="nyu_test_files_with_gt.txt")
    assert [ds[i]["key"] for i in range(len(ds))] == ["kitchen/rgb_00001.jpg", "bathroom/rgb_00045.jpg"]
    assert torch.allclose(ds[0]["depth"][0, :2], torch.tensor([2.5, 3.5]))
    (root / "broken.txt").write_text("bathroom/rgb_00045.jpg\n")
    with pytest.raises(DataError, match=r"broken\.txt line 1 .*'rgb_path depth_path focal'"):
        build(source="nyu_bts", root=str(root), list_file="broken.txt")
    (root / "elsewhere.txt").write_text("sync/rgb_1.jpg sync/sync_depth_1.png 518.8\n")
    with pytest.raises(DataError, match="no line of list_file"):
        build(source="nyu_bts", root=str(root), list_file="elsewhere.txt")


@pytest.mark.filterwarnings("ignore:.*left out:UserWarning")  # images="." lists rgb_ files without a target first
def test_depth_folder_on_a_bts_folder_names_nyu_bts(tmp_path):
    root = bts_root(tmp_path)
    for options in ({}, {"images": ".", "depth": "."}):  # no images/ folder; one folder for both
        with pytest.raises(DataError) as err:
            build(source="depth_folder", root=str(root), size=SIDE, **options)
        message = str(err.value)
        assert "use source: nyu_bts" in message and "sync_depth_" in message and "\n" not in message
    nested = tmp_path / "nested"
    save_rgb(nested / "images/bathroom/rgb_00045.jpg")
    Image.fromarray(np.full((SIDE, SIDE), 1000, np.uint16)).save(nested / "images/bathroom/sync_depth_00045.png")
    (nested / "depth").mkdir()
    with pytest.raises(DataError, match="use source: nyu_bts"):
        build(source="depth_folder", root=str(nested), size=SIDE)
    with pytest.raises(DataNotFoundError, match="folder not found"):  # an ordinary missing folder: as before
        build(source="depth_folder", root=str(tmp_path / "cityscapes_is_not_here"))


# ----------------------------------------------------------------------------- registry


@pytest.mark.filterwarnings("ignore:.*left out:UserWarning")  # the folders' unpaired images (tested above)
def test_every_layout_source_builds_by_name_and_loads_in_batches(tmp_path):
    assert {"cityscapes", "coco_stuff27", "pascal_context", "nyu_bts"} <= set(DATASETS.names())
    coco = tmp_path / "coco"
    for name in ("1", "2"):
        save_ids(coco / f"annotations/val2017/{name}.png", [0, 255])
        save_rgb(coco / f"images/val2017/{name}.jpg")
    configs = {
        "cityscapes": {"root": str(cityscapes_root(tmp_path))},
        "coco_stuff27": {"root": str(coco)},
        "pascal_context": {"root": str(pascal_context_root(tmp_path))},
        "nyu_bts": {"root": str(bts_root(tmp_path))},
    }
    for name, cfg in configs.items():
        ds = DATASETS.build(name, size=SIDE, **cfg)
        batch = next(iter(make_loader(ds, batch_size=2)))
        target = "depth" if name == "nyu_bts" else "mask"
        assert batch["image"].shape == (2, 3, SIDE, SIDE) and batch[target].shape == (2, SIDE, SIDE), name
        assert len(batch["key"]) == 2
        if target == "mask":
            assert batch["mask"].dtype == torch.long and ds.num_classes == len(ds.class_names)
    with pytest.raises(ValueError, match="num_classes"):  # the label space is the layout's, not an option
        build(source="cityscapes", root=configs["cityscapes"]["root"], num_classes=3)


FOLDER_LAYOUTS = {
    "seg_folder": (
        "SegFolder",
        ["root", "size", "images", "masks", "list_file", "reduce_zero_label", "num_classes", "class_names"],
    ),
    "depth_folder": ("DepthFolder", ["root", "size", "images", "depth", "depth_scale", "depth_resize", "list_file"]),
    "nyu_bts": ("NyuBts", ["root", "size", "depth_scale", "depth_resize", "list_file"]),
    "pascal_context": ("PascalContext", ["root", "size", "split", "reduce_zero_label", "list_file"]),
    "cityscapes": ("Cityscapes", ["root", "size", "split", "labels"]),
    "coco_stuff27": ("CocoStuff27", ["root", "size", "split", "list_file"]),
}


@pytest.mark.parametrize("name", sorted(FOLDER_LAYOUTS))
def test_a_folder_layout_source_is_its_own_class_with_one_typed_signature(name, tmp_path):
    from radiosharp.data import paired_folders, seg_layouts

    class_name, options = FOLDER_LAYOUTS[name]
    cls = getattr(paired_folders, class_name, None) or getattr(seg_layouts, class_name)
    assert DATASETS.get(name) is cls
    assert list(DATASETS.options(name)) == options
    # the registry's number check reads the class's annotations: a string size is refused before any folder is read
    with pytest.raises(ValueError, match=f"^bad value at 'size': data source '{name}' takes an integer there"):
        DATASETS.build(name, root=str(tmp_path / "absent"), size="big")
    with pytest.raises(DataNotFoundError, match=name):
        DATASETS.build(name, root=str(tmp_path / "absent"))

"""No silently wrong numbers: data that would give a wrong score is handled right or refused in one line.

Each case is a tiny folder: train/val class lists that differ, mask ids outside
num_classes, 8-bit depth PNGs, the hf source's split and empty datasets, EXIF-rotated
images with their masks, and the CLIs' exit status 2 with one line for each.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

import radiosharp
from radiosharp.contracts import TeacherOutput
from radiosharp.data.decode import orient, read_mask, read_rgb_oriented
from radiosharp.data.errors import DataError, one_line
from radiosharp.eval.features import FeatureStore
from radiosharp.eval.task import EvalContext
from radiosharp.registry import TASKS

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def build(**cfg):
    return radiosharp.build_dataset(cfg)


def save_rgb(path: Path, rgb, h: int = 8, w: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()).save(path)


def save_grey(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def class_folder(root: Path, classes: dict[str, tuple], per_class: int = 2) -> Path:
    for name, rgb in classes.items():
        for i in range(per_class):
            save_rgb(root / name / f"{i}.png", rgb)
    return root


class MeanColour(nn.Module):
    """Global vector = the mean colour (a perfect feature for solid-colour classes); dense = 2x2-pooled pixels."""

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(images.mean((2, 3)), F.avg_pool2d(images, 2))


def context(data=None, val_data=None) -> EvalContext:
    model = MeanColour()
    return EvalContext(model, FeatureStore(model, batch_size=4, progress=False), data, val_data, progress=False)


# ----------------------------------------------------------------------------- 1. train/val class lists


def test_knn_val_folder_without_a_class_keeps_the_train_ids(tmp_path):
    """val lacks 'a': by its own sorted sub-folders b would be 0 and c 1 (train: 1 and 2),
    and a perfect feature would score 0.0."""
    train = class_folder(tmp_path / "train", {"a": RED, "b": GREEN, "c": BLUE})
    val = class_folder(tmp_path / "val", {"b": GREEN, "c": BLUE}, per_class=1)
    task = TASKS.build(
        "knn",
        k=1,
        data={"source": "image_folder", "root": str(train), "size": 8},
        val_data={"source": "image_folder", "root": str(val), "size": 8},
    )
    with pytest.warns(UserWarning, match=r"has no images of train classes a;.*keep the train class ids"):
        result = task.run(context())
    assert result["metrics"]["top1"]["values"] == [1.0]


def test_knn_refuses_val_images_of_a_class_the_train_data_lacks(tmp_path):
    train = class_folder(tmp_path / "train", {"a": RED, "b": GREEN})
    val = class_folder(tmp_path / "val", {"a": RED, "zebra": YELLOW}, per_class=1)
    task = TASKS.build(
        "knn",
        data={"source": "image_folder", "root": str(train), "size": 8},
        val_data={"source": "image_folder", "root": str(val), "size": 8},
    )
    with pytest.raises(DataError, match="class 'zebra'") as caught:
        task.run(context())
    message = str(caught.value)
    assert str(val) in message and str(train) in message and "\n" not in message


# ----------------------------------------------------------------------------- 2. mask ids and num_classes


def seg_pair(root: Path, stem: str, mask: np.ndarray) -> None:
    save_rgb(root / "images" / f"{stem}.png", (90, 90, 90), *mask.shape)
    save_grey(root / "masks" / f"{stem}.png", mask)


def test_seg_folder_refuses_mask_ids_outside_num_classes(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 200
    mask[0] = 255
    seg_pair(tmp_path / "wild", "a", mask)
    ds = build(source="seg_folder", root=str(tmp_path / "wild"), size=8, num_classes=3)
    with pytest.raises(DataError) as caught:
        ds[0]
    message = str(caught.value)
    assert str(tmp_path / "wild" / "masks" / "a.png") in message and "class id 200" in message
    assert "num_classes is 3" in message and "255 = ignore" in message and "num_classes to at least 201" in message
    # ADE20K-style masks: 0 = void, classes 1..3 -> the fix named is reduce_zero_label
    ade = np.tile(np.array([0, 1, 2, 3], np.uint8), (8, 2))
    seg_pair(tmp_path / "ade", "b", ade)
    with pytest.raises(DataError, match="set reduce_zero_label: true"):
        build(source="seg_folder", root=str(tmp_path / "ade"), size=8, num_classes=3)[0]
    reduced = build(source="seg_folder", root=str(tmp_path / "ade"), size=8, num_classes=3, reduce_zero_label=True)
    assert reduced[0]["mask"][0].tolist() == [255, 0, 1, 2] * 2


def test_semseg_names_the_image_whose_mask_exceeds_num_classes(tmp_path):
    good = np.tile(np.array([0, 1, 2, 0], np.uint8), (8, 2))
    wild = good.copy()
    wild[2:4, 2:4] = 7
    seg_pair(tmp_path / "train", "a", good)
    seg_pair(tmp_path / "train", "b", good)
    seg_pair(tmp_path / "val", "a", good)
    seg_pair(tmp_path / "val", "b", wild)
    seg_pair(tmp_path / "wild_train", "a", good)
    seg_pair(tmp_path / "wild_train", "c", np.where(good == 2, 200, good).astype(np.uint8))
    cfg = {"source": "seg_folder", "size": 8}
    task = TASKS.build(
        "semseg",
        num_classes=3,
        steps=2,
        seeds=1,
        data={**cfg, "root": str(tmp_path / "train")},
        val_data={**cfg, "root": str(tmp_path / "val")},
    )
    with pytest.raises(DataError) as caught:  # val pixels of class 7 are not silently left out of the mIoU
        task.run(context())
    message = str(caught.value)
    assert "val mask of 'b.png'" in message and str(tmp_path / "val") in message and "class id 7" in message
    assert "num_classes is 3" in message and "ignore index 255" in message
    task = TASKS.build("semseg", num_classes=3, steps=2, seeds=1, data={**cfg, "root": str(tmp_path / "wild_train")})
    with pytest.raises(
        DataError, match=r"train mask of 'c.png' .* holds class id 200"
    ):  # not "Target 200 is out of bounds"
        task.run(context())


# ----------------------------------------------------------------------------- 3. depth PNGs


def test_depth_8bit_png_is_refused_unless_depth_scale_says_its_unit(tmp_path):
    save_rgb(tmp_path / "images" / "a.png", (10, 20, 30), 4, 4)
    stored = np.array([[10, 20, 30, 40]] * 4, np.uint8)
    save_grey(tmp_path / "depth" / "a.png", stored)  # an 8-bit grey PNG
    ds = build(source="depth_folder", root=str(tmp_path), size=4)
    with pytest.raises(DataError) as caught:
        ds[0]
    message = str(caught.value)
    assert str(tmp_path / "depth" / "a.png") in message and "8-bit" in message
    assert "16-bit PNG in millimetres" in message and ".npy" in message and "depth_scale" in message
    scaled = build(source="depth_folder", root=str(tmp_path), size=4, depth_scale=0.1)
    assert torch.allclose(scaled[0]["depth"], torch.from_numpy(stored.astype(np.float32) * 0.1))
    save_grey(tmp_path / "depth" / "a.png", stored.astype(np.uint16) * 100)  # 16-bit millimetres: as before
    assert torch.allclose(ds[0]["depth"], torch.from_numpy(stored.astype(np.float32) * 0.1))


# ----------------------------------------------------------------------------- 4. hf: split and empty datasets


def test_hf_split_of_saved_datasets_and_empty_ones(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    images = [Image.fromarray(np.full((6, 6, 3), c, np.uint8)) for c in (10, 200, 90)]

    def table(n, split=None):
        return datasets.Dataset.from_dict({"image": images[:n], "label": [0, 1, 0][:n]}, features=feats, split=split)

    table(2, split="validation").save_to_disk(str(tmp_path / "named"))
    table(3).save_to_disk(str(tmp_path / "unnamed"))
    datasets.DatasetDict({"train": table(3), "validation": table(1), "test": table(0)}).save_to_disk(
        str(tmp_path / "dict")
    )
    table(0).save_to_disk(str(tmp_path / "empty"))

    def hf(path, **options):
        return build(source="hf", name_or_path=str(tmp_path / path), size=4, label_column="label", **options)

    assert len(hf("named", split="validation")) == 2
    with pytest.raises(DataError, match="saved as split 'validation', not 'train'; set split: validation"):
        hf("named")  # the default split is train: not this folder
    assert len(hf("unnamed")) == 3 and len(hf("unnamed", split=None)) == 3
    with pytest.raises(DataError, match="saved without a split name.*cannot be the 'validation' split"):
        hf("unnamed", split="validation")  # val_data at the train folder would score the training images
    assert len(hf("dict")) == 3 and len(hf("dict", split="validation")) == 1  # the empty test split is not loaded
    with pytest.raises(DataError, match="valid splits: train, validation, test"):
        hf("dict", split="val")
    with pytest.raises(DataError, match="has 3 splits; set split"):
        hf("dict", split=None)
    for path, split in (("empty", "train"), ("dict", "test")):
        with pytest.raises(DataError, match=r"is empty \(0 rows\)") as caught:  # not an IndexError from datasets
            hf(path, split=split)
        assert str(tmp_path / path) in str(caught.value) and "\n" not in str(caught.value)


def test_hf_8bit_depth_column_needs_depth_scale(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"image": [np.zeros((4, 4, 3), np.uint8).tolist()], "depth": [np.full((4, 4), 7, np.uint8).tolist()]},
        features=datasets.Features(
            {"image": datasets.Array3D((4, 4, 3), "uint8"), "depth": datasets.Array2D((4, 4), "uint8")}
        ),
    )
    ds.save_to_disk(str(tmp_path / "d"))
    source = build(source="hf", name_or_path=str(tmp_path / "d"), size=4, depth_column="depth")
    with pytest.raises(DataError, match=r"\[0\] \(column 'depth'\) holds 8-bit values.*depth_scale"):
        source[0]
    scaled = build(source="hf", name_or_path=str(tmp_path / "d"), size=4, depth_column="depth", depth_scale=0.5)
    assert torch.allclose(scaled[0]["depth"], torch.full((4, 4), 3.5))


# ----------------------------------------------------------------------------- 5. EXIF orientation


def tagged_jpeg(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, subsampling=0, exif=exif)
    return buf.getvalue()


def halves(h: int = 8, w: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A stored image (left half red, right half blue) and its mask in the stored pixel grid (1 | 2)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = RED
    image[:, w // 2 :] = BLUE
    mask = np.ones((h, w), np.uint8)
    mask[:, w // 2 :] = 2
    return image, mask


def red(image: torch.Tensor) -> torch.Tensor:
    return image[0].float() > image[2].float()


def test_orient_matches_pil_exif_transpose_for_every_orientation():
    from PIL import ImageOps

    array = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        im = Image.open(io.BytesIO(tagged_jpeg(array, orientation)))
        im.load()
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        pixels, applied = read_rgb_oriented(tagged_jpeg(array, orientation))
        assert applied == orientation and np.array_equal(pixels.permute(1, 2, 0).numpy(), expected)
        stored = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(orient(stored, orientation), pixels)


def test_exif_rotated_images_stay_aligned_with_their_masks(tmp_path):
    """Orientation 6 ("turn 90 clockwise"): the image is read upright and its mask gets the same turn."""
    image, mask = halves()
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(tagged_jpeg(image, 6))
    save_grey(root / "masks" / "a.png", mask)
    pixels, orientation = read_rgb_oriented(root / "images" / "a.jpg")
    assert orientation == 6 and pixels.shape == (3, 12, 8)  # upright: 12 rows x 8 columns
    upright_mask = orient(read_mask(root / "masks" / "a.png"), orientation)
    assert torch.equal(red(pixels), upright_mask == 1)
    assert red(pixels)[0].all() and not red(pixels)[-1].any()  # stored left (red) is now the top
    sample = build(source="seg_folder", root=str(root), size=8)[0]
    assert torch.equal(red(sample["image"]), sample["mask"] == 1)
    # a tag on the mask file itself is ignored: masks are read as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(mask).save(root / "masks" / "tagged.png", exif=exif)
    with Image.open(root / "masks" / "tagged.png") as im:
        assert im.getexif().get(0x0112) == 6
    assert torch.equal(read_mask(root / "masks" / "tagged.png"), torch.from_numpy(mask.astype(np.int64)))


def test_hf_masks_get_the_image_exif_turn(tmp_path):
    datasets = pytest.importorskip("datasets")
    image, mask = halves()
    png = io.BytesIO()
    Image.fromarray(mask).save(png, format="PNG")
    feats = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    cells = {
        "image": [{"bytes": tagged_jpeg(image, 6), "path": None}],
        "mask": [{"bytes": png.getvalue(), "path": None}],
    }
    datasets.Dataset.from_dict(cells, features=feats).save_to_disk(str(tmp_path / "d"))
    sample = build(source="hf", name_or_path=str(tmp_path / "d"), size=8, mask_column="mask")[0]
    assert torch.equal(red(sample["image"]), sample["mask"] == 1)
    assert (sample["mask"][0] == 1).all() and (sample["mask"][-1] == 2).all()


# ----------------------------------------------------------------------------- 6. the CLIs: exit 2, one line


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """``make(eval_section)``: a run folder whose 'student' export loads as MeanColour; ``loads`` counts loads."""
    from radiosharp.eval.runs import RUN_LOADERS

    loads = []

    def load(run_dir, text_towers=False):
        loads.append(run_dir)
        return MeanColour()

    monkeypatch.setitem(RUN_LOADERS, "student", load)

    def make(section):
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "model.json").write_text(json.dumps({"kind": "student", "config": {}}))
        (run / "model.safetensors").write_bytes(b"")
        (run / "recipe.yaml").write_text(yaml.safe_dump({"kind": "distill", "eval": section}))
        return run

    return SimpleNamespace(make=make, loads=loads)


def eval_error(capsys, run: Path) -> str:
    from radiosharp.eval.cli import main

    assert main(["run", str(run), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_eval_cli_unknown_keys_fail_with_their_dotted_path_before_a_model_loads(tmp_path, fake_run, capsys):
    folder = str(class_folder(tmp_path / "train", {"a": RED}))
    for section, path in (
        ({"nonsense": 1}, "eval.nonsense"),
        ({"tasks": {"knn": {"kk": 3}}}, "eval.tasks.knn.kk"),
        ({"data": {"source": "image_folder", "root": folder, "colour": "red"}}, "eval.data.colour"),
        (
            {"tasks": {"knn": {"val_data": {"source": "image_folder", "root": folder, "colour": 1}}}},
            "eval.tasks.knn.val_data.colour",
        ),
    ):
        assert f"unknown key '{path}'" in eval_error(capsys, fake_run.make(section))
    assert "eval.data.source" in eval_error(capsys, fake_run.make({"data": {"source": "imagefolder"}}))
    assert "eval.tasks.knn: knn: k must be >= 1" in eval_error(capsys, fake_run.make({"tasks": {"knn": {"k": 0}}}))
    assert fake_run.loads == []


def test_eval_cli_data_errors_are_one_line(tmp_path, fake_run, capsys):
    train = class_folder(tmp_path / "train", {"a": RED, "b": GREEN})
    val = class_folder(tmp_path / "val", {"zebra": YELLOW}, per_class=1)
    knn = {"tasks": {"knn": {"k": 1}}}
    missing = {**knn, "data": {"source": "image_folder", "root": str(tmp_path / "nope")}, "val_data": None}
    assert "folder not found" in eval_error(capsys, fake_run.make(missing))
    classes = {
        **knn,
        "data": {"source": "image_folder", "root": str(train), "size": 8},
        "val_data": {"source": "image_folder", "root": str(val), "size": 8},
    }
    assert "class 'zebra'" in eval_error(capsys, fake_run.make(classes))
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 9
    seg_pair(tmp_path / "seg", "a", mask)
    seg_pair(tmp_path / "seg", "b", mask)
    seg = {
        "tasks": {"semseg": {"steps": 2, "seeds": 1}},
        "data": {"source": "seg_folder", "root": str(tmp_path / "seg"), "size": 8, "num_classes": 4},
        "val_data": None,
    }
    err = eval_error(capsys, fake_run.make(seg))  # raised while the features are extracted
    assert str(tmp_path / "seg" / "masks" / "a.png") in err and "class id 9" in err
    # a worker's re-raised error keeps only the original message
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nradiosharp.data.errors.DataError: depth map d.png holds 8-bit'
    )
    assert one_line(wrapped) == "depth map d.png holds 8-bit"


def test_train_cli_data_errors_exit_2_and_training_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import radiosharp.train as train_cli
    from radiosharp.engine.trainer import Trainer

    (tmp_path / "empty").mkdir()
    recipe = {
        "kind": "featurize",
        "output_dir": str(tmp_path / "run"),
        "teachers": {"dinov2": {"size": "tiny"}},
        "data": {"source": "image_folder", "root": str(tmp_path / "empty")},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_cli.main([str(path)]) == 2  # a data source refusing its folder while the run is set up
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: image_folder") and "no images" in err and len(err.splitlines()) == 1

    def loop_raising(error):
        """Run the real training loop over batches whose reading raises ``error``."""

        def batches():
            raise error
            yield

        fake = SimpleNamespace(
            recipe=SimpleNamespace(name="t", train=SimpleNamespace(steps=1, grad_accum=1)),
            accelerator=None,
            state=SimpleNamespace(step=0),
            kind="fake",
            is_main=False,
            set_lr=lambda step: 0.0,
        )
        return lambda recipe: Trainer.loop(fake, SimpleNamespace(batches=batches(), metrics=None, wandb_run=None))

    monkeypatch.setattr(train_cli, "load_recipe", lambda *args: None)
    monkeypatch.setattr(train_cli, "run_recipe", loop_raising(DataError("mask m.png holds class id 9")))
    assert train_cli.main(["r.yaml"]) == 2  # a data error the loop only meets when it reads the file
    assert capsys.readouterr().err.strip() == "error: mask m.png holds class id 9"
    monkeypatch.setattr(train_cli, "run_recipe", loop_raising(ValueError("a bug in a training step")))
    with pytest.raises(ValueError, match="a bug in a training step"):
        train_cli.main(["r.yaml"])

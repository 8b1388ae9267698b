"""Data sources, batching that skips unreadable files, and the sequential loader."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import radiosharp
from radiosharp.data.loader import collate_skip_bad, make_loader
from radiosharp.data.skipping import SkipLog, SkippedSample, UnreadableImageWarning
from radiosharp.registry import DATASETS


def build(**cfg):
    return radiosharp.build_dataset(cfg)


def save_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_a_pure_function_of_seed_and_index():
    a = build(source="synthetic", num_images=6, size=64, seed=3)
    b = build(source="synthetic", num_images=6, size=64, seed=3)
    forward = [a[i] for i in range(6)]
    backward = [b[i] for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward):
        for key in ("image", "mask", "depth"):
            assert torch.equal(x[key], y[key])
        assert x["label"] == y["label"] and x["key"] == y["key"]
    other = build(source="synthetic", num_images=6, size=64, seed=4)
    assert not torch.equal(forward[0]["image"], other[0]["image"])
    assert not torch.equal(forward[0]["image"], forward[1]["image"])


def test_synthetic_shapes_ranges_and_depth_order():
    ds = build(source="synthetic", num_images=8, size=96, num_classes=12)
    assert len(ds) == 8 and ds.num_classes == 12 and len(ds.class_names) == 12
    assert ds.class_names[0] == "background" and len(set(ds.class_names)) == 12
    for i in range(8):
        s = ds[i]
        assert s["image"].shape == (3, 96, 96) and s["image"].dtype == torch.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["mask"].shape == (96, 96) and s["mask"].dtype == torch.long
        assert 0 <= s["mask"].min() and s["mask"].max() < 12
        assert s["depth"].shape == (96, 96) and s["depth"].dtype == torch.float32
        objects, background = s["mask"] > 0, s["mask"] == 0
        assert objects.any() and background.any()
        # every object is nearer than every background point (painter's order follows depth)
        assert s["depth"][objects].max() < s["depth"][background].min()
        assert 1 <= s["label"] < 12 and (s["mask"] == s["label"]).any()
    with pytest.raises(IndexError):
        ds[8]


def test_synthetic_has_small_and_large_objects():
    ds = build(source="synthetic", num_images=20, size=128)
    fractions = []
    for i in range(20):
        mask = ds[i]["mask"]
        area = torch.bincount(mask.flatten(), minlength=ds.num_classes)[1:].float() / mask.numel()
        fractions += area[area > 0].tolist()
    assert min(fractions) < 0.01
    assert max(fractions) > 0.10


def test_synthetic_scene_is_resolution_independent():
    small = build(source="synthetic", num_images=3, size=64, pixel_noise=0.0)
    large = build(source="synthetic", num_images=3, size=128, pixel_noise=0.0)
    for i in range(3):
        hi, lo = large[i], small[i]
        pooled = torch.nn.functional.avg_pool2d(hi["image"][None], 2)[0]
        assert (pooled - lo["image"]).abs().mean() < 0.05
        assert (hi["mask"][1::2, 1::2] == lo["mask"]).float().mean() > 0.95
        assert hi["label"] == lo["label"]


def test_synthetic_rejects_bad_options():
    with pytest.raises(ValueError, match="num_classes"):
        build(source="synthetic", num_classes=1)
    with pytest.raises(ValueError, match="min_object"):
        build(source="synthetic", min_object=0.6, max_object=0.5)


# ----------------------------------------------------------------------------- batching


def test_collate_stacks_tensors_and_drops_bad_samples():
    log = SkipLog()
    good = {"image": torch.zeros(3, 4, 4), "label": 2, "key": "a"}
    samples = [good, SkippedSample("/x/bad.jpg", "zero bytes"), dict(good, label=5, key="b"), None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collate_skip_bad(samples, log=log)
    assert "bad.jpg" in str(caught[0].message) and "unnamed" in str(caught[1].message)
    assert batch["image"].shape == (2, 3, 4, 4)
    assert batch["label"].tolist() == [2, 5] and batch["label"].dtype == torch.long
    assert batch["key"] == ["a", "b"]
    assert log.count == 2 and log.names["/x/bad.jpg"] == 1
    with pytest.warns(UnreadableImageWarning, match="'k'"):
        assert collate_skip_bad([None, SkippedSample("k", "r")], log=log) is None
    with pytest.raises(ValueError, match="different shapes"):
        collate_skip_bad([good, dict(good, image=torch.zeros(3, 5, 5))], log=log)


def test_skip_log_warns_once_per_name():
    log = SkipLog()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            log.record("bad.jpg", "zero bytes")
        log.record("other.png", "not an image")
    assert log.count == 4
    assert [str(w.message).split("'")[1] for w in caught] == ["bad.jpg", "other.png"]


def test_loader_workers_give_the_same_batches_as_the_main_process():
    ds = build(source="synthetic", num_images=6, size=32)
    serial = list(make_loader(ds, batch_size=3))
    parallel = list(make_loader(ds, batch_size=3, num_workers=2))
    assert [b["key"] for b in serial] == [b["key"] for b in parallel]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(serial, parallel))


# ----------------------------------------------------------------------------- image_folder


def test_image_folder_labels_from_subfolders_and_center_crop(tmp_path):
    save_rgb(tmp_path / "cat" / "a.png", solid(20, 30, (255, 0, 0)))
    save_rgb(tmp_path / "cat" / "b.jpg", solid(30, 20, (255, 0, 0)))
    wide = np.concatenate([solid(16, 16, (0, 0, 255)), solid(16, 16, (0, 255, 0)), solid(16, 16, (0, 0, 255))], 1)
    save_rgb(tmp_path / "dog" / "deep" / "c.png", wide)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = build(source="image_folder", root=str(tmp_path), size=8)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 3
    samples = [ds[i] for i in range(3)]
    assert [s["label"] for s in samples] == [0, 0, 1]
    assert [s["key"] for s in samples] == ["cat/a.png", "cat/b.jpg", "dog/deep/c.png"]
    for s in samples:
        assert s["image"].shape == (3, 8, 8) and 0 <= s["image"].min() and s["image"].max() <= 1
    # a 16x48 image: shorter side -> 8, centre crop keeps only the green middle third
    assert torch.allclose(samples[2]["image"], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 8, 8), atol=0.02)
    shallow = build(source="image_folder", root=str(tmp_path), size=8, recursive=False)
    assert len(shallow) == 2


def test_image_folder_flat_has_no_labels(tmp_path):
    for name in ("x.png", "y.png"):
        save_rgb(tmp_path / name, solid(10, 10, (9, 9, 9)))
    ds = build(source="image_folder", root=str(tmp_path), size=4)
    assert ds.classes == [] and ds.class_names is None and "label" not in ds[0]


def test_image_folder_skips_corrupt_files_and_names_them(tmp_path):
    for i in range(3):
        save_rgb(tmp_path / f"good{i}.png", solid(12, 12, (10 * i, 50, 90)))
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    truncated = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    ds = build(source="image_folder", root=str(tmp_path), size=8)
    assert len(ds) == 6
    loader = make_loader(ds, batch_size=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    messages = " ".join(str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning))
    assert "bad.jpg" in messages and "empty.png" in messages and "truncated.jpg" in messages
    assert loader.skip_log.count == 3
    assert len(batches) == 1 and batches[0]["key"] == ["good0.png", "good1.png", "good2.png"]
    assert batches[0]["image"].shape == (3, 3, 8, 8)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="root is required"):
        build(source="image_folder")
    with pytest.raises(FileNotFoundError, match="not found"):
        build(source="image_folder", root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no images"):
        build(source="image_folder", root=str(tmp_path))
    with pytest.raises(ValueError, match="valid keys"):
        build(source="image_folder", root=str(tmp_path), colour="red")


# ----------------------------------------------------------------------------- seg / depth folders


def test_seg_folder_reads_masks_with_nearest_resize(tmp_path):
    mask = np.zeros((24, 36), np.uint8)
    mask[:, 12:24] = 1
    mask[:, 24:] = 2
    mask[0:2] = 255
    save_rgb(tmp_path / "images" / "a.jpg", solid(24, 36, (128, 64, 32)))
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")  # grey "L" mask
    palette = Image.fromarray(mask)
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)  # VOC-style "P" mask
    assert palette.mode == "P"
    palette.save(tmp_path / "masks" / "sub" / "b.png")
    save_rgb(tmp_path / "images" / "sub" / "b.png", solid(24, 36, (1, 2, 3)))
    save_rgb(tmp_path / "images" / "lonely.png", solid(24, 36, (1, 2, 3)))
    with pytest.warns(UserWarning, match="1 images have no target"):
        ds = build(source="seg_folder", root=str(tmp_path), size=12, num_classes=3)
    assert len(ds) == 2 and ds.num_classes == 3
    for i in range(2):
        s = ds[i]
        assert s["image"].shape == (3, 12, 12) and s["mask"].shape == (12, 12) and s["mask"].dtype == torch.long
        assert set(s["mask"].unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended classes
        # centre crop of 24x36 is columns 6..30: class 0 | 1 | 2 in equal thirds
        assert s["mask"][6].tolist() == [0] * 3 + [1] * 6 + [2] * 3
    (tmp_path / "val.txt").write_text("sub/b\n")
    listed = build(source="seg_folder", root=str(tmp_path), size=12, list_file="val.txt")
    assert len(listed) == 1 and listed[0]["key"] == "sub/b.png"
    with pytest.warns(UserWarning, match="no target"):
        reduced = build(source="seg_folder", root=str(tmp_path), size=12, reduce_zero_label=True)
    assert reduced[0]["mask"][6].tolist() == [255] * 3 + [0] * 6 + [1] * 3  # ADE: 0 -> ignore, k -> k-1
    assert reduced[0]["mask"][0].tolist() == [255] * 12


def test_seg_folder_skips_colour_and_mismatched_masks(tmp_path):
    save_rgb(tmp_path / "images" / "a.png", solid(10, 10, (5, 5, 5)))
    save_rgb(tmp_path / "masks" / "a.png", solid(10, 10, (1, 2, 3)))
    save_rgb(tmp_path / "images" / "b.png", solid(10, 10, (5, 5, 5)))
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "masks" / "b.png")
    ds = build(source="seg_folder", root=str(tmp_path), size=4)
    a, b = ds[0], ds[1]
    assert isinstance(a, SkippedSample) and "single-channel" in a.reason and a.key.endswith("a.png")
    assert isinstance(b, SkippedSample) and "(8, 10)" in b.reason


def test_depth_folder_reads_16bit_png_and_npy(tmp_path):
    mm = np.tile(np.array([1000, 2000, 3000, 4000], np.uint16), (8, 2))  # 8x8, millimetres
    save_rgb(tmp_path / "images" / "a.png", solid(8, 8, (10, 20, 30)))
    (tmp_path / "depth").mkdir()
    Image.fromarray(mm).save(tmp_path / "depth" / "a.png")
    save_rgb(tmp_path / "images" / "b.jpg", solid(8, 8, (10, 20, 30)))
    np.save(tmp_path / "depth" / "b.npy", np.full((8, 8), 2.5, np.float32))
    ds = build(source="depth_folder", root=str(tmp_path), size=4)
    a, b = ds[0], ds[1]
    assert a["depth"].shape == (4, 4) and a["depth"].dtype == torch.float32
    assert set(np.round(a["depth"].unique().numpy(), 4).tolist()) <= {1.0, 2.0, 3.0, 4.0}  # metres, nearest
    assert torch.allclose(b["depth"], torch.full((4, 4), 2.5))
    scaled = build(source="depth_folder", root=str(tmp_path), size=8, depth_scale=1.0)
    assert torch.equal(scaled[0]["depth"], torch.from_numpy(mm.astype(np.float32)))
    smooth = build(source="depth_folder", root=str(tmp_path), size=4, depth_resize="bilinear")
    assert smooth[0]["depth"].shape == (4, 4)
    with pytest.raises(ValueError, match="^depth_folder: depth_resize 'cubic' is not valid; valid: nearest, bilinear$"):
        build(source="depth_folder", root=str(tmp_path), depth_resize="cubic")


# ----------------------------------------------------------------------------- samples


def test_samples_are_rgb_of_the_asked_size():
    ds = build(source="samples", size=32, names=["astronaut", "camera", "logo"])
    assert len(ds) == 3 and [ds[i]["key"] for i in range(3)] == ["astronaut", "camera", "logo"]
    for i in range(3):
        image = ds[i]["image"]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01
    grey = ds[1]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert len(build(source="samples", size=8)) >= 15
    with pytest.raises(ValueError, match="valid names"):
        build(source="samples", names=["no_such_image"])


# ----------------------------------------------------------------------------- webdataset


def write_shard(path: Path, items: list[tuple[str, bytes, int | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, label in items:
            entries = [(f"{key}.jpg", image)] + ([(f"{key}.cls", str(label).encode())] if label is not None else [])
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_reads_shards_and_skips_bad_images(tmp_path):
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]
    write_shard(tmp_path / "shard-000.tar", [(f"s{i}", jpeg_bytes(solid(20, 30, colours[i])), i) for i in (0, 1)])
    write_shard(
        tmp_path / "shard-001.tar",
        [
            ("s2", jpeg_bytes(solid(20, 30, colours[2])), 2),
            ("broken", b"garbage bytes", 9),
            ("s3", jpeg_bytes(solid(30, 20, colours[3])), 3),
        ],
    )
    ds = build(source="webdataset", shards=str(tmp_path / "shard-{000..001}.tar"), size=8)
    loader = make_loader(ds, batch_size=2)
    with pytest.warns(UnreadableImageWarning, match="broken"):
        batches = list(loader)
    keys = sum((b["key"] for b in batches), [])
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert keys == ["s0", "s1", "s2", "s3"] and labels == [0, 1, 2, 3]
    assert loader.skip_log.count == 1
    image = torch.cat([b["image"] for b in batches])
    assert image.shape == (4, 3, 8, 8)
    assert torch.allclose(image[0].mean((1, 2)), torch.tensor(colours[0]) / 255.0, atol=0.05)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        make_loader(ds, batch_size=2, shuffle=True)
    with pytest.raises(FileNotFoundError, match="shards not found"):
        build(source="webdataset", shards=str(tmp_path / "shard-{000..002}.tar"))


def test_webdataset_splits_shards_between_workers(tmp_path):
    for s in range(4):
        write_shard(
            tmp_path / f"part-{s}.tar",
            [(f"p{s}_{i}", jpeg_bytes(solid(8, 8, (s * 60, i * 60, 0))), s) for i in range(2)],
        )
    ds = build(
        source="webdataset",
        shards=[str(tmp_path / f"part-{s}.tar") for s in range(4)],
        size=8,
        shuffle_buffer=4,
        shard_shuffle=True,
        seed=1,
    )
    keys = sum((b["key"] for b in make_loader(ds, batch_size=2, num_workers=2)), [])
    assert sorted(keys) == sorted(f"p{s}_{i}" for s in range(4) for i in range(2))  # each sample exactly once


# ----------------------------------------------------------------------------- hf


def test_hf_reads_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(solid(10, 14, (255, 0, 0))), Image.fromarray(solid(14, 10, (0, 0, 255)))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1]}, features=features)
    bad = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": None}], "label": [1]}, features=features
    )
    datasets.concatenate_datasets([ds, bad]).save_to_disk(str(tmp_path / "saved"))
    source = build(source="hf", name_or_path=str(tmp_path / "saved"), label_column="label", size=6)
    assert len(source) == 3 and source.classes == ["red", "blue"] and source.num_classes == 2
    first, second = source[0], source[1]
    assert first["image"].shape == (3, 6, 6) and first["label"] == 0 and second["label"] == 1
    assert torch.allclose(second["image"].mean((1, 2)), torch.tensor([0.0, 0.0, 1.0]), atol=0.02)
    assert isinstance(source[2], SkippedSample) and "[2]" in source[2].key
    with pytest.raises(ValueError, match="columns: image, label"):
        build(source="hf", name_or_path=str(tmp_path / "saved"), image_column="pixels")
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match="valid splits: validation"):
        build(source="hf", name_or_path=str(tmp_path / "dict"), split="train")


def test_every_source_is_registered():
    assert {"synthetic", "samples", "photos", "image_folder", "seg_folder", "depth_folder", "webdataset", "hf"} <= set(
        DATASETS.names()
    )

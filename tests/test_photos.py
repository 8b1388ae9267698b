"""The packaged real photographs: a fixed split, deterministic crops, clear errors."""

from __future__ import annotations

import pytest
import torch

from radiosharp.data.image_spec import load_image
from radiosharp.data.photos import CATALOGUE, HELDOUT, TRAIN, load_photo, split_names
from radiosharp.registry import DATASETS


def test_every_photo_decodes_to_rgb_and_the_split_is_disjoint():
    assert set(TRAIN).isdisjoint(HELDOUT)
    assert set(TRAIN) | set(HELDOUT) == set(CATALOGUE)
    assert split_names("all") == TRAIN + HELDOUT
    for name in CATALOGUE:
        pixels = load_photo(name)
        assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3 and min(pixels.shape[1:]) >= 190
        assert pixels.float().std() > 5, f"{name} is flat"  # a real picture, not a blank
    # distinct pictures (no photo is a copy of another)
    means = {tuple(load_photo(n).float().mean((1, 2)).round().tolist()) for n in CATALOGUE}
    assert len(means) == len(CATALOGUE)


def test_heldout_split_gives_centre_squares_at_any_size():
    for size in (64, 150):
        data = DATASETS.build("photos", size=size, split="heldout")
        assert len(data) == len(HELDOUT)
        sample = data[0]
        assert sample["key"] == HELDOUT[0]
        assert sample["image"].shape == (3, size, size)
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    # the centre square of the astronaut equals load_image's reading of it
    direct = load_image("photo:astronaut", 64)[0]
    assert torch.allclose(DATASETS.build("photos", size=64, split="heldout")[0]["image"], direct)


def test_random_crops_are_a_pure_function_of_seed_and_index():
    a = DATASETS.build("photos", size=48, split="train", crops=3, seed=5)
    b = DATASETS.build("photos", size=48, split="train", crops=3, seed=5)
    c = DATASETS.build("photos", size=48, split="train", crops=3, seed=6)
    assert len(a) == 3 * len(TRAIN)
    assert [a[i]["key"] for i in range(4)] == [f"{TRAIN[0]}#0", f"{TRAIN[0]}#1", f"{TRAIN[0]}#2", f"{TRAIN[1]}#0"]
    assert torch.equal(a[7]["image"], b[7]["image"])
    assert not torch.equal(a[7]["image"], c[7]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])  # two crops of one photo differ


@pytest.mark.parametrize(
    "options, message",
    [
        ({"split": "val"}, "split='val' is not valid; choose one of: train, heldout, all"),
        ({"names": ["lena"]}, "no photo named 'lena'"),
        ({"crops": 0}, "crops=0 must be a positive integer"),
        ({"scale": [0.0, 1.0]}, "0 < low <= high <= 1"),
        ({"scale": [0.5]}, "must be two numbers"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        DATASETS.build("photos", **options)

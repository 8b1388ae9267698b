"""Keypoint correspondence: the PCK metric, the pair sources (SPair-71k layout, synthetic warps) and the task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PixelTeacher
from PIL import Image
from torch import nn

import radiosharp
from radiosharp.contracts import TeacherOutput
from radiosharp.data.errors import DataError
from radiosharp.data.synthetic_pairs import SyntheticPairs, warp_image, warp_matrix, warp_points
from radiosharp.eval import metrics as M
from radiosharp.eval.features import FeatureStore
from radiosharp.eval.settings import EvalError, select_tasks
from radiosharp.eval.task import EvalContext
from radiosharp.eval.tasks.keypoints import match_keypoints
from radiosharp.registry import TASKS, BadOptionError

SIZE = 64
NOISE_PAIRS = {"source": "synthetic_pairs", "num_pairs": 16, "size": SIZE, "seed": 0, "texture": "noise", "margin": 0.1}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (black outside, as the warp's empty border)."""
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1).float() ** 2) / (2 * sigma**2))
    k, c = k / k.sum(), x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c, padding=(0, r))
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c, padding=(r, 0))


class ContentFeaturizer(nn.Module):
    """Full-resolution features that depend on the local content only, not on where it is: random
    Fourier features of each pixel's colour and its colour blurred at 1, 2 and 4 px (isotropic, so a
    rotation or a mild scaling of the image barely changes them). On a busy random texture the
    same content is at one place only, so the nearest neighbour of a source point is its warp."""

    def __init__(self, dim: int = 128, sigma: float = 5.0, scales: tuple[float, ...] = (1.0, 2.0, 4.0)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scales = scales
        self.w = sigma * torch.randn(dim, 3 * (1 + len(scales)), generator=g)
        self.b = 2 * math.pi * torch.rand(dim, generator=g)

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        content = torch.cat([x] + [_blur(x, s) for s in self.scales], 1)
        return TeacherOutput(None, torch.cos(torch.einsum("dc,bchw->bdhw", self.w, content) + self.b[:, None, None]))


class NoiseFeaturizer(nn.Module):
    """Independent Gaussian noise per image and pixel (full resolution): its nearest neighbour is a
    uniformly random target pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(1)

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(None, torch.randn(x.shape[0], 16, *x.shape[-2:], generator=self.g))


def _ctx(featurizer: nn.Module, data=None) -> EvalContext:
    default = data or {"source": "synthetic", "num_images": 4, "size": SIZE, "seed": 0}
    return EvalContext(featurizer, FeatureStore(featurizer, progress=False), default, None)


def _chance(dataset: SyntheticPairs, alpha: float) -> float:
    """Expected PCK of a uniformly random target pixel: the mean share of pixel centres within
    alpha * scale of each ground-truth keypoint."""
    c = torch.arange(dataset.size, dtype=torch.float64) + 0.5
    centres = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)  # (x, y)
    shares = []
    for pair in dataset.keypoint_pairs:
        d = torch.cdist(pair.trg_kps.double(), centres)
        shares.append((d <= alpha * pair.scale).double().mean(1))
    return float(torch.cat(shares).mean())


# ----------------------------------------------------------------------------- (a) known answer


def test_content_features_find_the_warped_points_and_noise_is_at_chance():
    good = TASKS.build("keypoints", data=NOISE_PAIRS).run(_ctx(ContentFeaturizer()))
    assert good["status"] == "ok" and set(good["metrics"]) == {"pck@0.05", "pck@0.1", "pck@0.15"}
    m = good["metrics"]
    assert m["pck@0.1"]["mean"] > 0.95 and m["pck@0.05"]["mean"] > 0.9
    assert m["pck@0.1"]["std"] == 0.0 and m["pck@0.1"]["values"] == [m["pck@0.1"]["mean"]]
    assert all(v["higher_is_better"] is True for v in m.values())

    dataset = radiosharp.build_dataset(NOISE_PAIRS)
    n = sum(len(p.trg_kps) for p in dataset.keypoint_pairs)
    bad = TASKS.build("keypoints", data=NOISE_PAIRS).run(_ctx(NoiseFeaturizer()))["metrics"]
    for alpha in (0.05, 0.1, 0.15):
        chance = _chance(dataset, alpha)
        sd = math.sqrt(chance * (1 - chance) / n)
        assert abs(bad[f"pck@{alpha:g}"]["mean"] - chance) < 4 * sd + 1e-3, (alpha, chance)
    assert bad["pck@0.1"]["mean"] < 0.1


def test_matches_are_exact_to_the_pixel_centre():
    """The nearest neighbour of the content features lands on the pixel whose centre is nearest the
    warped point: sub-pixel errors, so a half-pixel slip in the convention would show."""
    dataset = radiosharp.build_dataset(NOISE_PAIRS)
    featurizer = ContentFeaturizer()
    errors = []
    for i, pair in enumerate(dataset.keypoint_pairs[:6]):
        src, trg = (featurizer(dataset[2 * i + k]["image"][None]).features[0] for k in (0, 1))
        pred = match_keypoints(src, trg, pair.src_kps, SIZE)
        errors.append((pred - pair.trg_kps.double()).norm(dim=1))
    errors = torch.cat(errors)
    assert float(errors.median()) < 0.6 and float((errors <= 0.75).double().mean()) > 0.8


def test_match_keypoints_on_one_hot_codes():
    """Codes on a 4x4 grid of a 16 px image: a source keypoint anywhere in the cell holding code k
    (bilinear sampling at a cell centre is that cell) maps to the centre of the target cell holding k."""
    codes = torch.eye(16).view(16, 4, 4)  # code k at cell (k // 4, k % 4)
    perm = torch.tensor([5, 0, 15, 3, 8, 1, 12, 2, 10, 14, 4, 6, 7, 9, 11, 13])
    target = codes.flatten(1)[:, perm].view(16, 4, 4)  # target cell i holds code perm[i]
    src_kps = torch.tensor([[2.0, 2.0], [14.0, 6.0], [6.0, 10.0]])  # cells (0,0), (1,3), (2,1): codes 0, 7, 9
    pred = match_keypoints(codes, target, src_kps, 16, match_size=4)
    where = {int(perm[i]): i for i in range(16)}  # code -> its target cell
    expected = torch.tensor([[(where[k] % 4 + 0.5) * 4, (where[k] // 4 + 0.5) * 4] for k in (0, 7, 9)])
    assert torch.equal(pred, expected.double())


# ----------------------------------------------------------------------------- (b) the metric


def test_pck_on_hand_made_predictions():
    target = torch.full((4, 2), 10.0)
    pred = target + torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [9.0, 12.0]])  # distances 0, 5, 10, 15
    out = M.pck(pred, target, 100.0)
    assert out == {"pck@0.05": 0.5, "pck@0.1": 0.75, "pck@0.15": 1.0}  # the threshold itself counts
    per_point_scale = torch.tensor([100.0, 40.0, 100.0, 400.0])  # 5 > 0.1 * 40; 15 <= 0.05 * 400
    assert M.pck(pred, target, per_point_scale, alphas=(0.05, 0.1)) == {"pck@0.05": 0.5, "pck@0.1": 0.75}
    groups = torch.tensor([7, 3, 3, 3])  # pair 7: 1 of 1 right; pair 3: 0, 1 or 2 of 3 right
    by_pair = M.pck(pred, target, 100.0, groups=groups)
    assert by_pair["pck@0.05"] == pytest.approx((1 + 1 / 3) / 2) and by_pair["pck@0.1"] == pytest.approx(
        (1 + 2 / 3) / 2
    )
    with pytest.raises(ValueError, match="pck"):
        M.pck(pred, target[:3], 100.0)


# ----------------------------------------------------------------------------- synthetic warps


def test_synthetic_pairs_warp_image_and_points_alike():
    """The target image at a warped keypoint shows the source at the keypoint: on a coordinate-ramp
    image the colour there is the source point itself."""
    c = (torch.arange(SIZE) + 0.5) / SIZE
    ramp = torch.stack([c.expand(SIZE, SIZE), c[:, None].expand(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    matrix = warp_matrix(SIZE, 25.0, 1.2, (4.0, -3.0))
    points = torch.tensor([[20.3, 30.7], [40.0, 12.5], [32.0, 32.0]])
    grid = (2 * warp_points(points, matrix) / SIZE - 1).view(1, 1, -1, 2).float()
    seen = F.grid_sample(warp_image(ramp, matrix)[None], grid, align_corners=False)[0, :2, 0].T * SIZE
    torch.testing.assert_close(seen, points, atol=1e-3, rtol=0)
    assert torch.allclose(warp_points(points, warp_matrix(SIZE, 0.0, 1.0, (0.0, 0.0))), points)

    data = SyntheticPairs(num_pairs=3, size=SIZE, seed=2, num_keypoints=10, margin=0.1)
    again = SyntheticPairs(num_pairs=3, size=SIZE, seed=2, num_keypoints=10, margin=0.1)
    assert len(data) == 6 and data.image_keys[:2] == ["synthetic_pairs/2/0/src", "synthetic_pairs/2/0/trg"]
    for pair, same in zip(data.keypoint_pairs, again.keypoint_pairs, strict=True):
        assert torch.equal(pair.src_kps, same.src_kps) and len(pair.src_kps) == 10 and pair.scale == SIZE
        for kps in (pair.src_kps, pair.trg_kps):
            assert ((kps >= 0.1 * SIZE) & (kps < 0.9 * SIZE)).all()
    assert torch.equal(data[1]["image"], again[1]["image"]) and not torch.equal(data[0]["image"], data[1]["image"])
    with pytest.raises(DataError, match="texture"):
        SyntheticPairs(texture="plaid")


# ----------------------------------------------------------------------------- (c) the SPair-71k reader


def _ramp_image(path: Path, width: int, height: int, orientation: int = 1) -> None:
    """R = x / W, G = y / H at pixel centres, stored losslessly (PNG bytes; PIL reads by content),
    with an EXIF ``orientation`` tag."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width))], -1)
    rgb = np.concatenate([rgb, np.zeros((height, width, 1))], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, format="PNG", exif=exif)


def _pair_file(root: Path, split: str, pair_id: str, category: str, **record) -> None:
    folder = root / "PairAnnotation" / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pair_id}:{category}.json").write_text(json.dumps({"category": category, **record}))


@pytest.fixture
def spair(tmp_path: Path) -> Path:
    """cat: a.jpg 100x60 (W x H) -> b.jpg 40x80; dog: c.jpg 50x50 -> d.jpg 50x50 without a box."""
    root = tmp_path / "SPair-71k"
    for rel, w, h in (("cat/a.jpg", 100, 60), ("cat/b.jpg", 40, 80), ("dog/c.jpg", 50, 50), ("dog/d.jpg", 50, 50)):
        _ramp_image(root / "JPEGImages" / rel, w, h)
    _pair_file(
        root,
        "test",
        "000001-a-b",
        "cat",
        src_imname="a.jpg",
        trg_imname="b.jpg",
        src_kps=[[30, 10], [5, 5], [60, 40]],
        trg_kps=[[20, 40], [10, 10], [30, 50]],
        trg_bndbox=[10, 20, 30, 70],
    )
    _pair_file(
        root, "test", "000002-c-d", "dog", src_imname="c.jpg", trg_imname="d.jpg", src_kps=[[1, 2]], trg_kps=[[3, 4]]
    )
    return root


def _sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    size = image.shape[-1]
    grid = (2 * points / size - 1).view(1, 1, -1, 2).float()
    return F.grid_sample(image[None], grid, align_corners=False)[0, :2, 0].T


def test_spair_reader_maps_keypoints_with_the_image_geometry(spair: Path):
    pad = radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "size": 40, "category": "cat"})
    assert pad.image_keys == ["cat/a.jpg", "cat/b.jpg"] and len(pad.keypoint_pairs) == 1
    pair = pad.keypoint_pairs[0]
    # pad: a (100x60) -> 40x24 at top 8, scale 0.4; b (40x80) -> 20x40 at left 10, scale 0.5; index + 0.5
    torch.testing.assert_close(pair.src_kps, torch.tensor([[12.2, 12.2], [2.2, 10.2], [24.2, 24.2]]))
    torch.testing.assert_close(pair.trg_kps, torch.tensor([[20.25, 20.25], [15.25, 5.25], [25.25, 25.25]]))
    assert pair.scale == 25.0  # max(20, 50) * 0.5: the target box, not the image
    # the image content at a mapped keypoint is the original pixel there (the ramp encodes it)
    samples = {s["key"]: s["image"] for s in (pad[0], pad[1])}
    assert samples["cat/a.jpg"].shape == (3, 40, 40) and samples["cat/a.jpg"][:, :6].abs().max() == 0  # black pad
    original = torch.tensor([[30.5 / 100, 10.5 / 60], [60.5 / 100, 40.5 / 60]])
    torch.testing.assert_close(_sample(samples["cat/a.jpg"], pair.src_kps[[0, 2]]), original, atol=0.01, rtol=0)
    trg = torch.tensor([[20.5 / 40, 40.5 / 80], [30.5 / 40, 50.5 / 80]])
    torch.testing.assert_close(_sample(samples["cat/b.jpg"], pair.trg_kps[[0, 2]]), trg, atol=0.01, rtol=0)

    crop = radiosharp.build_dataset(
        {"source": "keypoint_pairs", "root": str(spair), "size": 30, "category": ["cat"], "fit": "crop"}
    )
    pair = crop.keypoint_pairs[0]
    # crop: a -> its centred 60x60 square (left 20), x 0.5; the point at x = 5 is outside: dropped
    torch.testing.assert_close(pair.src_kps, torch.tensor([[5.25, 5.25], [20.25, 20.25]]))
    assert len(pair.trg_kps) == 2 and pair.scale == pytest.approx(50 * 30 / 40)
    image = crop[0]["image"]
    torch.testing.assert_close(_sample(image, pair.src_kps), original, atol=0.01, rtol=0)

    both = radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "size": 40})
    assert [p.category for p in both.keypoint_pairs] == ["cat", "dog"] and len(both) == 4
    assert both.keypoint_pairs[1].scale == 40.0  # no box: the image side
    one = radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "max_pairs": 1})
    assert len(one.keypoint_pairs) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_spair_keypoints_follow_the_exif_turn_of_their_image(tmp_path: Path, orientation: int):
    """Keypoints are annotated on the stored pixels; the image is read upright, and so are they."""
    _ramp_image(tmp_path / "JPEGImages" / "cat" / "a.jpg", 40, 80, orientation)
    _ramp_image(tmp_path / "JPEGImages" / "cat" / "b.jpg", 40, 80)
    kps = [[20, 10], [5, 60], [33, 41]]
    _pair_file(tmp_path, "test", "1", "cat", src_imname="a.jpg", trg_imname="b.jpg", src_kps=kps, trg_kps=kps)
    data = radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(tmp_path), "size": 40})
    image = next(s["image"] for s in (data[0], data[1]) if s["key"] == "cat/a.jpg")
    stored = (torch.tensor(kps) + 0.5) / torch.tensor([40.0, 80.0])  # the ramp's colour at each stored point
    torch.testing.assert_close(_sample(image, data.keypoint_pairs[0].src_kps), stored, atol=0.01, rtol=0)


def test_spair_reader_errors_name_the_file(spair: Path):
    _pair_file(spair, "val", "000003-a-x", "cat", src_imname="a.jpg", trg_imname="x.jpg", src_kps=[], trg_kps=[])
    with pytest.raises(DataError, match=r"image .*cat/x\.jpg.* not found"):
        radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "split": "val"})
    with pytest.raises(DataError, match="pair folder not found: .*trn"):
        radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "split": "trn"})
    with pytest.raises(DataError, match="no usable pair of category"):
        radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "category": "bird"})
    _pair_file(spair, "bad", "000004-a-b", "cat", src_imname="a.jpg", trg_imname="b.jpg", src_kps=[[1, 1]])
    with pytest.raises(DataError, match=r"000004-a-b:cat\.json has no 'trg_kps'"):
        radiosharp.build_dataset({"source": "keypoint_pairs", "root": str(spair), "split": "bad"})


def test_task_runs_on_spair_folder_and_synthetic_scenes(spair: Path):
    data = {"source": "keypoint_pairs", "root": str(spair), "size": 32}
    result = TASKS.build("keypoints", data=data, average="pairs").run(_ctx(PixelTeacher(), data))
    assert result["status"] == "ok" and all(0 <= v["mean"] <= 1 for v in result["metrics"].values())
    scenes = TASKS.build("keypoints", match_size=16).run(_ctx(PixelTeacher()))  # default: synthetic_pairs
    assert scenes["status"] == "ok" and scenes["metrics"]["pck@0.1"]["std"] == 0.0
    plain = {"source": "synthetic", "num_images": 2, "size": 32}
    skipped = TASKS.build("keypoints", data=plain).run(_ctx(PixelTeacher(), plain))
    assert skipped["status"] == "skipped" and "keypoint pairs" in skipped["reason"]


# ----------------------------------------------------------------------------- (d) registration and options


def test_task_is_registered_and_checks_its_options():
    assert "keypoints" in TASKS.names() and "keypoint_pairs" in radiosharp.registry.DATASETS.names()
    task = TASKS.build("keypoints")
    assert task.metrics == {"pck@0.05": True, "pck@0.1": True, "pck@0.15": True}
    with pytest.raises(BadOptionError, match="unknown key 'alpha'.*valid keys: average, data, match_size"):
        TASKS.build("keypoints", alpha=0.1)
    with pytest.raises(EvalError, match="eval.tasks.keypoints.kk"):
        select_tasks({"keypoints": {"kk": 3}}, None)
    with pytest.raises(EvalError, match="average must be one of points, pairs"):
        select_tasks({"keypoints": {"average": "images"}}, None)

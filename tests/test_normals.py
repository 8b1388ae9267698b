"""Surface normals: normals from depth, the angular metrics and the ``normals`` probe task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.data.synthetic import SyntheticScenes, normals_from_depth
from radiosharp.eval import metrics as M
from radiosharp.eval.features import FeatureSet
from radiosharp.eval.task import EvalContext
from radiosharp.registry import TASKS

W = 64


def _rays(size: int = W) -> torch.Tensor:
    """[3,H,W] pixel rays (x/z, y/z, 1) of the pinhole that normals_from_depth assumes (f = W, centre)."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / size
    return torch.stack(
        [c.expand(size, size), c[:, None].expand(size, size), torch.ones(size, size, dtype=torch.float64)]
    )


def _degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos(F.cosine_similarity(a, b, dim=0).clamp(-1, 1)))


def test_normals_of_a_tilted_plane_are_its_normal():
    n = F.normalize(torch.tensor([0.3, -0.2, -1.0], dtype=torch.float64), dim=0)  # faces the camera
    d = float(n @ torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))  # the plane n.P = d through (0, 0, 5)
    depth = d / (n[:, None, None] * _rays()).sum(0)
    normals, valid = normals_from_depth(depth.float())
    assert normals.shape == (3, W, W) and valid.shape == (W, W)
    assert valid[1:-1, 1:-1].all() and not valid[0].any() and not valid[:, -1].any()  # border only
    err = _degrees(normals[:, valid].double(), n[:, None].expand(-1, int(valid.sum())))
    assert float(err.max()) < 1.0
    flat, ok = normals_from_depth(torch.full((2, 16, 16), 3.0))  # batched; fronto-parallel: (0, 0, -1)
    assert torch.allclose(flat[:, :, ok[0]].transpose(1, 2), torch.tensor([0.0, 0.0, -1.0]))


def test_normals_of_a_sphere_point_radially_and_edges_are_invalid():
    rays, centre, radius = _rays(), torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64), 4.0
    rc, rr = (rays * centre[:, None, None]).sum(0), rays.pow(2).sum(0)
    disc = rc**2 - rr * (centre.pow(2).sum() - radius**2)
    depth = torch.where(disc > 0, (rc - disc.clamp_min(0).sqrt()) / rr, torch.full_like(rc, math.inf))
    normals, valid = normals_from_depth(depth)
    hit = torch.isfinite(depth)
    assert valid.sum() > 0.8 * hit.sum() and not valid[~hit].any()
    radial = (rays * depth - centre[:, None, None]) / radius
    err = _degrees(normals[:, valid], radial[:, valid])
    assert float(err.mean()) < 1.0 and float(err.quantile(0.95)) < 2.0
    # a step in depth (a near square on a far wall) invalidates the pixels on either side of it
    step = torch.full((32, 32), 8.0)
    step[8:24, 8:24] = 2.0
    _, ok = normals_from_depth(step)
    assert not ok[7:9, 10].any() and not ok[23:25, 10].any() and ok[12, 12] and ok[4, 4]
    bad = step.clone()
    bad[4, 4] = float("nan")
    near = normals_from_depth(bad)[1]
    assert not near[4, 3:6].any() and not near[3:6, 4].any() and near[3, 3]  # it and its 4-neighbours


def test_normal_metrics_on_known_cases():
    n = torch.zeros(2, 3, 4, 4)
    n[:, 2] = 1
    same = M.normal_errors(n, n)
    assert same == {
        "angular_rmse": 0.0,
        "angular_mean": 0.0,
        "within_11_25": 100.0,
        "within_22_5": 100.0,
        "within_30": 100.0,
    }
    ortho = torch.zeros_like(n)
    ortho[:, 0] = 1
    out = M.normal_errors(ortho, n)
    assert out["angular_mean"] == pytest.approx(90.0) and out["angular_rmse"] == pytest.approx(90.0)
    assert out["within_11_25"] == out["within_22_5"] == out["within_30"] == 0.0
    # half the pixels right, half 20 degrees off; the invalid ones do not count
    tilt = n.clone()
    tilt[:, :, :2] = torch.tensor([math.sin(math.radians(20)), 0.0, math.cos(math.radians(20))])[:, None, None]
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 0, 0] = False
    mixed = M.normal_errors(3 * tilt, n, valid)  # predictions need not be unit length
    assert mixed["within_11_25"] == pytest.approx(100 * 16 / 30) and mixed["within_22_5"] == 100.0
    assert mixed["angular_rmse"] == pytest.approx(math.sqrt(14 / 30) * 20, rel=1e-6)
    with pytest.raises(ValueError, match="no valid"):
        M.normal_errors(n, n, torch.zeros(2, 4, 4, dtype=torch.bool))


class Store:
    """Stands in for FeatureStore: prepared features (and optionally samples) per data name."""

    def __init__(self, sets: dict[str, FeatureSet], datasets: dict[str, list] | None = None) -> None:
        self.sets, self.datasets = sets, datasets or {}

    def get(self, data, dense=True, summary=None):
        return self.sets[data["name"]]

    def dataset(self, data):
        return self.datasets.get(data["name"], [])


def _ctx(sets, datasets=None) -> EvalContext:
    return EvalContext(nn.Identity(), Store(sets, datasets), {"name": "train"}, {"name": "val"})


def _normal_scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-res unit normals [n,3,8,8] spread over the camera-facing hemisphere, targets [n,3,32,32])."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 8, 8, generator=g)
    low[:, 2] = -low[:, 2].abs()
    low = F.normalize(low, dim=1)
    return low, F.normalize(F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False), dim=1)


FIT = {"steps": 150, "lr": 5e-2, "seeds": 2, "batch_size": 8, "pixels_per_image": 256}


def test_normals_task_learns_linear_normals_and_not_random_features():
    low, target = _normal_scenes(32, seed=0)
    noise = torch.randn(32, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(32, 32, 32, dtype=torch.bool)

    def sets(feats):
        out = {}
        for name, index in (("train", torch.arange(24)), ("val", torch.arange(24, 32))):
            out[name] = FeatureSet(vectors=feats[index].mean((2, 3)), dense=feats[index])
            # as a feature cache that keeps the data's normals would hold them
            out[name].normals, out[name].normals_valid = target[index], valid[index]
        return out

    good = TASKS.build("normals", **FIT).run(_ctx(sets(torch.cat([low, noise], 1))))
    assert good["status"] == "ok" and set(good["metrics"]) == set(TASKS.build("normals").metrics)
    m = good["metrics"]
    assert len(m["angular_mean"]["values"]) == 2 and m["angular_mean"]["mean"] < 5.0
    assert m["within_11_25"]["mean"] > 95.0
    assert m["angular_rmse"]["higher_is_better"] is False and m["within_30"]["higher_is_better"] is True

    bad = TASKS.build("normals", **FIT).run(_ctx(sets(noise)))["metrics"]
    assert bad["within_11_25"]["mean"] < 30.0 and bad["angular_mean"]["mean"] > 25.0


def test_normals_task_reads_sample_normals_or_derives_them_from_depth_and_skips_without():
    low, target = _normal_scenes(16, seed=2)
    feats = torch.cat([low, torch.randn(16, 1, 8, 8)], 1)
    sets = {
        name: FeatureSet(vectors=feats[idx].mean((2, 3)), dense=feats[idx], keys=[f"s{i}" for i in idx.tolist()])
        for name, idx in (("train", torch.arange(12)), ("val", torch.arange(12, 16)))
    }
    samples = [{"key": f"s{i}", "normals": target[i]} for i in range(16)][::-1]  # matched by key, not order
    datasets = {"train": samples, "val": samples}
    fit = {**FIT, "seeds": 1}
    read = TASKS.build("normals", **fit).run(_ctx(sets, datasets))
    assert read["metrics"]["angular_mean"]["mean"] < 5.0

    # depth only: one tilted plane per image, features = the plane's normal in every cell
    g = torch.Generator().manual_seed(3)
    n = F.normalize(torch.cat([0.6 * torch.randn(32, 2, generator=g), -torch.ones(32, 1)], 1), dim=1)
    depth = (5 * n[:, 2])[:, None, None] / (n[:, :, None, None] * _rays(32).float()).sum(1)
    plane_feats = n[:, :, None, None].expand(-1, -1, 8, 8) + 0.01 * torch.randn(32, 3, 8, 8, generator=g)
    depth_sets = {
        name: FeatureSet(vectors=plane_feats[idx].mean((2, 3)), dense=plane_feats[idx], depth=depth[idx])
        for name, idx in (("train", torch.arange(24)), ("val", torch.arange(24, 32)))
    }
    derived = TASKS.build("normals", **{**fit, "steps": 400}).run(_ctx(depth_sets))
    assert derived["status"] == "ok" and derived["metrics"]["angular_mean"]["mean"] < 5.0

    bare = FeatureSet(vectors=feats.mean((2, 3)), dense=feats)
    skipped = TASKS.build("normals", **fit).run(_ctx({"train": bare, "val": bare}))
    assert skipped["status"] == "skipped" and "depth" in skipped["reason"]


def test_synthetic_normals_target_is_opt_in_and_derived_from_depth():
    plain = SyntheticScenes(num_images=2, size=32)[0]
    assert "normals" not in plain and "normals_valid" not in plain
    sample = SyntheticScenes(num_images=2, size=32, normals=True)[0]
    assert (
        all(torch.equal(sample[k], plain[k]) for k in ("image", "mask", "depth")) and sample["label"] == plain["label"]
    )
    normals, valid = normals_from_depth(sample["depth"])
    assert torch.equal(sample["normals"], normals) and torch.equal(sample["normals_valid"], valid)
    assert sample["normals"].shape == (3, 32, 32) and valid.float().mean() > 0.5
    unit = sample["normals"][:, valid].norm(dim=0)
    assert torch.allclose(unit, torch.ones_like(unit), atol=1e-5) and (sample["normals"][2, valid] < 0).all()


def test_the_feature_cache_keeps_the_samples_normals():
    """A source that carries normals has them cached beside the features, so the task reads them
    from the cache (no second pass over the samples)."""
    from radiosharp.builders import build_teacher
    from radiosharp.eval.features import FeatureStore

    teacher = build_teacher({"family": "dinov2", "size": "tiny"})
    data = {"source": "synthetic", "num_images": 3, "size": 56, "seed": 0, "normals": True}
    feats = FeatureStore(teacher, batch_size=2, progress=False).get(data)
    scenes = SyntheticScenes(num_images=3, size=56, seed=0, normals=True)
    assert feats.normals.shape == (3, 3, 56, 56) and feats.normals_valid.dtype == torch.bool
    for i in range(3):
        torch.testing.assert_close(feats.normals[i], scenes[i]["normals"].float())
        assert torch.equal(feats.normals_valid[i], scenes[i]["normals_valid"].bool())
    assert feats.subset(torch.tensor([2])).normals.shape == (1, 3, 56, 56)

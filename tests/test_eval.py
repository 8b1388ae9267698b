"""Eval: metric functions, probes that must learn known answers, MTL gain, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.contracts import StudentOutput, TeacherOutput
from radiosharp.eval import metrics as M
from radiosharp.eval.features import FeatureSet, split_output
from radiosharp.eval.mtl import metric_delta, mtl_gain
from radiosharp.eval.probes import fit_depth_probe, fit_segmentation_probe, knn_predict, predict_segmentation
from radiosharp.eval.settings import EvalError, parse_settings, select_tasks
from radiosharp.eval.task import EvalContext
from radiosharp.registry import DATASETS, TASKS

# ----------------------------------------------------------------------------- MTL gain


def ok(**metrics):
    return {"status": "ok", "metrics": {k: {"mean": v, "higher_is_better": hib} for k, (v, hib) in metrics.items()}}


def test_mtl_gain_known_numbers():
    base = {
        "knn": ok(top1=(0.40, True)),
        "depth": ok(rmse=(1.0, False), delta1=(0.90, True)),
        "zeroshot": ok(top1=(0.2, True)),
    }
    run = {
        "knn": ok(top1=(0.50, True)),
        "depth": ok(rmse=(0.8, False), delta1=(0.90, True)),
        "zeroshot": {"status": "skipped", "reason": "no text tower"},
    }
    gain = mtl_gain(run, base)
    assert gain["metric_deltas"]["knn/top1"] == pytest.approx(25.0)
    assert gain["metric_deltas"]["depth/rmse"] == pytest.approx(20.0)  # lower is better: 20 % less error
    assert gain["metric_deltas"]["depth/delta1"] == pytest.approx(0.0)
    assert gain["task_deltas"] == pytest.approx({"knn": 25.0, "depth": 10.0})
    assert gain["delta_m"] == pytest.approx(17.5)
    assert "zeroshot" in gain["excluded"] and "no text tower" in gain["excluded"]["zeroshot"]


def test_mtl_gain_worse_run_is_negative_and_degenerate_baselines_are_excluded():
    base = {"depth": ok(rmse=(2.0, False)), "semseg": ok(miou=(0.0, True), miou_small=(0.5, True))}
    run = {"depth": ok(rmse=(3.0, False)), "semseg": ok(miou=(0.3, True), miou_small=(0.25, True))}
    gain = mtl_gain(run, base)
    assert gain["metric_deltas"]["depth/rmse"] == pytest.approx(-50.0)
    assert "semseg/miou" in gain["excluded"]  # baseline 0: no relative change
    assert gain["task_deltas"]["semseg"] == pytest.approx(-50.0)
    assert gain["delta_m"] == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="baseline"):
        metric_delta(1.0, 0.0, True)
    assert mtl_gain({"knn": {"status": "skipped"}}, {"knn": ok(top1=(1, True))})["delta_m"] is None


# ----------------------------------------------------------------------------- metric functions


def test_fidelity_of_exact_prediction_is_inf_and_of_the_mean_is_one():
    y = torch.randn(2, 4, 6, 6)
    assert math.isinf(float(M.fidelity(y, y.clone())))
    mean = y.mean((0, 2, 3), keepdim=True).expand_as(y)
    assert float(M.fidelity(y, mean)) == pytest.approx(1.0, rel=1e-5)
    noisy = y + 0.1 * torch.randn_like(y)
    assert float(M.fidelity(y, noisy)) > 10
    mask = torch.zeros(2, 1, 6, 6)
    mask[..., :3, :] = 1
    bad_outside = torch.where(mask.bool(), y, y + 100)
    assert math.isinf(float(M.fidelity(y, bad_outside, mask)))  # only valid cells count


def test_total_variation():
    assert float(M.total_variation(torch.full((1, 3, 5, 5), 2.0))) == 0.0
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 4, 5)  # +1 per column
    assert float(M.total_variation(ramp)) == pytest.approx(4 * 4 / 20)


def test_mmd_same_distribution_near_zero_shifted_positive():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = torch.randn(256, 8, generator=g)
    assert abs(float(M.mmd_rbf(x, x))) < 0.02
    assert abs(float(M.mmd_rbf(x, y))) < 0.02
    assert float(M.mmd_rbf(x, y + 2.0)) > 0.2
    assert M.mmd_rbf(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8)).ndim == 0  # maps as token sets


def test_crf_penalises_features_that_change_where_the_image_does_not():
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0
    aligned = image[:, :1].repeat(1, 4, 1, 1)  # features follow the image edge
    noisy = aligned + torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(M.crf_loss(torch.ones(1, 4, 16, 16), image)) == 0.0
    assert float(M.crf_loss(aligned, image)) < float(M.crf_loss(noisy, image))


def test_small_segments_and_miou():
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[0, 2:4, 2:4] = 1  # 4 px = 0.4 % of the image: small
    mask[0, 10:30, 10:30] = 2  # large
    small = M.small_segment_pixels(mask, 0.01)
    assert small.sum() == 4 and small[0, 2:4, 2:4].all()
    pred = mask.clone()
    pred[0, 2:4, 2:4] = 0  # the small object is missed
    miou, iou = M.mean_iou(M.confusion_matrix(pred, mask, 3))
    miou_small, _ = M.mean_iou(M.confusion_matrix(pred, mask, 3, where=small))
    assert iou[2] == 1.0 and miou > 0.6
    assert miou_small == 0.0


def test_depth_errors():
    g = torch.full((2, 4, 4), 2.0)
    assert M.depth_errors(g, g) == {"rmse": 0.0, "absrel": 0.0, "delta1": 1.0, "delta2": 1.0, "delta3": 1.0}
    out = M.depth_errors(g * 2, g)
    assert out["rmse"] == pytest.approx(2.0) and out["absrel"] == pytest.approx(1.0)
    assert out["delta1"] == out["delta2"] == out["delta3"] == 0.0  # ratio 2 > 1.25^3
    out = M.depth_errors(g * 1.8, g)
    assert out["delta1"] == out["delta2"] == 0.0 and out["delta3"] == 1.0  # 1.25^2 < 1.8 < 1.25^3
    half = g.clone()
    half[0] = 2.6  # ratio 1.3 on half the pixels
    assert M.depth_errors(half, g)["delta1"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- probes learn known answers


def _class_grid(n: int, grid: int, size: int, classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (n, 1, grid, grid), generator=g).float()
    return F.interpolate(cells, size=(size, size), mode="nearest")[:, 0].long(), cells[:, 0].long()


def test_knn_weights_votes_by_temperature():
    train = torch.tensor([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert int(knn_predict(train, labels, query, k=3, temperature=0.07)) == 0  # one close vote wins
    assert int(knn_predict(train, labels, query, k=3, temperature=100.0)) == 1  # ~ plain majority


def test_knn_learns_prototypes_and_random_is_chance():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(5, 32, generator=g)
    ytr, yva = torch.randint(0, 5, (100,), generator=g), torch.randint(0, 5, (60,), generator=g)
    xtr = protos[ytr] + 0.3 * torch.randn(100, 32, generator=g)
    xva = protos[yva] + 0.3 * torch.randn(60, 32, generator=g)
    assert M.top1_accuracy(knn_predict(xtr, ytr, xva), yva) > 0.95
    rtr, rva = torch.randn(100, 32, generator=g), torch.randn(60, 32, generator=g)
    assert M.top1_accuracy(knn_predict(rtr, ytr, rva), yva) < 0.45


def test_probe_read_at_pixels_equals_the_upsampled_map():
    from radiosharp.eval.probes import DenseLinearProbe

    probe = DenseLinearProbe(torch.zeros(5), torch.ones(5), 3)
    feats = torch.randn(2, 5, 4, 6)
    full = probe(feats, (13, 19))  # non-integer scale, with borders
    rows, cols = torch.meshgrid(torch.arange(13), torch.arange(19), indexing="ij")
    pixels = torch.stack([rows.flatten(), cols.flatten()], -1).expand(2, -1, -1)
    sampled = probe.at_pixels(feats, (13, 19), pixels)[:, :, 0]
    assert torch.allclose(sampled, full.flatten(2), atol=1e-5)


def test_segmentation_probe_learns_mask_encoding_features_and_not_random_ones():
    masks, cells = _class_grid(32, 8, 32, 4, seed=0)
    g = torch.Generator().manual_seed(1)
    onehot = F.one_hot(cells, 4).permute(0, 3, 1, 2).float()
    feats = torch.cat([3 * onehot, torch.randn(32, 4, 8, 8, generator=g)], 1)
    args = dict(steps=120, lr=5e-2, batch_size=8, seed=0)
    probe = fit_segmentation_probe(feats[:24], masks[:24], 4, pixels_per_image=256, **args)  # sampled pixels
    miou, _ = M.mean_iou(M.confusion_matrix(predict_segmentation(probe, feats[24:], (32, 32)), masks[24:], 4))
    assert miou > 0.8
    noise = torch.randn(32, 8, 8, 8, generator=g)
    probe = fit_segmentation_probe(noise[:24], masks[:24], 4, **args)
    miou_rand, _ = M.mean_iou(M.confusion_matrix(predict_segmentation(probe, noise[24:], (32, 32)), masks[24:], 4))
    assert miou_rand < 0.4


def test_depth_probe_learns_linear_depth_and_not_random_features():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 6, 8, 8, generator=g)
    w = torch.randn(6, generator=g)
    lowres = (feats * w.view(1, -1, 1, 1)).sum(1, keepdim=True) + 10.0
    depth = F.interpolate(lowres, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    std = float(depth.std())
    args = dict(steps=150, lr=5e-2, batch_size=8, seed=0)
    probe = fit_depth_probe(feats[:24], depth[:24], pixels_per_image=256, **args)  # sampled pixels
    good = M.depth_errors(probe.predict(feats[24:], (32, 32)), depth[24:])
    assert good["rmse"] < 0.1 * std and good["delta1"] > 0.99
    noise = torch.randn(32, 6, 8, 8, generator=g)
    probe = fit_depth_probe(noise[:24], depth[:24], **args)
    bad = M.depth_errors(probe.predict(noise[24:], (32, 32)), depth[24:])
    assert bad["rmse"] > 0.7 * std


def test_binned_depth_probe_learns_linear_depth_and_not_random_features():
    from radiosharp.eval.probes import expected_depth, fit_binned_depth_probe, silog_loss

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 6, 8, 8, generator=g)
    w = torch.randn(6, generator=g)
    lowres = (feats * w.view(1, -1, 1, 1)).sum(1, keepdim=True) * 0.3 + 4.0
    depth = F.interpolate(lowres, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].clamp_min(0.5)
    args = dict(steps=200, lr=5e-2, batch_size=8, seed=0, bins=64)
    probe = fit_binned_depth_probe(feats[:24], depth[:24], pixels_per_image=256, **args)
    assert probe.centres.min() == pytest.approx(float(depth[:24].min())) and len(probe.centres) == 64
    good = M.depth_errors(probe.predict(feats[24:], (32, 32)), depth[24:])
    assert good["delta1"] > 0.97 and good["absrel"] < 0.06
    noise = torch.randn(32, 6, 8, 8, generator=g)
    bad = M.depth_errors(
        fit_binned_depth_probe(noise[:24], depth[:24], **args).predict(noise[24:], (32, 32)), depth[24:]
    )
    assert bad["absrel"] > 2 * good["absrel"] and bad["rmse"] > 2 * good["rmse"]
    # the head's arithmetic: one-hot logits give that bin's centre; SILog ignores a global scale
    centres = torch.tensor([1.0, 2.0, 3.0])
    logits = torch.tensor([[-50.0, 50.0, -50.0]]).view(1, 3, 1, 1)
    assert expected_depth(logits, centres).item() == pytest.approx(2.0)
    target, ok = torch.full((1, 4), 2.0), torch.ones(1, 4, dtype=torch.bool)
    assert silog_loss(target * 3, target, ok, variance_focus=1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert silog_loss(target * 3, target, ok, variance_focus=0.85).item() > 0.1


# ----------------------------------------------------------------------------- tasks on cached features


class FixedStore:
    """Stands in for FeatureStore: returns prepared features per data name."""

    def __init__(self, sets: dict[str, FeatureSet]) -> None:
        self.sets, self.calls = sets, []

    def get(self, data, dense=True, summary=None):
        self.calls.append((data["name"], summary))
        return self.sets[data["name"]]

    def dataset(self, data):
        raise AssertionError("not used")


def _ctx(sets, featurizer=None, kind="student") -> EvalContext:
    return EvalContext(featurizer or nn.Identity(), FixedStore(sets), {"name": "train"}, {"name": "val"}, kind)


def _labelled(n: int, protos: torch.Tensor, seed: int, names=None) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(protos), (n,), generator=g)
    vecs = protos[labels] + 0.2 * torch.randn(n, protos.shape[1], generator=g)
    return FeatureSet(vectors=vecs, labels=labels, class_names=names)


def test_knn_task_result_and_skip_without_labels():
    protos = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    task = TASKS.build("knn", k=5)
    result = task.run(_ctx({"train": _labelled(80, protos, 1), "val": _labelled(40, protos, 2)}))
    assert result["status"] == "ok"
    top1 = result["metrics"]["top1"]
    assert top1["mean"] > 0.95 and top1["higher_is_better"] is True and top1["std"] == 0.0
    no_labels = FeatureSet(vectors=torch.randn(10, 16))
    skipped = task.run(_ctx({"train": no_labels, "val": no_labels}))
    assert skipped["status"] == "skipped" and "label" in skipped["reason"]


def test_semseg_and_depth_tasks_report_mean_and_std_over_seeds():
    masks, cells = _class_grid(24, 8, 32, 3, seed=3)
    feats = torch.cat([3 * F.one_hot(cells, 3).permute(0, 3, 1, 2).float(), torch.randn(24, 2, 8, 8)], 1)
    depth = 1.0 + cells.float()
    depth = F.interpolate(depth[:, None], size=(32, 32), mode="nearest")[:, 0]
    full = FeatureSet(vectors=feats.mean((2, 3)), dense=feats, masks=masks, depth=depth)
    sets = {"train": full.subset(torch.arange(18)), "val": full.subset(torch.arange(18, 24))}
    seg = TASKS.build("semseg", steps=60, lr=5e-2, seeds=2, batch_size=6).run(_ctx(sets))
    assert set(seg["metrics"]) == {"miou", "miou_small"}
    assert len(seg["metrics"]["miou"]["values"]) == 2 and seg["metrics"]["miou"]["mean"] > 0.7
    dep = TASKS.build("depth", steps=60, lr=5e-2, seeds=2, batch_size=6).run(_ctx(sets))
    assert dep["metrics"]["rmse"]["higher_is_better"] is False and dep["metrics"]["delta1"]["higher_is_better"]
    assert dep["metrics"]["delta1"]["mean"] > 0.5


class TextTowerFeaturizer(nn.Module):
    """A CLIP-like stand-in whose text embedding of 'class i' is prototype i."""

    def __init__(self, protos: torch.Tensor) -> None:
        super().__init__()
        self.protos = protos

    def tokenize(self, texts):
        return torch.tensor([int(t.split("class")[1].rstrip(".")) for t in texts])

    def encode_text(self, tokens):
        return self.protos[tokens]


def test_zeroshot_with_text_tower_and_skip_without():
    protos = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    names = [f"class{i}" for i in range(4)]
    sets = {"val": _labelled(40, protos, 5, names), "train": _labelled(4, protos, 6, names)}
    task = TASKS.build("zeroshot", templates=["{}."])
    result = task.run(_ctx(sets, TextTowerFeaturizer(protos)))
    assert result["metrics"]["top1"]["mean"] > 0.95
    skipped = task.run(_ctx(sets))
    assert skipped["status"] == "skipped" and "text tower" in skipped["reason"]


def test_fidelity_task_skips_without_upsampler_and_uses_fidelity_eval(monkeypatch):
    import radiosharp.multiview as multiview

    task = TASKS.build("fidelity", seeds=2, num_images=2)
    skipped = task.run(_ctx({}))
    assert skipped["status"] == "skipped" and "upsampled teacher" in skipped["reason"]

    class Up(nn.Module):
        teacher, upsampler = nn.Identity(), nn.Identity()

    seen = []

    def fake_eval(up, images, generator=None):
        seen.append(images.shape)
        return {"fidelity": 3.0 + generator.initial_seed(), "tv": 0.5, "other": 1}

    class Store(FixedStore):
        def dataset(self, data):
            return [{"image": torch.rand(3, 8, 8)} for _ in range(3)]

    monkeypatch.setattr(multiview, "fidelity_eval", fake_eval, raising=False)
    ctx = EvalContext(Up(), Store({}), {"name": "train"}, {"name": "val"}, "upsampler")
    result = task.run(ctx)
    assert result["metrics"]["fidelity"]["values"] == [3.0, 4.0]
    assert result["metrics"]["tv"]["higher_is_better"] is False and "other" not in result["metrics"]
    assert seen[0] == (2, 3, 8, 8)


# ----------------------------------------------------------------------------- feature adapter and settings


def test_split_output_teacher_and_student():
    feats = torch.randn(2, 8, 3, 3)
    glob, dense = split_output(TeacherOutput(None, feats))
    assert torch.allclose(glob, feats.mean((2, 3))) and dense is feats
    summ = torch.randn(2, 5)
    assert split_output(TeacherOutput(summ, feats))[0] is summ
    out = StudentOutput(summary={"clip": summ}, features={"clip": torch.randn(2, 4, 3, 3)}, backbone=feats)
    glob, dense = split_output(out)
    assert torch.allclose(glob, feats.mean((2, 3))) and dense is feats
    glob, dense = split_output(out, summary="clip", dense="clip")
    assert glob is summ and dense.shape[1] == 4
    with pytest.raises(ValueError, match="valid: backbone, clip"):
        split_output(out, summary="siglip")


def test_settings_defaults_and_errors():
    settings = parse_settings({})
    assert list(settings.task_options("student")) == ["knn", "semseg", "depth"]
    assert list(settings.task_options("upsampler")) == ["knn", "semseg", "depth", "fidelity"]
    assert settings.data["source"] == "synthetic" and settings.data["seed"] != settings.val_data["seed"]
    assert parse_settings({"tasks": ["knn"]}).tasks == {"knn": {}}
    with pytest.raises(EvalError, match="unknown key 'eval.nonsense'"):
        parse_settings({"nonsense": 1})
    with pytest.raises(EvalError, match="valid eval tasks: depth, fidelity, keypoints, knn"):
        select_tasks({"knm": {}}, None)
    with pytest.raises(EvalError, match="eval.tasks.knn.kk"):
        select_tasks({"knn": {"kk": 3}}, None)


# ----------------------------------------------------------------------------- the CLI on tiny runs

PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9], [0.9, 0.9, 0.1]])


class BlockScenes(torch.utils.data.Dataset):
    """Test-only data: a 4x4 grid of class cells, coloured per class, depth = 1 + class."""

    class_names = ["red", "green", "blue", "yellow"]
    num_classes = 4

    def __init__(self, num_images: int = 24, size: int = 32, seed: int = 0) -> None:
        self.n, self.size, self.seed = num_images, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 10_000 + i)
        cells = torch.randint(0, 4, (1, 1, 4, 4), generator=g).float()
        mask = F.interpolate(cells, size=(self.size, self.size), mode="nearest")[0, 0].long()
        image = (PALETTE[mask].permute(2, 0, 1) + 0.05 * torch.randn(3, self.size, self.size, generator=g)).clamp(0, 1)
        return {
            "image": image,
            "mask": mask,
            "depth": 1.0 + mask.float(),
            "label": int(mask.flatten().mode().values),
            "key": f"{self.seed}-{i}",
        }


@pytest.fixture
def blocks_source(monkeypatch):
    """Register the test-only source for one test (removed after, so other tests see the real registry)."""
    DATASETS.names()  # load the real sources first
    monkeypatch.setitem(DATASETS._entries, "eval_test_blocks", BlockScenes)


LOADS = []


def _counting_student_loader(run_dir: Path, text_towers: bool = False) -> nn.Module:
    from radiosharp.student_io import load_student

    LOADS.append(run_dir)
    return load_student(run_dir, text_towers=text_towers)


RECIPE = """kind: distill
eval:
  tasks:
    knn: {k: 5}
    semseg: {steps: 40, lr: 0.05, seeds: 2, batch_size: 8}
    depth: {steps: 40, lr: 0.05, seeds: 2, batch_size: 8}
    zeroshot: {}
  data: {source: eval_test_blocks, num_images: 24, size: 64, seed: 0}
  val_data: {source: eval_test_blocks, num_images: 8, size: 64, seed: 1}
"""


@pytest.fixture
def two_runs(tmp_path, monkeypatch, blocks_source):
    """Two exported tiny RADIO students (different seeds) with an eval section in recipe.yaml."""
    import radiosharp
    from radiosharp.eval.runs import RUN_LOADERS
    from radiosharp.student_io import save_student

    monkeypatch.setitem(RUN_LOADERS, "student", _counting_student_loader)
    runs = []
    for name, seed in (("base", 0), ("new", 1)):
        run = tmp_path / name
        student = radiosharp.build_student(
            {"name": "radio", "size": "tiny", "seed": seed}, teachers={"clip": {"summary_dim": 16, "feature_dim": 24}}
        )
        save_student(run, student)
        (run / "recipe.yaml").write_text(RECIPE)
        runs.append(run)
    LOADS.clear()
    return runs


def test_mtl_cli_writes_table_json_report_and_reuses_cache(two_runs, tmp_path, capsys):
    from radiosharp.eval.cli import main

    base, new = two_runs
    assert main(["mtl", str(new), "--baseline", str(base), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in out["runs"]] == [str(base), str(new)]
    new_row = out["runs"][1]
    assert new_row["tasks"]["semseg"]["metrics"]["miou"]["higher_is_better"] is True
    assert new_row["tasks"]["zeroshot"]["status"] == "skipped"
    assert "zeroshot" in new_row["mtl"]["excluded"]
    assert set(new_row["mtl"]["task_deltas"]) == {"knn", "semseg", "depth"}
    assert isinstance(new_row["mtl"]["delta_m"], float)
    for run in (base, new):
        cached = json.loads((run / "eval" / "metrics.json").read_text())
        assert set(cached["tasks"]) == {"knn", "semseg", "depth", "zeroshot"}
    report = Path(out["report"])
    assert report == new / "eval" / "mtl_report.md" and "Δm" in report.read_text()
    assert len(LOADS) == 2

    assert main(["mtl", str(new), "--baseline", str(base), "--no-progress", "--report", str(tmp_path / "r.md")]) == 0
    text = capsys.readouterr().out
    assert len(LOADS) == 2  # cached: no featurizer was loaded again
    lines = text.splitlines()
    assert "semseg/miou ↑" in lines[0] and "depth/rmse ↓" in lines[0] and "Δm %" in lines[0]
    assert lines[2].startswith(str(base)) and "baseline" in lines[2]
    assert lines[3].startswith(str(new)) and "skipped" in lines[3]
    assert (tmp_path / "r.md").is_file()

    assert main(["mtl", str(new), "--baseline", str(base), "--tasks", "knn", "--force", "--no-progress"]) == 0
    assert len(LOADS) == 4 and "semseg" not in capsys.readouterr().out


def test_cli_missing_run_or_export_fails_clearly(two_runs, tmp_path, capsys):
    from radiosharp.eval.cli import main

    base, _ = two_runs
    missing = tmp_path / "nope"
    assert main(["mtl", str(missing), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert "run folder not found" in err and str(missing) in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no exported model" in err
    assert not (base / "eval").exists()  # nothing evaluated or written


class ConvTeacher(nn.Module):
    """A patch-conv featurizer that records the input sizes it saw."""

    patch_size, native_size = 8, 48

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 8, stride=8)
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return TeacherOutput(None, self.embed(images))


def test_feature_store_extracts_once_per_data_config_at_the_native_size(blocks_source):
    from radiosharp.eval.features import FeatureStore

    model = ConvTeacher()
    store = FeatureStore(model, batch_size=5, progress=False)
    data = {"source": "eval_test_blocks", "num_images": 12, "size": 32}
    first = store.get(data, dense=False)  # data with masks: dense maps are kept anyway
    assert first.dense is not None and first.vectors.shape == (12, 6) and store.passes == 1
    full = store.get(data)
    assert full is first and store.get(data, dense=False) is full and store.passes == 1
    assert full.dense.shape == (12, 6, 6, 6) and full.masks.shape == (12, 32, 32)
    assert full.labels.shape == (12,) and full.class_names == BlockScenes.class_names
    assert set(model.sizes) == {(48, 48)}  # images resized to the featurizer's native size
    assert torch.equal(full.masks[0], BlockScenes(12, 32)[0]["mask"])
    store.get({**data, "seed": 1})
    assert store.passes == 2


@pytest.mark.slow
def test_default_suite_on_the_synthetic_benchmark(tmp_path, capsys):
    """`python -m radiosharp.eval run` with no eval section: knn, semseg, depth on synthetic data."""
    import radiosharp
    from radiosharp.eval.cli import main
    from radiosharp.student_io import save_student

    if "synthetic" not in DATASETS:
        pytest.skip("the synthetic data source is not available")
    student = radiosharp.build_student(
        {"name": "radio", "size": "tiny"}, teachers={"clip": {"summary_dim": 16, "feature_dim": 24}}
    )
    save_student(tmp_path / "run", student)
    assert main(["run", str(tmp_path / "run"), "--json", "--no-progress"]) == 0
    tasks = json.loads(capsys.readouterr().out)["runs"][0]["tasks"]
    assert list(tasks) == ["knn", "semseg", "depth"]
    assert all(t["status"] == "ok" for t in tasks.values())
    assert len(tasks["semseg"]["metrics"]["miou"]["values"]) == 3

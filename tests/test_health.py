"""Student health diagnostics (``radiosharp.eval.health``, ``python -m radiosharp.eval health``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import radiosharp
from radiosharp.contracts import StudentOutput
from radiosharp.eval import health
from radiosharp.images import resize

TINY_TEACHER = {"family": "dinov2", "size": "tiny"}


class TeacherAsStudent(nn.Module):
    """A "student" that is its teacher: the teacher's native-size features resized to the student grid."""

    def __init__(self, teacher: nn.Module, name: str = "dinov2") -> None:
        super().__init__()
        self.teacher, self.name = teacher, name
        self.teacher_names = [name]
        self.patch_size = int(teacher.patch_size)

    def forward(self, images: torch.Tensor) -> StudentOutput:
        native = int(self.teacher.native_size)
        features = self.teacher(resize(images, (native, native))).features
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        features = resize(features, grid)
        return StudentOutput(summary={}, features={self.name: features}, backbone=features)


@pytest.fixture(scope="module")
def teacher():
    return radiosharp.build_teacher(TINY_TEACHER)


def test_mode_switch_curve_of_a_student_equal_to_its_teacher_is_flat_at_zero(teacher):
    student = TeacherAsStudent(teacher)
    report, _ = health.student_health(
        student, {"dinov2": teacher}, health.image_source("synthetic", 2), sizes=(56, 112, 168)
    )
    curve = report["mode_switch"]["curves"]["dinov2"]
    assert curve["sizes"] == [56, 112, 168]
    assert max(curve["mse_teacher"]) < 1e-10 and max(curve["nmse_teacher"]) < 1e-10
    # the other curve is a real measurement: zero at the lowest size only
    assert curve["mse_low_res"][0] == 0.0 and min(curve["mse_low_res"][1:]) > 0.0
    assert report["mode_switch"]["skipped"] == {}
    assert set(report["seams"]["per_size"]["168"]) == {"backbone", "dinov2", "pixels"}


def _smooth(grid: int = 24, channels: int = 8, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0, 1, grid), torch.linspace(0, 1, grid), indexing="ij")
    phases = torch.rand(batch, channels, 1, 1, generator=gen) * 6.28
    field = torch.sin(3 * x + phases) + torch.cos(2 * y - phases)
    return field + 0.1 * torch.randn(batch, channels, grid, grid, generator=gen)


def _tile_offsets(grid: int, tiles: int, channels: int = 8) -> torch.Tensor:
    """A constant per tile (a t x t grid of tiles), different in every tile and channel."""
    gen = torch.Generator().manual_seed(1)
    values = 2.0 * torch.randn(channels, tiles, tiles, generator=gen)
    index = torch.arange(grid) * tiles // grid
    return values[:, index][:, :, index][None]


def test_planted_seam_is_detected_and_smooth_features_read_one():
    smooth = _smooth()
    ratios = health.seam_ratios(smooth)
    assert all(0.8 < ratios[str(t)] < 1.25 for t in (2, 3, 4)), ratios
    seamed = health.seam_ratios(smooth + _tile_offsets(24, 3))
    assert seamed["3"] > 10.0, seamed
    assert seamed["3"] > 5 * seamed["2"] and seamed["3"] > 5 * seamed["4"]
    two = health.seam_ratios(smooth + _tile_offsets(24, 2))
    assert two["2"] > 10.0 and two["4"] > 2.0  # t=4 boundaries include the t=2 one
    assert health.boundary_offsets(24, 3) == [7, 15]
    assert health.seam_ratios(smooth[..., :4, :4])["3"] is None  # tiles narrower than two tokens


def test_planted_outlier_tokens_are_counted_exactly():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(2, 16, 12, 12, generator=gen), dim=1)
    tokens = tokens * (1.0 + 0.1 * torch.rand(2, 1, 12, 12, generator=gen))  # norms in [1, 1.1]
    assert health.outlier_stats(tokens)["outliers"] == 0
    planted = [(0, 3, 4), (0, 11, 0), (1, 5, 7)]
    for b, i, j in planted:
        tokens[b, :, i, j] *= 5.0
    stats = health.outlier_stats(tokens, k=6.0)
    assert stats["outliers"] == 3 and stats["tokens"] == 2 * 144
    assert math.isclose(stats["fraction"], 3 / 288)
    assert 4.0 < stats["max_norm_ratio"] < 5.6
    mask = health.outlier_mask(tokens.norm(dim=1))
    assert sorted(map(tuple, torch.nonzero(mask).tolist())) == sorted(planted)


@pytest.fixture
def student_run(tmp_path):
    from radiosharp.student_io import save_student

    def make(name: str, teacher_configs: dict | None) -> str:
        student = radiosharp.build_student(
            {"name": "radio", "size": "tiny"}, teachers={"dinov2": {"feature_dim": 32, "summary_dim": 32}}
        )
        run = tmp_path / name
        save_student(run, student, teacher_configs=teacher_configs)
        return str(run)

    return make


def test_cli_writes_json_and_pictures(student_run, capsys):
    from radiosharp.eval.cli import main

    run = student_run("run", {"dinov2": TINY_TEACHER})
    assert main(["health", run, "--sizes", "32", "64", "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "vs teacher" in out and "health.json" in out
    report = json.loads((Path(run) / "eval" / "health.json").read_text())
    assert report["sizes"] == [32, 64] and report["images"] == 2 and report["data"] == "photos"
    curve = report["mode_switch"]["curves"]["dinov2"]
    assert len(curve["nmse_teacher"]) == 2 and all(v > 0 for v in curve["nmse_teacher"])
    assert report["teacher_configs"]["configs"]["dinov2"]["family"] == "dinov2"
    assert set(report["outliers"]["per_size"]) == {"32", "64"} and report["outliers"]["k"] == 6.0
    assert set(report["seams"]["per_size"]["64"]) == {"backbone", "dinov2", "pixels"}
    for name in health.PICTURES.values():
        assert (Path(run) / "eval" / name).stat().st_size > 1000


@pytest.mark.parametrize(
    ("configs", "reason"),
    [(None, "records no teacher configs"), ({"dinov2": {"family": "no_such_family"}}, "cannot build it")],
)
def test_cli_without_buildable_teachers_skips_mode_switch_only(student_run, tmp_path, capsys, configs, reason):
    from radiosharp.eval.cli import main

    run = student_run("bare", configs)
    out_dir = tmp_path / "health_out"
    assert main(["health", run, "--sizes", "32", "--images", "1", "--json", "--out", str(out_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode_switch"]["curves"] == {}
    assert reason in report["mode_switch"]["skipped"]["dinov2"]
    assert report["outliers"]["per_size"]["32"]["tokens"] == 4
    assert (out_dir / "health.json").is_file() and (out_dir / "health_seams.png").is_file()


def test_cli_refuses_a_missing_run_and_an_unknown_teacher_in_one_line(student_run, tmp_path, capsys):
    from radiosharp.eval.cli import main

    assert main(["health", str(tmp_path / "no_such_run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    run = student_run("run", None)
    assert main(["health", run, "--teacher", "siglip", "--sizes", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "siglip" in err and "dinov2" in err and err.count("\n") == 1
    assert main(["health", run, "--sizes", "30"]) == 2
    assert "patch size" in capsys.readouterr().err

"""``python -m radiosharp.viz`` and ``python -m radiosharp.bench`` on tiny CPU teachers.

The benchmark tests check the report's structure and arithmetic (ratios, shares,
images/s), never speed: timings on a shared CPU are noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import radiosharp
from radiosharp.pca import TITLE_BAND, PCABasis
from radiosharp.upsampled import UpsampledTeacher, save_upsampler
from radiosharp.viz import feature_panels, figure_maps, make_figure, same_teacher
from radiosharp.viz import main as viz_main

TINY = {"family": "dinov2", "size": "tiny"}
CELL, TITLE = 256, TITLE_BAND  # radiosharp.pca.save_panels: one 256 px cell per panel + a title band


def panel_count(png: Path) -> int:
    width, height = Image.open(png).size
    assert height == CELL + TITLE and width % CELL == 0, (width, height)
    return width // CELL


@pytest.fixture(scope="module")
def teacher():
    return radiosharp.build_teacher(TINY)


def build(name: str, factor: int, teacher):
    return radiosharp.build_upsampler(name, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)


@pytest.fixture(scope="module")
def featsharp_run(tmp_path_factory, teacher) -> Path:
    """An exported, untrained 2x FeatSharp upsampler for the tiny DINOv2."""
    run = tmp_path_factory.mktemp("runs") / "up_featsharp"
    save_upsampler(run, UpsampledTeacher(teacher, build("featsharp", 2, teacher)), {"teacher": TINY})
    return run


# ----------------------------------------------------------------------------- viz


def test_viz_cli_writes_one_panel_per_map(featsharp_run, tmp_path, capsys):
    out = tmp_path / "fig.png"
    args = [
        "skimage:astronaut",
        "--teacher",
        "dinov2",
        "--size",
        "tiny",
        "--upsampler",
        str(featsharp_run),
        "bilinear",
        "tiles",
        "--out",
        str(out),
    ]
    assert viz_main(args) == 0
    # image, raw features, bilinear (not repeated when named), the featsharp run, tiles
    assert panel_count(out) == 5
    assert str(out) in capsys.readouterr().out

    # --teacher given as the run folder: its teacher config is used, factor from the run
    out2 = tmp_path / "fig2.png"
    assert (
        viz_main(
            [
                "skimage:astronaut",
                "--teacher",
                str(featsharp_run),
                "--upsampler",
                str(featsharp_run),
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert panel_count(out2) == 4


def test_make_figure_with_bilinear_and_untrained_featsharp(teacher, tmp_path):
    image = torch.rand(3, 100, 80)  # any size: resized to factor * native
    out = make_figure(image, teacher, {"featsharp": build("featsharp", 2, teacher)}, tmp_path / "f.png")
    assert out == tmp_path / "f.png" and panel_count(out) == 4  # image, raw, bilinear, featsharp
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.std() > 10  # real content, not a blank canvas

    with pytest.raises(ValueError, match="factor mismatch.*'b' upsamples 3x"):
        make_figure(
            image,
            teacher,
            {"a": build("featsharp", 2, teacher), "b": build("bilinear", 3, teacher)},
            tmp_path / "g.png",
        )
    assert not (tmp_path / "g.png").exists()


def test_figure_maps_are_lowres_then_upsampled(teacher):
    image = torch.rand(1, 3, 224, 224)
    maps = figure_maps(image, teacher, {"tiles": build("tiles", 2, teacher)}, factor=2)
    assert list(maps) == ["raw features 8x8", "bilinear 2x", "tiles 2x"]
    assert maps["raw features 8x8"].shape == (1, 32, 8, 8)
    assert maps["bilinear 2x"].shape == maps["tiles 2x"].shape == (1, 32, 16, 16)


def test_one_shared_basis_gives_equal_maps_equal_colours(teacher):
    """Equal maps -> identical pictures; a scaled copy -> different colours (a per-map basis would hide it)."""
    image = torch.rand(1, 3, 224, 224)
    maps = figure_maps(image, teacher, {"copy": build("bilinear", 2, teacher)}, factor=2)
    maps["double"] = 2 * maps["bilinear 2x"]
    panels = feature_panels(maps, (224, 224))
    assert all(p.shape == (224, 224, 3) and p.dtype == np.uint8 for p in panels.values())
    np.testing.assert_array_equal(panels["copy 2x"], panels["bilinear 2x"])
    assert not np.array_equal(panels["double"], panels["bilinear 2x"])
    m = maps["bilinear 2x"][0]
    per_map = [PCABasis.fit([x]).to_rgb(x) for x in (m, 2 * m)]
    np.testing.assert_array_equal(per_map[0], per_map[1])  # what the shared basis avoids


def test_teacher_configs_compare_with_defaults_filled_in():
    assert same_teacher({"family": "dinov2"}, {"family": "dinov2", "size": "real"})
    assert same_teacher(TINY, {**TINY, "cache_dir": "/elsewhere"})
    assert same_teacher(TINY, {**TINY, "upsampler": {"name": "featsharp"}, "phi_s": "stats.safetensors"})
    assert not same_teacher(TINY, {"family": "dinov2"})
    assert not same_teacher(TINY, {**TINY, "seed": 1})


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg", "--teacher", "dinov2", "--size", "tiny"], "image not found: missing.jpg"),
        (["skimage:nothing", "--teacher", "dinov2", "--size", "tiny"], "no sample image 'nothing'"),
        (["skimage:astronaut", "--teacher", "dinov9"], "neither a teacher family (dfn_clip, dinov2"),
        (["skimage:astronaut", "--teacher", "runs/none"], "run folder not found: runs/none"),
        (
            ["skimage:astronaut", "--teacher", "dinov2", "--size", "tiny", "--upsampler", "runs/none"],
            "run folder not found: runs/none",
        ),
        (
            ["skimage:astronaut", "--teacher", "dinov2", "--size", "tiny", "--upsampler", "featsharp"],
            "'featsharp' must be trained first",
        ),
        (
            ["skimage:astronaut", "--teacher", "{family: dinov2, size: tiny, seed: 1}", "--upsampler", "RUN"],
            "mismatched teacher: RUN was trained for teacher",
        ),
        (
            ["skimage:astronaut", "--teacher", "RUN", "--upsampler", "RUN", "--factor", "3"],
            "factor mismatch: --factor 3, but RUN was trained at 2x",
        ),
    ],
)
def test_viz_bad_input_exits_2_with_a_clear_message(args, message, featsharp_run, tmp_path, capsys):
    out = tmp_path / "never.png"
    args = [str(featsharp_run) if a == "RUN" else a for a in args]
    assert viz_main([*args, "--out", str(out)]) == 2
    assert message.replace("RUN", str(featsharp_run)) in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- bench: pieces


def test_cpu_peak_memory_is_the_peak_of_live_allocations():
    from radiosharp.bench.measure import measure

    def fn():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB -> 12 MB live
        del a
        c = torch.empty(250_000)  # 1 MB -> 9 MB live
        return b, c

    cost = measure(fn, "cpu", warmup=0, repeats=2)
    assert cost.peak_bytes == 12_000_000
    assert len(cost.times) == 2 and cost.seconds > 0


def test_replayed_featurize_gives_the_same_output_without_the_teacher(teacher):
    from radiosharp.bench.upsample import ReplayFeaturize

    up = build("featsharp", 2, teacher)
    images = torch.rand(2, 3, 224, 224)
    calls = []

    def featurize(x):
        calls.append(len(x))
        return teacher(x).features

    lowres = featurize(torch.nn.functional.interpolate(images, size=(112, 112)))
    replay = ReplayFeaturize(featurize)
    with torch.no_grad():
        first = up(images, lowres, replay)
        again = up(images, lowres, replay.rewind())
    assert calls == [2, 2 * 4]  # the global view, then one call with every tile; none on replay
    assert replay.images_seen == 8
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_crossover_measured_interpolated_and_analytic():
    from radiosharp.bench.crossover import crossover

    us = [1, 2, 3]
    out = crossover(us, [u**4 for u in us], [1 + u**2 for u in us], native_seconds=1.0)
    assert out["measured"] == 2 and out["extrapolated"] is None
    r1, r2 = 2.0, 5 / 16  # ratios featsharp / teacher at 1x and 2x
    assert out["interpolated"] == pytest.approx(1 + math.log(r1) / (math.log(r1) - math.log(r2)))
    assert out["teacher_fit"]["exponent"] == pytest.approx(4.0)
    assert out["analytic"]["attention_bound_u4"] == pytest.approx(math.sqrt((1 + math.sqrt(5)) / 2), rel=1e-6)
    assert out["analytic"]["patch_linear_u2"] is None


def test_crossover_extrapolates_when_no_measured_factor_crosses():
    from radiosharp.bench.crossover import crossover

    us = [1, 2]
    out = crossover(us, [u**3 for u in us], [10 + 0.5 * u**2 for u in us], native_seconds=1.0)
    assert out["measured"] is None and out["interpolated"] is None
    root = out["extrapolated"]
    assert root is not None and 10 + 0.5 * root**2 == pytest.approx(root**3, rel=1e-6)
    assert "extrapolated" in out["note"]

    never = crossover(us, [u**2 for u in us], [3 * (1 + u**2) for u in us], native_seconds=1.0)
    assert never["extrapolated"] is None and "do not cross" in never["note"]


def test_table_columns_are_aligned():
    from radiosharp.bench.table import format_table

    text = format_table(["u", "method", "ms"], [[1, "teacher", 12.345], [10, "featsharp", None]])
    lines = text.splitlines()
    assert lines[2].index("teacher") == lines[3].index("featsharp") == lines[0].index("method")
    assert lines[2].endswith("12.3") and lines[3].endswith("-")
    assert lines[0].endswith("ms") and len(lines[0]) == len(lines[2])


def test_with_ratios_puts_each_ratio_column_after_its_measure():
    from radiosharp.bench.table import milliseconds, record_table, with_ratios

    columns = with_ratios("x ref", [("ms", milliseconds("t"), "t_ratio"), ("MiB", "m", "m_ratio")])
    assert [header for header, _ in columns] == ["ms", "x ref", "MiB", "x ref"]
    text = record_table([{"t": 0.25, "t_ratio": 2.0, "m": 3.5, "m_ratio": 0.5}], columns)
    assert text.splitlines()[2].split() == ["250", "2", "3.5", "0.5"]


# ----------------------------------------------------------------------------- bench: commands


def test_bench_upsample_json_rows_and_ratios(tmp_path, capsys):
    from radiosharp.bench.cli import main

    path = tmp_path / "bench.json"
    assert (
        main(
            [
                "upsample",
                "--teacher",
                "{family: dinov2, size: tiny}",
                "--factors",
                "1",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--views",
                "2",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert "x teacher" in capsys.readouterr().out  # the table is printed too
    report = json.loads(path.read_text())
    rows = report["rows"]
    assert [(r["factor"], r["method"]) for r in rows] == [
        (u, m) for u in (1, 2) for m in ("teacher", "bilinear", "featup", "featsharp")
    ]
    keys = {
        "factor",
        "method",
        "input_size",
        "teacher_images",
        "time_s",
        "peak_mb",
        "time_excl_s",
        "peak_excl_mb",
        "time_ratio",
        "mem_ratio",
        "time_excl_ratio",
        "mem_excl_ratio",
    }
    for row in rows:
        assert set(row) == keys
        ref = next(r for r in rows if r["factor"] == row["factor"] and r["method"] == "teacher")
        assert row["input_size"] == row["factor"] * 112
        assert row["time_s"] > 0 and row["peak_mb"] > 0
        assert row["time_ratio"] == pytest.approx(row["time_s"] / ref["time_s"])
        assert row["mem_ratio"] == pytest.approx(row["peak_mb"] / ref["peak_mb"])
        if row["method"] == "teacher":
            assert row["time_ratio"] == 1 and row["time_excl_s"] is None
        else:
            assert row["time_excl_s"] > 0
            assert row["time_excl_ratio"] == pytest.approx(row["time_excl_s"] / ref["time_s"])
    featsharp = {r["factor"]: r["teacher_images"] for r in rows if r["method"] == "featsharp"}
    assert featsharp == {1: 2, 2: 5}  # 1 + u^2 teacher images per input image
    assert {r["teacher_images"] for r in rows if r["method"] in ("bilinear", "featup")} == {1}
    train = report["train"]
    assert [(r["factor"], r["method"]) for r in train] == [
        (1, "featup"),
        (1, "featsharp"),
        (2, "featup"),
        (2, "featsharp"),
    ]
    for r in train:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"]) and r["views"] == 2
    assert set(report["crossover"]) >= {"measured", "interpolated", "extrapolated", "analytic", "note"}


def test_bench_upsample_bad_input_exits_2(capsys):
    from radiosharp.bench.cli import main

    assert main(["upsample", "--teacher", "dinov9", "--factors", "2"]) == 2
    assert "neither a teacher family" in capsys.readouterr().err
    assert main(["upsample", "--teacher", "dinov2", "--size", "tiny", "--methods", "lanczos"]) == 2
    assert "unknown upsampler 'lanczos'" in capsys.readouterr().err
    assert main(["upsample", "--teacher", "dinov2", "--size", "tiny", "--factors", "0"]) == 2
    assert "factors >= 1" in capsys.readouterr().err


DISTILL = """kind: distill
name: bench_test
teachers:
  dinov2: {size: tiny, upsampler: {name: tiles, factor: 2}}
data: {source: synthetic, num_images: 8, size: 64}
student: {name: radio, size: tiny}
train: {steps: 2, batch_size: 4, mixed_precision: "no"}
stats: {num_images: 4, batch_size: 4}
distill:
  partitions:
    - {name: low, size: 64, batch_size: 2}
    - {name: hi, size: 128, batch_size: 2, upsample: true}
"""


def test_bench_train_phase_shares_sum_to_one(tmp_path, monkeypatch):
    from radiosharp.bench.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(DISTILL)
    path = tmp_path / "train.json"
    assert main(["train", str(recipe), "train.batch_size=4", "--steps", "1", "--warmup", "0", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert set(report["shares"]) == {
        "teachers",
        "upsamplers",
        "student_forward",
        "loss",
        "backward",
        "optimizer",
        "other",
    }
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert sum(report["seconds"].values()) == pytest.approx(report["step_s"], rel=1e-6)
    assert report["images_per_s"] == pytest.approx(4 / report["step_s"])
    low, hi = report["partitions"]
    assert (low["name"], low["batch"], hi["name"], hi["upsample"]) == ("low", 2, "hi", True)
    for part in (low, hi):
        assert sum(part["shares"].values()) == pytest.approx(1.0)
        assert part["images_per_s"] == pytest.approx(part["batch"] / part["seconds"])
        assert part["shares"]["teachers"] > 0 and part["shares"]["student_forward"] > 0
    assert low["shares"]["upsamplers"] == 0 and hi["shares"]["upsamplers"] > 0
    assert report["peak_memory"]["what"] == "process peak RSS" and report["peak_memory"]["mib"] > 100
    assert set(tmp_path.iterdir()) == {recipe, path}  # no run folder left behind


def test_bench_train_measures_drawn_sizes_and_non_square_partitions(tmp_path, monkeypatch):
    from radiosharp.bench.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(
        DISTILL.replace("{name: low, size: 64, batch_size: 2}", "{name: low, sizes: [48, 64], batch_size: 2}").replace(
            "{name: hi, size: 128,", "{name: hi, size: [96, 128],"
        )
    )
    path = tmp_path / "train.json"
    assert main(["train", str(recipe), "--steps", "1", "--warmup", "0", "--json", str(path)]) == 0
    low, hi = json.loads(path.read_text())["partitions"]
    assert low["size"] == [48, 64] and hi["size"] == [96, 128]
    assert low["shares"]["student_forward"] > 0 and hi["shares"]["upsamplers"] > 0


def test_bench_profile_reports_ops_teacher_calls_and_a_trace(tmp_path, monkeypatch, capsys):
    from radiosharp.bench.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(DISTILL)
    path, trace = tmp_path / "profile.json", tmp_path / "trace.json"
    args = ["profile", str(recipe), "--steps", "2", "--warmup", "1", "--top", "5", "--trace", str(trace)]
    assert main([*args, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert (report["kind"], report["steps"], len(report["ops"])) == ("distill", 2, 5)
    shares = [op["share"] for op in report["ops"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert any(op["op"].startswith("aten::") for op in report["ops"])  # besides data loading, optimizer regions
    # one batched call per teacher and input kind: the plain and the upsampled (tiles) dinov2
    assert report["teacher_calls_per_step"] >= 2 and report["teacher_ms_per_step"] > 0
    assert json.loads(trace.read_text())["traceEvents"]
    assert set(tmp_path.iterdir()) == {recipe, path, trace}  # no run folder left behind
    assert main(["profile", str(recipe), "--steps", "0"]) == 2
    assert "need --steps >= 1" in capsys.readouterr().err


def test_bench_train_refuses_other_kinds(tmp_path, capsys):
    from radiosharp.bench.cli import main

    recipe = tmp_path / "up.yaml"
    recipe.write_text("kind: featurize\nteachers: {dinov2: {size: tiny}}\n")
    assert main(["train", str(recipe)]) == 2
    assert "expected 'distill'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_bench_train_builds_named_upsamplers_untrained_and_training_refuses_them(tmp_path, monkeypatch, capsys):
    """Cost does not depend on training: bench train takes `upsampler=featsharp` without a
    run (and a deepspeed block, timed as DDP); a training run refuses an untrained FeatSharp."""
    from radiosharp.bench.cli import main
    from radiosharp.train import main as train_main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(DISTILL)
    path = tmp_path / "train.json"
    assert (
        main(
            [
                "train",
                str(recipe),
                "teachers.dinov2.upsampler=featsharp",
                "teachers.dinov2.upsampler.factor=2",
                "deepspeed.zero_optimization.stage=2",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert "deepspeed block is left out" in capsys.readouterr().out
    hi = json.loads(path.read_text())["partitions"][1]
    assert hi["upsample"] and hi["shares"]["upsamplers"] > 0
    assert train_main([str(recipe), "teachers.dinov2.upsampler=featsharp", "output_dir=run"]) == 2
    assert "'featsharp' must be trained first" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

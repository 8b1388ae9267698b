"""eval's modes beyond `run`/`mtl`: declared suites, single-task baselines, `compare`, the upsampler
mode (a teacher x upsamplers over input sizes and factors), example pictures and task timing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import radiosharp
from radiosharp.eval import upsample_mode
from radiosharp.eval.cli import main
from radiosharp.eval.examples import PALETTE, colourize, examples_figure
from radiosharp.eval.settings import EvalError, parse_settings
from radiosharp.student_io import save_student
from radiosharp.upsampled import UpsampledTeacher, save_upsampler

TINY = {"family": "dinov2", "size": "tiny"}
PROBE = {"steps": 15, "lr": 0.05, "seeds": 2, "batch_size": 8}
DATA = {"source": "synthetic", "num_images": 12, "size": 56, "seed": 0}
VAL = {"source": "synthetic", "num_images": 6, "size": 56, "seed": 1}


def eval_section(tasks: dict) -> str:
    return json.dumps({"kind": "distill", "eval": {"tasks": tasks, "data": DATA, "val_data": VAL}})


def student_run(path: Path, seed: int, tasks: dict) -> Path:
    student = radiosharp.build_student(
        {"name": "radio", "size": "tiny", "seed": seed}, teachers={"clip": {"summary_dim": 16, "feature_dim": 24}}
    )
    save_student(path, student)
    (path / "recipe.yaml").write_text(eval_section(tasks))
    return path


def upsampler_run(path: Path, teacher, factor: int, tasks: dict) -> Path:
    up = radiosharp.build_upsampler("bilinear", factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
    save_upsampler(path, UpsampledTeacher(teacher, up), {"teacher": TINY})
    (path / "recipe.yaml").write_text(eval_section(tasks))
    return path


def links_of(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]+\]\(([^)]+)\)", report.read_text())


# ----------------------------------------------------------------------------- suites


def test_declared_suites_pick_their_tasks_and_keep_configured_options():
    settings = parse_settings({"suite": "nyud", "tasks": {"semseg": {"steps": 7}}})
    assert settings.task_options("student", "nyud") == {"semseg": {"steps": 7}, "depth": {}, "normals": {}}
    assert list(parse_settings({"suite": "nyud"}).task_options("student")) == ["semseg", "depth", "normals"]
    assert list(parse_settings({}).task_options("upsampler", "dense")) == ["semseg", "depth", "normals", "keypoints"]
    assert list(parse_settings({}).task_options("upsampler")) == ["knn", "semseg", "depth", "fidelity"]
    with pytest.raises(EvalError, match="valid: default, nyud, dense, radio"):
        parse_settings({"suite": "pascal"})
    # the suite does not change a task's result: cached results stay valid across suites
    assert parse_settings({"suite": "nyud"}).context() == parse_settings({}).context()


# ----------------------------------------------------------------------------- mtl with single-task baselines


def test_mtl_with_single_task_baselines_takes_each_task_from_its_own_run(tmp_path, capsys):
    tasks = {"semseg": PROBE, "depth": PROBE}
    seg_base = student_run(tmp_path / "seg_only", 0, tasks)
    depth_base = student_run(tmp_path / "depth_only", 1, tasks)
    new = student_run(tmp_path / "new", 2, tasks)
    args = ["mtl", str(new), "--task-baseline", f"semseg={seg_base}", "--task-baseline", f"depth={depth_base}"]
    assert main([*args, "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baselines"] == {"semseg": str(seg_base), "depth": str(depth_base)}
    seg_cached = json.loads((seg_base / "eval" / "metrics.json").read_text())["tasks"]
    depth_cached = json.loads((depth_base / "eval" / "metrics.json").read_text())["tasks"]
    assert set(seg_cached) == {"semseg"} and set(depth_cached) == {"depth"}  # each baseline only on its task
    base_row, new_row = out["runs"]
    assert base_row["tasks"]["semseg"]["metrics"] == seg_cached["semseg"]["metrics"]
    assert base_row["tasks"]["depth"]["metrics"] == depth_cached["depth"]["metrics"]
    ours = new_row["tasks"]["semseg"]["metrics"]["miou"]["mean"]
    ref = seg_cached["semseg"]["metrics"]["miou"]["mean"]
    assert new_row["mtl"]["metric_deltas"]["semseg/miou"] == pytest.approx(100 * (ours - ref) / ref)
    for result in new_row["tasks"].values():  # every task result carries its wall time
        assert result["seconds"] > 0


def test_mtl_baseline_errors_are_one_line_before_anything_is_written(tmp_path, capsys):
    tasks = {"semseg": PROBE, "depth": PROBE}
    base = student_run(tmp_path / "base", 0, tasks)
    new = student_run(tmp_path / "new", 1, tasks)
    cases = [
        (["mtl", str(new)], "needs a baseline"),
        (["mtl", str(new), "--task-baseline", f"semseg={base}"], "no baseline for task depth"),
        (["mtl", str(new), "--task-baseline", f"knn={base}", "--baseline", str(base)], "names task knn"),
        (["mtl", str(new), "--task-baseline", "semseg"], "expected TASK=RUN"),
        (["mtl", str(base), "--baseline", str(base)], "every RUN is also a baseline"),
    ]
    for argv, message in cases:
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (base / "eval").exists() and not (new / "eval").exists()


# ----------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def teacher():
    return radiosharp.build_teacher(TINY)


def test_compare_writes_table_bars_and_metric_vs_factor_lines(tmp_path, teacher, capsys):
    tasks = {"semseg": PROBE}
    runs = [upsampler_run(tmp_path / f"bilinear_{u}x", teacher, u, tasks) for u in (2, 4)]
    assert main(["compare", *map(str, runs), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = Path(out["report"])
    assert report == runs[0] / "eval" / "compare_report.md"
    names = [Path(p).name for p in out["pictures"]]
    assert names == [
        "compare_report_metrics.png",
        "compare_report_table.png",
        "compare_report_semseg_miou_vs_factor.png",
        "compare_report_semseg_miou_small_vs_factor.png",
    ]
    assert links_of(report) == names
    for png in out["pictures"]:
        image = np.asarray(Image.open(png))
        assert image.shape[0] > 100 and image.shape[1] > 200 and image[..., :3].std() > 5
    assert [r["run"] for r in out["runs"]] == list(map(str, runs))
    # the lines: the runs grouped by their export's upsampler name, at their trained factors
    from radiosharp.eval.cli import upsampler_factors

    assert upsampler_factors(list(map(str, runs)), {str(r): "upsampler" for r in runs}) == {
        str(runs[0]): ("bilinear", 2),
        str(runs[1]): ("bilinear", 4),
    }


def test_compare_refuses_runs_of_two_kinds(tmp_path, teacher, capsys):
    up = upsampler_run(tmp_path / "up", teacher, 2, {"semseg": PROBE})
    student = student_run(tmp_path / "student", 0, {"semseg": PROBE})
    assert main(["compare", str(up), str(student), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'upsampler' run" in err and "'student' run" in err and not (up / "eval").exists()


# ----------------------------------------------------------------------------- upsampler mode


def write_settings(path: Path) -> Path:
    path.write_text(json.dumps({"eval": {"tasks": {"semseg": PROBE}, "data": DATA, "val_data": VAL}}))
    return path


def test_upsample_mode_grid_report_pictures_and_cache(tmp_path, teacher, capsys, monkeypatch):
    run4 = upsampler_run(tmp_path / "bilinear_run", teacher, 4, {"semseg": PROBE})
    settings = write_settings(tmp_path / "settings.yaml")
    out = tmp_path / "grid"
    argv = ["upsample", "--teacher", "dinov2", "--size", "tiny", "--upsampler", "bilinear", str(run4)]
    argv += ["--factors", "1", "2", "4", "--input-sizes", "28", "56", "--settings", str(settings)]
    argv += ["--out", str(out), "--no-progress", "--json"]
    seen: list[tuple[str, int]] = []
    real = upsample_mode.cell_featurizer

    def counting(cell, teacher):
        seen.append((cell.method_name, cell.image_size))
        return real(cell, teacher)

    monkeypatch.setattr(upsample_mode, "cell_featurizer", counting)
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    cells = {(c["method"], c["input_size"], c["factor"]): c for c in result["cells"]}
    run_name = "bilinear_run (bilinear)"
    assert set(cells) == {
        ("teacher", 28, 1),
        ("teacher", 56, 1),
        ("bilinear", 28, 2),
        ("bilinear", 28, 4),
        ("bilinear", 56, 2),
        ("bilinear", 56, 4),
        (run_name, 28, 4),  # a run only at the factor it was trained for
        (run_name, 56, 4),
    }
    assert all(c["image_size"] == c["input_size"] * c["factor"] for c in cells.values())
    # an exported bilinear run is the training-free bilinear: the same numbers at the same cell
    for size in (28, 56):
        ours, theirs = cells[(run_name, size, 4)]["tasks"]["semseg"], cells[("bilinear", size, 4)]["tasks"]["semseg"]
        assert ours["metrics"]["miou"]["values"] == pytest.approx(theirs["metrics"]["miou"]["values"], abs=1e-6)
    report = out / "upsample_report.md"
    assert links_of(report) == ["semseg_miou_vs_factor.png", "semseg_miou_small_vs_factor.png"]
    assert "python -m radiosharp.eval upsample" in report.read_text()
    rows = upsample_mode.factor_rows(result["cells"], "semseg", "miou")
    line = [r for r in rows if r["method"] == "bilinear, input 28px"]
    assert [r["factor"] for r in line] == [1, 2, 4]
    assert line[0]["miou"] == cells[("teacher", 28, 1)]["tasks"]["semseg"]["metrics"]["miou"]["values"]
    assert len(seen) == 8

    assert main(argv) == 0  # every cell cached
    capsys.readouterr()
    assert len(seen) == 8
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert len(seen) == 16


def test_upsample_mode_bad_input_is_one_line_and_writes_nothing(tmp_path, teacher, capsys):
    run2 = upsampler_run(tmp_path / "run2", teacher, 2, {"semseg": PROBE})
    out = tmp_path / "grid"
    base = ["upsample", "--teacher", "dinov2", "--size", "tiny", "--out", str(out), "--no-progress"]
    cases = [
        ([*base, "--upsampler", "nonsense"], "neither a run folder nor a training-free name"),
        ([*base, "--upsampler", "featsharp"], "must be trained first"),
        ([*base, "--upsampler", str(run2), "--factors", "1", "4"], "trained at 2x"),
        ([*base, "--upsampler", "bilinear", "--input-sizes", "30"], "multiples of it"),
        ([*base, "--upsampler", "bilinear", "--factors", "0", "2"], "integers >= 1"),
        ([*base, "--upsampler", "bilinear", "--settings", str(tmp_path / "none.yaml")], "no such file"),
        ([*base, "--upsampler", "bilinear", "--tasks", "semsegg"], "unknown eval task 'semsegg'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not out.exists()


# ----------------------------------------------------------------------------- example pictures


def test_dense_probes_write_example_pictures(tmp_path, capsys):
    run = student_run(tmp_path / "run", 0, {"semseg": PROBE, "depth": PROBE, "normals": PROBE})
    assert main(["run", str(run), "--no-progress", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)["runs"][0]["tasks"]
    assert all(t["status"] == "ok" and t["seconds"] > 0 for t in tasks.values())
    for task in ("semseg", "depth", "normals"):
        image = np.asarray(Image.open(run / "eval" / "examples" / f"{task}_examples.png"))
        h, w = image.shape[:2]
        assert h > w > 300 and image[..., :3].std() > 5, (task, w, h)


def test_example_figure_has_a_row_per_image_and_three_panels():
    thumbs = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    masks = torch.randint(0, 4, (3, 20, 20))
    fig = examples_figure(thumbs, masks, masks, "mask", title="semseg")
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "ground truth", "prediction"]
    with pytest.raises(ValueError, match="need equal"):
        examples_figure(thumbs, masks[:2], masks, "mask")


def test_colourize_conventions():
    mask = torch.tensor([[0, 1], [255, 1]])
    rgb = colourize(mask, "mask")
    assert np.array_equal(rgb[0, 1], rgb[1, 1]) and not np.array_equal(rgb[0, 0], rgb[0, 1])
    assert np.array_equal(rgb[1, 0], [0, 0, 0]) and np.array_equal(PALETTE[1], rgb[0, 1])  # fixed per id
    normals = torch.zeros(3, 1, 2)
    normals[2] = 1.0
    valid = torch.tensor([[True, False]])
    assert colourize(normals, "normals", valid)[0].tolist() == [[0.5, 0.5, 1.0], [0.0, 0.0, 0.0]]
    depth = torch.tensor([[1.0, 3.0]])
    span = colourize(depth, "depth", torch.tensor([[True, True]]), span=(1.0, 3.0))
    assert not np.allclose(span[0, 0], span[0, 1])
    with pytest.raises(ValueError, match="valid: mask, depth, normals"):
        colourize(mask, "edges")


def test_zeroshot_prompt_presets_and_bad_templates():
    from radiosharp.eval.settings import select_tasks
    from radiosharp.eval.tasks.zeroshot import prompt_templates

    openai = prompt_templates("openai")
    assert len(openai) == 80 and openai[0]("cat") == "a bad photo of a cat."
    assert len(prompt_templates("simple")) == 7
    assert [t("dog") for t in prompt_templates(["a photo of a {}.", "{}"])] == ["a photo of a dog.", "dog"]
    for bad, message in (("imagenet", "valid: openai, simple"), (["no slot"], "exactly one"), ([], "empty")):
        with pytest.raises(EvalError, match=message):
            select_tasks({"zeroshot": {"templates": bad}}, None)


def test_teacher_sizes_give_the_hires_reference_line():
    m = upsample_mode.Method("bilinear", "bilinear")
    cells = upsample_mode.plan_cells([m], [28], [1, 2, 4], teacher_sizes=[28, 56, 112])
    assert [(c.method_name, c.input_size, c.factor) for c in cells] == [
        ("teacher", 28, 1),
        ("teacher", 56, 1),
        ("teacher", 112, 1),
        ("bilinear", 28, 2),
        ("bilinear", 28, 4),
    ]

    def row(method, size, factor, value):
        metrics = {"miou": {"mean": value, "values": [value]}}
        return {"method": method, "input_size": size, "factor": factor, "tasks": {"semseg": {"metrics": metrics}}}

    rows = [row("teacher", 28, 1, 0.1), row("teacher", 56, 1, 0.2), row("teacher", 112, 1, 0.3)]
    rows += [row("bilinear", 28, 2, 0.15), row("bilinear", 28, 4, 0.16)]
    lines: dict[str, list] = {}
    for point in upsample_mode.factor_rows(rows, "semseg", "miou"):
        lines.setdefault(point["method"], []).append((point["factor"], point["miou"]))
    assert lines == {
        "teacher at factor x input": [(1, [0.1]), (2, [0.2]), (4, [0.3])],
        "bilinear": [(1, [0.1]), (2, [0.15]), (4, [0.16])],
    }

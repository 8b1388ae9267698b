"""The upsampler objectives on known cases: an oracle scores zero (or the best value), bilinear
scores worse, each objective trains, and bad objective settings fail naming the problem.

The stand-in teacher is a patch-embedding conv (purely patch-local), so its features of a
patch-aligned window are exactly that window of its features, and its features of the
image at ``u x`` are the exact hi-res target: the oracle upsampler (which runs the teacher
on the guidance image) then matches every self-supervised target exactly.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PatchTeacher, PixelTeacher
from pydantic import ValidationError

from radiosharp.builders import build_upsampler
from radiosharp.multiview.views import ViewConfig
from radiosharp.objectives import ObjectiveConfig, ObjectiveError, check_objective, regression_loss
from radiosharp.objectives.step import objective_step
from radiosharp.objectives.targets import crop_offsets
from radiosharp.upsampled import UpsampledTeacher
from upsamplers._base import Upsampler, UpsampleSpec

VIEWS = ViewConfig(num_views=3, zoom=(1.0, 1.5))
SELF_SUPERVISED = ("low_to_high", "crop_hires", "hires_teacher")


class OracleUpsampler(Upsampler):
    """Returns the teacher's features of the guidance image: the exact hi-res features."""

    def forward(self, images, lowres, featurize, tile_features=None):
        return featurize(images)


def upsampled(name: str, factor: int = 2, teacher: PatchTeacher | PixelTeacher | None = None) -> UpsampledTeacher:
    teacher = teacher or PatchTeacher()
    if name == "oracle":
        up = OracleUpsampler(UpsampleSpec(factor, teacher.embed_dim, teacher.patch_size))
    else:
        up = build_upsampler(name, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
    return UpsampledTeacher(teacher, up)


def fixed_resize(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(features, size=grid, mode="area")


def loss_of(name: str, objective: ObjectiveConfig, factor: int = 2, seed: int = 0) -> float:
    torch.manual_seed(seed)
    images = torch.rand(3, 3, 64, 64)
    loss, _ = objective_step(
        upsampled(name, factor), images, objective, VIEWS, fixed_resize, torch.Generator().manual_seed(seed)
    )
    return loss.item()


@pytest.mark.parametrize("name", SELF_SUPERVISED)
@pytest.mark.parametrize("factor", (2, 4))
def test_the_oracle_scores_zero_and_bilinear_does_not(name, factor):
    for weights in ({"mse": 1.0}, {"mse": 0.0, "cosine": 1.0}):
        objective = ObjectiveConfig(name=name, crops=2 if name == "crop_hires" else 1, **weights)
        assert loss_of("oracle", objective, factor) < 1e-6
        assert loss_of("bilinear", objective, factor) > 1e-3


def test_multiview_ranks_the_oracle_above_bilinear():
    """With pooled pixels as features (consistent under any warp) the oracle explains every
    view far better than bilinear; not exactly, as warps and resizes do not commute."""
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(3, 3, 16, 16, generator=g), size=(64, 64), mode="bicubic")
    images = images + 0.3 * torch.rand(3, 3, 64, 64, generator=g)
    losses = {}
    for name in ("oracle", "bilinear"):
        up = upsampled(name, 2, PixelTeacher())
        loss, _ = objective_step(
            up, images, ObjectiveConfig(name="multiview"), VIEWS, fixed_resize, torch.Generator().manual_seed(0)
        )
        losses[name] = loss.item()
    assert losses["oracle"] < 0.5 * losses["bilinear"], losses


def test_crop_hires_consistency_is_zero_for_a_block_constant_output():
    """Area-pooling an output that repeats each low-res cell u x u times gives the low-res map back."""
    up = upsampled("oracle")

    class Nearest(Upsampler):
        def forward(self, images, lowres, featurize, tile_features=None):
            return torch.nn.functional.interpolate(lowres, scale_factor=self.factor, mode="nearest")

    up.upsampler = Nearest(UpsampleSpec(2, 8, 4))
    images = torch.rand(2, 3, 64, 64)
    only_crop = ObjectiveConfig(name="crop_hires")
    with_consistency = ObjectiveConfig(name="crop_hires", consistency=5.0)
    a, _ = objective_step(up, images, only_crop, VIEWS, None, torch.Generator().manual_seed(0))
    b, _ = objective_step(up, images, with_consistency, VIEWS, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_crop_windows_are_cell_aligned_and_inside_the_grid():
    offsets = crop_offsets(500, 16, 8, torch.Generator().manual_seed(0))
    assert offsets.min() >= 0 and offsets.max() <= 8
    assert set(offsets.flatten().tolist()) == set(range(9))  # every position is drawn


def test_extra_holds_what_the_metrics_read():
    images = torch.rand(2, 3, 64, 64)
    for name in SELF_SUPERVISED:
        _, extra = objective_step(upsampled("featup"), images, ObjectiveConfig(name=name), VIEWS)
        assert {"pred", "target", "mask", "hires", "lowres", "base"} <= set(extra)
        assert extra["pred"].shape == extra["target"].shape
        assert extra["mask"].shape == (len(extra["target"]), 1, *extra["target"].shape[-2:])


@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_each_objective_trains_featup(name):
    torch.manual_seed(0)
    up = upsampled("featup")
    # blocks with sharp edges: what an edge-aware upsampler can recover and bilinear blurs
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 6), size=(64, 64), mode="nearest")
    objective = ObjectiveConfig(name=name)
    opt = torch.optim.Adam(up.upsampler.parameters(), lr=3e-2)
    losses = []
    for _ in range(25):
        loss, _ = objective_step(up, images, objective, VIEWS, None, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_regression_loss_weights_its_terms():
    pred, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    mse = regression_loss(pred, target, mse=1.0)
    cos = regression_loss(pred, target, mse=0.0, cosine=1.0)
    torch.testing.assert_close(mse, ((pred - target) ** 2).mean())
    expected_cos = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=1)).mean()
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(regression_loss(pred, target, mse=2.0, cosine=3.0), 2 * mse + 3 * cos)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("from_space", "multiview"),
        ({"name": "multiview", "mse": 0.0}, "both 0"),
        ({"name": "multiview", "consistency": 0.1}, "options of crop_hires"),
        ({"name": "hires_teacher", "crops": 4}, "options of crop_hires"),
        ({"name": "crop_hires", "weight": 1}, "weight"),
    ],
)
def test_bad_objectives_name_the_problem(value, message):
    with pytest.raises(ValidationError, match=message):
        ObjectiveConfig.model_validate(value)


def test_a_name_alone_is_an_objective():
    assert ObjectiveConfig.model_validate("crop_hires").name == "crop_hires"


def test_low_to_high_needs_a_whole_number_of_patches():
    check_objective(ObjectiveConfig(name="low_to_high"), 112, 14, 4)  # 28 px = 2 patches
    with pytest.raises(ObjectiveError, match="multiple of 42"):
        check_objective(ObjectiveConfig(name="low_to_high"), 112, 14, 3)  # 37.3 px
    check_objective(ObjectiveConfig(name="crop_hires"), 112, 14, 3)  # the others form any factor's target

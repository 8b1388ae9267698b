"""The feature-agnostic upsamplers ``naf`` and ``anyup``: shapes, gradients, bf16, one model for any
feature width (and, for naf, channel-wise independence), and a short multi-view run lowers the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import radiosharp
from radiosharp.downsampler import AttentionDownsampler
from radiosharp.multiview import ViewConfig, consistency_step
from radiosharp.recipe import load_recipe
from radiosharp.upsampled import UpsampledTeacher

NAMES = ("naf", "anyup")
RECIPES = {name: Path(__file__).resolve().parents[1] / "recipes" / "demo" / f"upsampler_{name}.yaml" for name in NAMES}


def build(name: str, factor: int, **options) -> torch.nn.Module:
    return radiosharp.build_upsampler({"name": name, **options}, factor=factor, dim=0, patch_size=14)


def inputs(batch: int, channels: int, grid: tuple[int, int], factor: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, grid[0] * 14 * factor, grid[1] * 14 * factor, generator=g)
    return images, torch.randn(batch, channels, *grid, generator=g)


def seeded_case(name: str, factor: int, batch: int, channels: int, grid: tuple[int, int]) -> tuple:
    """``(upsampler, images, lowres)``: the upsampler built after ``torch.manual_seed(0)``, and seeded inputs."""
    torch.manual_seed(0)
    return build(name, factor), *inputs(batch, channels, grid, factor)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor, grid", [(2, (6, 6)), (4, (5, 5)), (2, (4, 7)), (4, (7, 3))])
def test_output_shape(name, factor, grid):
    up, images, lowres = seeded_case(name, factor, 2, 12, grid)
    with torch.no_grad():
        out = up(images, lowres, None)
    assert out.shape == (2, 12, grid[0] * factor, grid[1] * factor)
    assert torch.isfinite(out).all()
    assert up.trainable and up.build_config["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_guidance_larger_than_the_output_grid_is_resized(name):
    up, images, lowres = seeded_case(name, 2, 1, 8, (4, 4))
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear")
    with torch.no_grad():
        assert up(big, lowres, None).shape == (1, 8, 8, 8)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    up, images, lowres = seeded_case(name, 2, 2, 16, (5, 6))
    target = torch.randn(2, 16, 10, 12, generator=torch.Generator().manual_seed(1))
    (up(images, lowres, None) - target).square().mean().backward()
    missing = [n for n, p in up.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in up.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_forward_is_finite_and_close_to_fp32(name):
    up, images, lowres = seeded_case(name, 2, 2, 24, (6, 6))
    with torch.no_grad():
        want = up(images, lowres, None)
        got = up.to(torch.bfloat16)(images, lowres.bfloat16(), None)  # float32 images, bf16 features
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert relative_l2(got, want) < 0.03


@pytest.mark.parametrize("name", NAMES)
def test_one_instance_upsamples_features_of_any_width(name):
    up, images, wide = seeded_case(name, 2, 2, 48, (6, 6))
    with torch.no_grad():
        out_wide, out_narrow = up(images, wide, None), up(images, wide[:, :16], None)
        out_odd = up(images, wide[:, :5], None)  # not a multiple of the heads
    assert out_wide.shape == (2, 48, 12, 12) and out_narrow.shape == (2, 16, 12, 12)
    assert out_odd.shape == (2, 5, 12, 12) and torch.isfinite(out_odd).all()
    built_for_384 = radiosharp.build_upsampler(name, factor=2, dim=384, patch_size=14)
    assert built_for_384.dim == 0 and "dim" not in built_for_384.build_config
    with torch.no_grad():
        assert built_for_384(images, wide[:, :16], None).shape == (2, 16, 12, 12)  # dim is not a contract
    if name == "naf":  # weights come from the image only: each channel is filtered on its own
        torch.testing.assert_close(out_wide[:, :16], out_narrow, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_wide[:, :5], out_odd, rtol=1e-5, atol=1e-6)
    else:  # the keys read the features' channel statistics: a different input, a different filter
        assert not torch.allclose(out_wide[:, :16], out_narrow, atol=1e-4)


def test_naf_filter_is_a_convex_combination_of_the_lifted_features():
    """Constant features stay constant (the weights sum to one), whatever the image."""
    up, images, _ = seeded_case("naf", 4, 1, 1, (4, 5))
    lowres = torch.full((1, 3, 4, 5), 2.5)
    with torch.no_grad():
        out = up(images, lowres, None)
    torch.testing.assert_close(out, torch.full_like(out, 2.5))


@pytest.mark.parametrize("name", NAMES)
def test_a_short_multiview_run_lowers_the_loss(name):
    torch.manual_seed(0)
    teacher = radiosharp.create_teacher("dinov2", size="tiny")
    up = UpsampledTeacher(teacher, build(name, 2))
    down = AttentionDownsampler(teacher.embed_dim, 3, mask_prob=0.0, dropout=0.0)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    params = [p for p in [*up.parameters(), *down.parameters()] if p.requires_grad]
    optim = torch.optim.Adam(params, lr=3e-3)
    views = ViewConfig(num_views=2)
    up.train()
    down.train()
    losses = []
    for _ in range(15):  # the same crop and views every step: the loss of one fixed problem
        loss, _ = consistency_step(up, images, views, down, torch.Generator().manual_seed(0))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.98 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_demo_recipe_loads(name):
    recipe = load_recipe(RECIPES[name])
    assert recipe.kind == "upsampler"
    assert recipe.teachers["dinov2"].upsampler.name == name
    assert recipe.output_dir.endswith(f"up_{name}")

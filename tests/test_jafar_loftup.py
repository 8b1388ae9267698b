"""The attention upsamplers ``jafar`` and ``loftup``: shapes at any factor and grid, gradients
to every weight, bf16, exact query chunking, any feature width, and a short multi-view run
on a tiny teacher that lowers the loss."""

from __future__ import annotations

import pytest
import torch

import radiosharp
from radiosharp.builders import build_upsampler
from radiosharp.downsampler import AttentionDownsampler
from radiosharp.multiview import ViewConfig, consistency_step
from radiosharp.registry import DATASETS
from radiosharp.upsampled import UpsampledTeacher

NAMES = ("jafar", "loftup")
P = 14


def no_featurize(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("attention upsamplers never run the teacher")


def inputs(dim: int, h: int, w: int, batch: int = 2, seed: int = 0, image_scale: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, h * P * image_scale, w * P * image_scale, generator=g)
    return images, torch.randn(batch, dim, h, w, generator=g)


def build(name: str, factor: int = 2, dim: int = 16, **options):
    torch.manual_seed(0)
    return build_upsampler({"name": name, **options}, factor=factor, dim=dim, patch_size=P)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor, h, w", [(2, 6, 6), (4, 5, 5), (2, 4, 7), (4, 6, 3)])
def test_output_shape_at_factors_and_non_square_grids(name, factor, h, w):
    up = build(name, factor)
    images, lowres = inputs(16, h, w)
    out = up(images, lowres, no_featurize)
    assert out.shape == (2, 16, factor * h, factor * w) and out.dtype == lowres.dtype
    assert torch.isfinite(out).all()
    # guidance larger than the teacher's input (pooled down inside) gives the same grid
    big, _ = inputs(16, h, w, image_scale=3)
    assert up(big, lowres, no_featurize).shape == out.shape


@pytest.mark.parametrize("name", NAMES)
def test_output_is_a_convex_mix_of_the_lowres_features(name):
    """Values are the raw features: a constant map comes back unchanged, any map stays in its hull."""
    up = build(name)
    images, lowres = inputs(16, 5, 6)
    const = torch.ones_like(lowres) * torch.arange(16.0).view(1, 16, 1, 1)
    torch.testing.assert_close(up(images, const, no_featurize), const.repeat_interleave(2, -1).repeat_interleave(2, -2))
    out = up(images, lowres, no_featurize)
    lo, hi = lowres.amin(dim=(2, 3), keepdim=True), lowres.amax(dim=(2, 3), keepdim=True)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    up = build(name)
    images, lowres = inputs(16, 5, 6)
    target = torch.randn(2, 16, 10, 12, generator=torch.Generator().manual_seed(3))
    ((up(images, lowres, no_featurize) - target) ** 2).mean().backward()
    params = dict(up.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_bf16_is_finite_and_close_to_fp32(name):
    up = build(name, factor=4)
    images, lowres = inputs(16, 5, 6)
    with torch.no_grad():
        want = up(images, lowres, no_featurize)
        got = up.to(torch.bfloat16)(images, lowres.bfloat16(), no_featurize)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 0.03, rel


@pytest.mark.parametrize("name", NAMES)
def test_chunked_attention_equals_unchunked(name):
    chunked, whole = build(name, query_chunk=7), build(name, query_chunk=None)
    whole.load_state_dict(chunked.state_dict())
    images, lowres = inputs(16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            chunked(images, lowres, no_featurize), whole(images, lowres, no_featurize), atol=1e-5, rtol=1e-5
        )
    assert chunked.build_config["query_chunk"] == 7 and whole.build_config["query_chunk"] is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [16, 48])
def test_any_feature_width(name, dim):
    up = build(name, dim=dim)
    images, lowres = inputs(dim, 4, 5)
    assert up(images, lowres, no_featurize).shape == (2, dim, 8, 10)
    with pytest.raises(ValueError, match="channels"):
        up(images, torch.randn(2, dim + 1, 4, 5), no_featurize)


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_fail_with_a_named_error(name):
    with pytest.raises(ValueError, match=f"{name}: dim"):
        build_upsampler(name, factor=2, dim=0, patch_size=P)
    with pytest.raises(ValueError, match="qk_dim"):
        build(name, qk_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="query_chunk"):
        build(name, query_chunk=0)


@pytest.fixture(scope="module")
def teacher():
    return radiosharp.create_teacher("dinov2", size="tiny")


@pytest.fixture(scope="module")
def scenes():
    data = DATASETS.build("synthetic", num_images=8, size=224, seed=0)
    return torch.stack([data[i]["image"] for i in range(len(data))])


@pytest.mark.parametrize("name", NAMES)
def test_a_short_multiview_run_lowers_the_loss(name, teacher, scenes):
    torch.manual_seed(0)
    up = UpsampledTeacher(teacher, radiosharp.create_upsampler(name, teacher=teacher, factor=2))
    down = AttentionDownsampler(teacher.embed_dim, 3)
    views = ViewConfig(num_views=2)
    params = [p for p in [*up.parameters(), *down.parameters()] if p.requires_grad]
    optim = torch.optim.Adam(params, lr=3e-3)
    before = {k: v.detach().clone() for k, v in up.upsampler.state_dict().items()}
    batch = scenes[:2]
    up.train()
    down.train()
    losses = []
    for _ in range(15):
        # the same views every step: the loss moves with the weights, not with the draw
        loss, _ = consistency_step(up, batch, views, down, torch.Generator().manual_seed(0))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert all(loss == loss for loss in losses), losses
    moved = [k for k, v in up.upsampler.state_dict().items() if not torch.equal(v, before[k])]
    assert len(moved) == len(before), set(before) - set(moved)  # every upsampler weight trained
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0], losses

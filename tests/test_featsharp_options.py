"""FeatSharp's choice of base upsampler and the paper's ablation of the block (table 8)."""

from __future__ import annotations

import pytest
import torch
from conftest import PatchTeacher, lowres_of

from radiosharp.builders import build_upsampler

BASES = ["featup", "bilinear", "jafar", "loftup", "naf", "anyup"]


@pytest.fixture(scope="module")
def teacher() -> PatchTeacher:
    return PatchTeacher()


def build(teacher: PatchTeacher, factor: int = 2, **options):
    return build_upsampler(
        {"name": "featsharp", **options}, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
    )


def _inputs(teacher: PatchTeacher, factor: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    images = torch.rand(2, 3, factor * 16, factor * 16)
    return images, lowres_of(teacher, images), (lambda x: teacher(x).features)


@pytest.mark.parametrize("base", BASES)
def test_featsharp_at_initialisation_is_its_base(base, teacher):
    """Zeroed output projections pass the base through exactly; the default init (LayerScale
    1e-6) is within 1e-4 of it."""
    images, lowres, featurize = _inputs(teacher)
    up = build(teacher, base=base)
    assert up.base.build_config["name"] == base
    expected = up.base(images, lowres, featurize)
    torch.testing.assert_close(up(images, lowres, featurize), expected, rtol=0, atol=1e-4)
    up.block.zero_output_projections()
    assert torch.equal(up(images, lowres, featurize), expected)


def test_a_base_mapping_carries_its_own_options(teacher):
    up = build(teacher, base={"name": "jafar", "qk_dim": 16, "num_heads": 2})
    assert up.base.build_config["qk_dim"] == 16
    assert up.build_config["base"] == {"name": "jafar", "qk_dim": 16, "num_heads": 2}


@pytest.mark.parametrize(
    ("inputs", "residual", "buffer"),
    [(["base"], "base", "base"), (["tiles"], "tiles", "tiles"), (["base", "tiles"], "tiles", "tiles")],
)
def test_ablations_pass_their_residual_buffer_through(inputs, residual, buffer, teacher):
    images, lowres, featurize = _inputs(teacher, seed=1)
    up = build(teacher, inputs=inputs, residual=residual)
    assert up.block.norm1.normalized_shape == (len(inputs) * teacher.embed_dim,)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(0.1 * torch.randn_like(p))
    up.block.zero_output_projections()
    out = up(images, lowres, featurize)
    if buffer == "base":
        expected = up.base(images, lowres, featurize)
    else:
        expected = up.tile_buffer(images, lowres, featurize)
    assert torch.equal(out, expected)
    assert (up.base is None) == ("base" not in inputs)
    assert (up.tile_pos is None) == ("tiles" not in inputs)


def test_no_residual_starts_at_full_layer_scale_and_trains(teacher):
    images, lowres, featurize = _inputs(teacher, seed=2)
    up = build(teacher, residual="none")
    assert torch.all(up.block.ls2.gamma == 1.0)
    target = up.tile_buffer(images, lowres, featurize).detach()
    opt = torch.optim.Adam(up.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(up(images, lowres, featurize), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "featsharp"}, "base cannot be featsharp"),
        ({"base": "no_such"}, "no_such"),
        ({"base": "jafar", "jbu_kernel_size": 5}, "apply to base featup only"),
        ({"inputs": ["base", "base"]}, "distinct names"),
        ({"inputs": ["jbu"]}, "distinct names"),
        ({"residual": "jbu"}, "residual must be one of"),
        ({"inputs": ["base"], "residual": "tiles"}, "is not one of the block's inputs"),
    ],
)
def test_bad_options_name_the_problem(options, message, teacher):
    with pytest.raises(Exception, match=message):
        build(teacher, **options)


def test_exports_from_before_the_base_option_load(teacher):
    """Exports written before ``base`` held the JBU stack at ``jbu.``; they load unchanged."""
    up = build(teacher)
    old = {(k.replace("base.jbu.", "jbu.", 1)): v + 0.5 for k, v in up.state_dict().items()}
    assert any(k.startswith("jbu.") for k in old)
    fresh = build(teacher)
    fresh.load_state_dict(old)  # strict
    torch.testing.assert_close(fresh.base.jbu.stages[0].sigma_spatial, up.base.jbu.stages[0].sigma_spatial + 0.5)

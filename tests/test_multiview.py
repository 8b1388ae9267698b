"""The multi-view warp machinery of ``radiosharp.multiview``.

Warps are homographies on normalized coordinates, mapping an OUTPUT cell centre to
the SOURCE point it reads. The tests pin that convention with exact crops and flips,
check that a warp is undone by its inverse, that warping commutes with changing
resolution (what lets one matrix warp an image and a feature map alike), that the
valid mask is exactly the in-bounds set, and that views come from the generator only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import PixelTeacher

from radiosharp.multiview import (
    ViewConfig,
    base_crops,
    fidelity_eval,
    homography_grid,
    masked_mse,
    multiview_loss,
    multiview_views,
    valid_mask,
    view_jitters,
    warp,
)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (a few random sinusoids): bilinear resampling is nearly exact on them."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for _ in range(4):
        fy, fx = (2 * torch.rand(2, n, 3, 1, 1, generator=g) - 1) * 2.5
        phase = 2 * math.pi * torch.rand(n, 3, 1, 1, generator=g)
        out += torch.sin(2 * math.pi * (fy * ys + fx * xs) + phase) / 4
    return out


def affine(scale: float = 1.0, tx: float = 0.0, ty: float = 0.0, flip: float = 1.0) -> torch.Tensor:
    return torch.tensor([[[flip * scale, 0.0, tx], [0.0, scale, ty], [0.0, 0.0, 1.0]]])


def rotation(deg: float, scale: float = 1.0, persp: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    return torch.tensor([[[c, -s, 0.03], [s, c, -0.02], [persp[0], persp[1], 1.0]]])


# ----------------------------------------------------------------------------- exact warps


def test_identity_homography_reproduces_the_input():
    x = torch.randn(2, 5, 12, 9)
    eye = torch.eye(3).expand(2, 3, 3)
    torch.testing.assert_close(warp(x, eye, (12, 9)), x, atol=1e-5, rtol=0)
    assert valid_mask(eye, (12, 9)).eq(1).all()


def test_zoom_and_shift_homography_is_the_analytic_crop():
    x = torch.randn(1, 3, 16, 16)
    # scale 1/2 around (-0.5, 0.5): output cell i reads source pixel i of the lower-left quarter
    crop = warp(x, affine(0.5, -0.5, 0.5), (8, 8))
    torch.testing.assert_close(crop, x[..., 8:16, 0:8], atol=1e-5, rtol=0)
    # a shift by a quarter of the side (8 px of 32) at scale 1/2: rows 4..19, columns 12..27
    y = torch.randn(1, 2, 32, 32)
    torch.testing.assert_close(warp(y, affine(0.5, 0.25, -0.25), (16, 16)), y[..., 4:20, 12:28], atol=1e-5, rtol=0)


def test_flip_homography_mirrors_columns():
    x = torch.randn(2, 3, 10, 14)
    flip = affine(flip=-1.0).expand(2, 3, 3)
    torch.testing.assert_close(warp(x, flip, (10, 14)), x.flip(-1), atol=1e-5, rtol=0)


def test_warp_then_inverse_recovers_the_interior():
    x = smooth_images(1, 96)
    A = rotation(7.0, 0.9, persp=(0.04, -0.03))
    there = warp(x, A, (96, 96))
    back = warp(there, torch.linalg.inv(A), (96, 96))
    # the interior: cells whose inverse image lies 2 px inside the warped map (its bilinear
    # taps then read no zero padding), away from the source border by 2 px too
    margin = torch.diag(torch.tensor([1 / (1 - 4 / 96), 1 / (1 - 4 / 96), 1.0]))[None]
    inside = -F.max_pool2d(-valid_mask(margin @ torch.linalg.inv(A), (96, 96)), 5, 1, 2)
    assert inside.mean() > 0.6
    err = ((back - x).abs() * inside).amax()
    assert err < 0.02, f"round trip error {err:.4f} in the interior"
    # cells whose inverse image is over a pixel outside the warped map read only zeros
    beyond = torch.diag(torch.tensor([1 / (1 + 2 / 96), 1 / (1 + 2 / 96), 1.0]))[None]
    gone = 1 - valid_mask(beyond @ torch.linalg.inv(A), (96, 96))
    assert gone.sum() > 0 and (back * gone).abs().amax() < 1e-6


def test_warp_at_high_res_then_downsample_matches_warp_at_low_res():
    """Resolution independence: one matrix warps an image and a 4x smaller map alike."""
    hi = smooth_images(2, 128, seed=1)
    lo = F.avg_pool2d(hi, 4)
    A = torch.cat([rotation(5.0, 0.8, persp=(0.03, 0.02)), affine(0.7, 0.2, -0.1, flip=-1.0)])
    warped_then_down = F.avg_pool2d(warp(hi, A, (128, 128)), 4)
    down_then_warped = warp(lo, A, (32, 32))
    inside = -F.max_pool2d(-valid_mask(A, (32, 32)), 3, 1, 1)  # away from the border cells
    diff = (warped_then_down - down_then_warped).abs() * inside
    spread = hi.std()
    mean_err = diff.sum() / (inside.sum() * 3)
    assert diff.amax() < 0.1 * spread and mean_err < 0.02 * spread, (diff.amax(), mean_err, spread)
    # what it is not: the same comparison against a slightly different warp fails clearly
    off = warp(lo, A @ affine(1.0, 2 / 32, 0.0).expand(2, 3, 3), (32, 32))
    assert ((off - warped_then_down).abs() * inside).sum() / (inside.sum() * 3) > 5 * mean_err


def test_warp_runs_in_float32_for_low_precision_inputs():
    x = smooth_images(1, 64).to(torch.bfloat16)
    A = rotation(3.0, 0.95)
    out = warp(x, A, (64, 64))
    assert out.dtype == torch.bfloat16
    ref = warp(x.float(), A, (64, 64))
    assert (out.float() - ref).abs().max() < 0.02  # only the final rounding to bf16


def test_warp_rejects_a_count_mismatch():
    with pytest.raises(ValueError, match="one per map"):
        warp(torch.zeros(3, 1, 4, 4), torch.eye(3).expand(2, 3, 3), (4, 4))


# ----------------------------------------------------------------------------- masks and losses


def test_valid_mask_marks_exactly_the_in_bounds_cells():
    A = torch.cat([rotation(20.0, 1.1, persp=(0.1, -0.05)), affine(0.5, 0.75, 0.0), affine(1.0, 1.0, 0.0)])
    size = (9, 12)
    mask = valid_mask(A, size)
    assert mask.shape == (3, 1, 9, 12)
    for n in range(3):
        for i in range(size[0]):
            for j in range(size[1]):
                p = torch.tensor([(j + 0.5) / size[1] * 2 - 1, (i + 0.5) / size[0] * 2 - 1, 1.0], dtype=torch.float64)
                q = A[n].double() @ p
                inside = bool((q[:2] / q[2]).abs().max() <= 1)
                assert bool(mask[n, 0, i, j]) == inside, (n, i, j)
    # a shift by half the side keeps exactly the left half of the columns (x_src = x + 1 <= 1)
    assert mask[2, 0].eq(torch.tensor([1.0] * 6 + [0.0] * 6)).all()
    # a zoom into the right half (x in [0.25, 1.25]) keeps the columns whose centre maps <= 1
    cols = torch.tensor([0.5 * ((j + 0.5) / 12 * 2 - 1) + 0.75 <= 1 for j in range(12)]).float()
    assert 0 < cols.sum() < 12
    assert mask[1, 0].eq(cols).all()


def test_masked_mse_ignores_invalid_cells():
    pred, target = torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 3)
    target[..., 0, :] = 5.0
    mask = torch.ones(1, 1, 3, 3)
    mask[..., 0, :] = 0
    assert masked_mse(pred, target, mask) == 0
    assert masked_mse(pred, target, torch.ones_like(mask)) == pytest.approx(25 / 3)


def test_multiview_loss_is_small_for_consistent_features_and_large_for_wrong_ones():
    """With pixels as 'features' and area pooling as 'teacher', the image itself is the perfect upsample."""
    images = smooth_images(2, 128, seed=2)
    cfg = ViewConfig(num_views=4)
    base, views, jitters = multiview_views(images, cfg, (64, 64), (16, 16), torch.Generator().manual_seed(0))
    down = lambda f: F.interpolate(f, size=(16, 16), mode="bilinear", antialias=True)  # noqa: E731
    good, _ = multiview_loss(base, jitters, views, down)
    shuffled, _ = multiview_loss(base.flip(0), jitters, views, down)
    mirrored, _ = multiview_loss(base.flip(-1).flip(-2), jitters, views, down)
    assert good < 0.05 * shuffled and good < 0.05 * mirrored, (good, shuffled, mirrored)


# ----------------------------------------------------------------------------- views


def test_views_are_reproducible_from_a_seeded_generator():
    images = torch.rand(2, 3, 64, 64)
    cfg = ViewConfig(num_views=3)

    def draw(seed: int):
        return multiview_views(images, cfg, (32, 32), (16, 16), torch.Generator().manual_seed(seed))

    base, views, jitters = draw(7)
    assert base.shape == (2, 3, 32, 32) and views.shape == (6, 3, 16, 16) and jitters.shape == (6, 3, 3)
    for a, b in zip((base, views, jitters), draw(7)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.manual_seed(123)  # the global RNG plays no part when a generator is given
    for a, b in zip((base, views, jitters), draw(7)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(jitters, draw(8)[2])
    # drawn image by image: the first image's views are the same when it is batched alone
    alone = multiview_views(images[:1], cfg, (32, 32), (16, 16), torch.Generator().manual_seed(7))
    torch.testing.assert_close(alone[2], jitters[:3], atol=0, rtol=0)
    torch.testing.assert_close(alone[1], views[:3], atol=1e-6, rtol=0)


def test_views_are_the_jittered_base_crop():
    """View v of image b shows the base crop warped by jitter v (rendered once from the source)."""
    images = smooth_images(2, 128, seed=3)
    cfg = ViewConfig(num_views=3)
    base, views, jitters = multiview_views(images, cfg, (64, 64), (32, 32), torch.Generator().manual_seed(1))
    from_base = F.interpolate(
        warp(base.repeat_interleave(3, 0), jitters, (64, 64)), size=(32, 32), mode="bilinear", antialias=True
    )
    # cells that read the base crop at least 3 px inside its border (no zero padding in reach)
    margin = torch.diag(torch.tensor([1 / (1 - 6 / 64), 1 / (1 - 6 / 64), 1.0]))[None]
    inside = valid_mask(margin @ jitters, (32, 32))
    assert inside.mean() > 0.4
    assert ((views - from_base).abs() * inside).amax() < 0.03


def test_base_crops_stay_inside_and_jitters_follow_the_config():
    g = torch.Generator().manual_seed(0)
    cfg = ViewConfig(zoom=(1.0, 2.0))
    crops = base_crops(256, cfg, g)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
    src = corners @ crops.transpose(1, 2)
    assert src[..., :2].abs().max() <= 1 + 1e-6  # the whole crop reads real pixels
    scales = crops[:, 0, 0]
    assert scales.min() >= 0.5 - 1e-6 and scales.max() <= 1 + 1e-6
    none = view_jitters(8, ViewConfig(jitter_zoom=0, shift=0, rotate_deg=0, perspective=0, hflip=0), g)
    torch.testing.assert_close(none, torch.eye(3).expand(8, 3, 3))
    flips = view_jitters(64, ViewConfig(hflip=1.0, rotate_deg=0, perspective=0, shift=0, jitter_zoom=0), g)
    torch.testing.assert_close(flips, affine(flip=-1.0).expand(64, 3, 3))


def test_view_config_rejects_unknown_keys_and_bad_zoom():
    with pytest.raises(ValueError, match="num_viewz"):
        ViewConfig.model_validate({"num_viewz": 3})
    with pytest.raises(ValueError, match="1 <= low <= high"):
        ViewConfig(zoom=(0.5, 2.0))  # a crop larger than the image would read padding
    with pytest.raises(ValueError, match="1 <= low <= high"):
        ViewConfig(zoom=(2.0, 1.5))


def test_homography_grid_maps_cell_centres():
    grid = homography_grid(torch.eye(3)[None], (2, 4))
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.tensor([-0.5, 0.5]))


# ----------------------------------------------------------------------------- fidelity_eval


def test_fidelity_eval_ranks_a_pixel_perfect_upsampler_above_bilinear():
    import radiosharp
    from radiosharp.upsampled import UpsampledTeacher

    teacher = PixelTeacher()
    images = smooth_images(4, 128, seed=4) + 0.3 * torch.rand(
        4, 3, 128, 128, generator=torch.Generator().manual_seed(0)
    )

    class PixelUpsampler(torch.nn.Module):
        factor = 2

        def forward(self, images, lowres, featurize):
            return featurize(images)  # the teacher run at 2x resolution: exact by construction

    bilinear = radiosharp.build_upsampler({"name": "bilinear"}, factor=2, dim=3, patch_size=4)
    scores = {}
    for name, up in (("pixel", PixelUpsampler()), ("bilinear", bilinear)):
        model = UpsampledTeacher(teacher, up)
        scores[name] = fidelity_eval(model, images, torch.Generator().manual_seed(0), {"num_views": 3})
        again = fidelity_eval(model, images, torch.Generator().manual_seed(0), {"num_views": 3}, batch_size=3)
        assert again["fidelity"] == pytest.approx(scores[name]["fidelity"], rel=1e-5)  # batching-independent
        assert set(scores[name]) == {"loss", "fidelity", "tv", "crf", "mmd"}
    assert scores["pixel"]["fidelity"] > 2 * scores["bilinear"]["fidelity"] > 2, scores
    assert scores["pixel"]["loss"] < scores["bilinear"]["loss"]


def test_covered_mask_drops_cells_whose_downsampling_reads_padding():
    from radiosharp.multiview import covered_mask

    identity = torch.eye(3)[None]
    assert covered_mask(identity, (16, 16), (8, 8), reach=7).all()
    zoom_out = torch.diag(torch.tensor([1.25, 1.25, 1.0]))[None]  # views 25 % beyond the source
    narrow = covered_mask(zoom_out, (16, 16), (8, 8), reach=1)
    wide = covered_mask(zoom_out, (16, 16), (8, 8), reach=7)
    assert narrow[..., 0, :].sum() == 0 and narrow[..., 3:5, 3:5].all()  # border out, centre in
    assert wide.sum() < narrow.sum()  # a wider downsampler window loses more border cells


def test_consistency_step_makes_one_teacher_call_for_views_base_and_tiles():
    import radiosharp
    from radiosharp.multiview import ViewConfig, consistency_step
    from radiosharp.upsampled import UpsampledTeacher

    teacher = radiosharp.build_teacher({"family": "dinov2", "size": "tiny"})
    up = UpsampledTeacher(
        teacher,
        radiosharp.build_upsampler(
            {"name": "featsharp"}, factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size
        ),
    )
    calls = []
    original = teacher.forward
    teacher.forward = lambda x: (calls.append(len(x)), original(x))[1]
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    loss, extra = consistency_step(
        up,
        images,
        ViewConfig(num_views=3),
        lambda f, grid: F.adaptive_avg_pool2d(f, grid),
        torch.Generator().manual_seed(0),
    )
    assert calls == [2 + 2 * 3 + 2 * 4]  # base views + jittered views + tiles, together
    assert torch.isfinite(loss) and extra["hires"].shape == (2, teacher.embed_dim, 16, 16)

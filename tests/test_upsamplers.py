"""Upsamplers, the de-bias buffer, the attention downsampler and UpsampledTeacher.

Most tests use a stand-in teacher that is a patch-embedding conv only: it is purely
patch-local, so running it on u x u tiles of an image is exactly running it on the
whole image — which pins down what the tile mosaic must produce.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import PatchTeacher, lowres_of
from torch import nn

import radiosharp
from radiosharp.contracts import Teacher
from radiosharp.debias import Debias
from radiosharp.downsampler import AttentionDownsampler
from radiosharp.registry import TEACHERS, UPSAMPLERS
from radiosharp.upsampled import UpsampledTeacher, load_upsampled_teacher, save_upsampler
from upsamplers._base import UpsampleSpec, prime_factors
from upsamplers.featsharp import FeatSharpUpsampler
from upsamplers.tiles import tile_mosaic

FACTORS = (1, 2, 3, 4, 14)


class CountingFeaturize:
    """``featurize`` that records the batch size of every call."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher, self.batches = teacher, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.teacher(x).features


@pytest.fixture(scope="module")
def teacher() -> PatchTeacher:
    return PatchTeacher()


def test_every_upsampler_takes_the_spec_as_its_first_flat_options_and_checks_it_in_one_place():
    from upsamplers.jbu import FeatUpUpsampler
    from upsamplers.tiles import build_s2

    for name in UPSAMPLERS.names():
        assert list(UPSAMPLERS.options(name))[:3] == ["factor", "dim", "patch_size"], name
        assert UPSAMPLERS.options(name)["factor"].default == 2 and UPSAMPLERS.options(name)["patch_size"].default == 14
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"^upsampler factor must be an integer >= 1, got {bad!r}$"):
            UpsampleSpec(factor=bad)
    with pytest.raises(ValueError, match=r"^upsampler patch_size must be >= 1, got 0$"):
        radiosharp.create_upsampler("naf", patch_size=0)
    up = FeatUpUpsampler(UpsampleSpec(4, 8, 2))  # built directly, a class takes the spec
    assert (up.factor, up.dim, up.patch_size) == (4, 8, 2)
    assert radiosharp.create_upsampler("anyup", factor=2, dim=384).dim == 0  # feature-agnostic: any width
    s2 = build_s2(3, 4, 7, 0.25)  # the registered builder takes the flat options, positionally too
    assert (s2.factor, s2.dim, s2.patch_size, s2.beta) == (3, 4, 7, 0.25)
    assert s2.build_config == {"name": "s2", "beta": 0.25}  # the spec is structural: filled from the teacher


def build(name: str, factor: int, teacher: Teacher, **options) -> nn.Module:
    return radiosharp.build_upsampler(
        {"name": name, **options}, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
    )


def test_registry_has_every_upsampler():
    assert {"bilinear", "tiles", "s2", "featup", "featsharp"} <= set(UPSAMPLERS.names())


@pytest.mark.parametrize("name", sorted(UPSAMPLERS.names()))
@pytest.mark.parametrize("u", FACTORS)
def test_shapes_on_stand_in_teacher(name, u, teacher):
    images = torch.rand(2, 3, u * 16, u * 16)
    up = build(name, u, teacher)
    out = up(images, lowres_of(teacher, images), lambda x: teacher(x).features)
    assert out.shape == (2, 8, 4 * u, 4 * u) and torch.isfinite(out).all()
    assert up.factor == u and up.build_config["name"] == name


REAL_FAMILIES = [f for f in ("dinov2", "dfn_clip", "siglip", "sam") if f in TEACHERS.names()]


@pytest.fixture(scope="module")
def tiny_teachers() -> dict[str, Teacher]:
    return {f: radiosharp.build_teacher({"family": f, "size": "tiny"}) for f in REAL_FAMILIES}


@pytest.mark.skipif(not REAL_FAMILIES, reason="no tiny teachers registered yet")
@pytest.mark.parametrize("name", sorted(UPSAMPLERS.names()))
def test_shapes_on_tiny_real_teachers(name, tiny_teachers):
    for family, real in tiny_teachers.items():
        factors = (1, 2, 3, 4, 14) if family == "dinov2" else (1, 2, 3)
        for u in factors:
            model = UpsampledTeacher(real, build(name, u, real), Debias(real.embed_dim, real.feature_grid))
            with torch.no_grad():
                out = model(torch.rand(1, 3, u * real.native_size, u * real.native_size))
            grid = u * real.feature_grid
            assert out.features.shape == (1, real.embed_dim, grid, grid), (family, name, u)
            if real.summary_dim is not None:
                assert out.summary.shape == (1, real.summary_dim)


# ----------------------------------------------------------------------------- tiles, s2, bilinear


def test_tiles_at_factor_one_are_the_teacher(teacher):
    images = torch.rand(3, 3, 16, 16)
    out = build("tiles", 1, teacher)(images, teacher(images).features, lambda x: teacher(x).features)
    torch.testing.assert_close(out, teacher(images).features, rtol=0, atol=0)


@pytest.mark.parametrize("u", (2, 3, 4))
def test_tiles_of_patch_local_teacher_equal_the_teacher_at_u_times_the_input(u, teacher):
    """Images at u x the teacher size: each tile is already teacher-sized (no resize),
    and a patch-local teacher sees the same patches either way."""
    images = torch.rand(2, 3, u * 16, u * 16)
    out = build("tiles", u, teacher)(images, lowres_of(teacher, images), lambda x: teacher(x).features)
    torch.testing.assert_close(out, teacher(images).features, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ("tiles", "s2", "featsharp"))
def test_tile_based_upsamplers_call_featurize_once_with_every_tile(name, teacher):
    u, b = 3, 2
    images = torch.rand(b, 3, u * 16, u * 16)
    featurize = CountingFeaturize(teacher)
    build(name, u, teacher)(images, lowres_of(teacher, images), featurize)
    assert featurize.batches == [b * u * u]


def test_tile_mosaic_places_tile_ij_at_block_ij():
    images = torch.zeros(1, 3, 6, 9)
    for i in range(3):
        for j in range(3):
            images[..., 2 * i : 2 * i + 2, 3 * j : 3 * j + 3] = 10 * i + j
    out = tile_mosaic(images, 3, lambda x: x[:, :1, :1, :1].expand(-1, 1, 2, 2), (2, 3))
    expected = torch.tensor([[10.0 * i + j for j in range(3)] for i in range(3)])
    torch.testing.assert_close(out[0, 0, ::2, ::2], expected)
    assert out.shape == (1, 1, 6, 6)
    # Sides that u does not divide are resized to u * tile_size first.
    assert tile_mosaic(torch.rand(1, 3, 50, 47), 3, lambda x: x[:, :, ::2, ::2], (8, 8)).shape == (1, 3, 12, 12)


def test_bilinear_and_s2_are_their_formulas(teacher):
    u = 3
    images = torch.rand(2, 3, u * 16, u * 16)
    lowres, featurize = lowres_of(teacher, images), (lambda x: teacher(x).features)
    smooth = F.interpolate(lowres, scale_factor=u, mode="bilinear", align_corners=False)
    torch.testing.assert_close(build("bilinear", u, teacher)(images, lowres, featurize), smooth)
    tiles = build("tiles", u, teacher)(images, lowres, featurize)
    s2 = build("s2", u, teacher, beta=0.25)(images, lowres, featurize)
    torch.testing.assert_close(s2, 0.25 * smooth + 0.75 * tiles)
    with pytest.raises(ValueError, match="beta must be in"):
        build("s2", u, teacher, beta=1.5)


def test_bad_inputs_and_options_have_clear_errors(teacher):
    up = build("featup", 2, teacher)
    with pytest.raises(ValueError, match=r"expected images \[B,3,H,W\]"):
        up(torch.rand(1, 4, 32, 32), torch.rand(1, 8, 4, 4), None)
    with pytest.raises(ValueError, match="built for 8-channel features, got 5"):
        up(torch.rand(1, 3, 32, 32), torch.rand(1, 5, 4, 4), None)
    with pytest.raises(ValueError, match="factor must be an integer >= 1"):
        build("bilinear", 0, teacher)
    with pytest.raises(ValueError, match="window_size must be odd"):
        build("featsharp", 2, teacher, window_size=4)
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide .* valid choices: 1, 2, 4, 8, 16"):
        build("featsharp", 2, teacher, num_heads=3)
    with pytest.raises(ValueError, match="unknown key 'upsampler.radius'.*valid keys"):
        build("featup", 2, teacher, radius=3)


def test_prime_factors_are_descending():
    assert prime_factors(14) == [7, 2] and prime_factors(4) == [2, 2] and prime_factors(1) == []
    assert prime_factors(12) == [3, 2, 2] and prime_factors(13) == [13]


# ----------------------------------------------------------------------------- featup, featsharp


@pytest.mark.parametrize("u", (1, 2, 3, 14))
def test_featsharp_with_zeroed_output_projections_is_exactly_its_jbu_path(u, teacher):
    torch.manual_seed(u)
    up = build("featsharp", u, teacher)
    assert isinstance(up, FeatSharpUpsampler)
    with torch.no_grad():
        for p in up.parameters():  # any weights: the equality must not depend on the init
            p.add_(0.1 * torch.randn_like(p))
    up.block.zero_output_projections()
    images = torch.rand(2, 3, u * 16, u * 16)
    lowres = lowres_of(teacher, images)
    out = up(images, lowres, lambda x: teacher(x).features)
    assert torch.equal(out, up.base.jbu(lowres, images))


def test_featsharp_starts_near_its_jbu_path_and_learns_from_the_tiles(teacher):
    """At init (LayerScale 1e-6) the output is the JBU buffer up to ~1e-6; a few steps
    toward the tile mosaic reduce the error: the block can use the tiles."""
    torch.manual_seed(0)
    u = 2
    up = build("featsharp", u, teacher, layer_scale_init=1e-6)
    images = torch.rand(2, 3, u * 16, u * 16)
    lowres, featurize = lowres_of(teacher, images), (lambda x: teacher(x).features)
    torch.testing.assert_close(up(images, lowres, featurize), up.base.jbu(lowres, images), rtol=0, atol=1e-4)
    target = tile_mosaic(images, u, featurize, (16, 16))
    opt = torch.optim.Adam(up.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(up(images, lowres, featurize), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]  # the JBU buffer alone stays near losses[0]


def test_featup_at_factor_one_is_identity(teacher):
    images = torch.rand(2, 3, 16, 16)
    lowres = lowres_of(teacher, images)
    assert torch.equal(build("featup", 1, teacher)(images, lowres, None), lowres)


# ----------------------------------------------------------------------------- de-bias, downsampler


def test_debias_adds_its_buffer_resized_to_the_grid():
    debias = Debias(4, (3, 5))
    features = torch.randn(2, 4, 3, 5)
    assert torch.equal(debias(features), features)  # zeros at init
    with torch.no_grad():
        debias.bias.normal_()
    torch.testing.assert_close(debias(features), features + debias.bias)
    bigger = torch.randn(2, 4, 6, 10)
    expected = bigger + F.interpolate(debias.bias[None], size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(debias(bigger), expected)
    with pytest.raises(ValueError, match=r"expected features \[B,4,h,w\]"):
        debias(torch.randn(1, 3, 3, 5))


def test_debias_reaches_the_global_view_and_every_tile(teacher):
    """A constant de-bias c shifts every tile (and so the whole mosaic) by c."""
    u = 2
    debias = Debias(8, teacher.feature_grid)
    with torch.no_grad():
        debias.bias.fill_(0.5)
    model = UpsampledTeacher(teacher, build("tiles", u, teacher), debias)
    images = torch.rand(1, 3, u * 16, u * 16)
    torch.testing.assert_close(model(images).features, teacher(images).features + 0.5, rtol=1e-6, atol=1e-6)


def _naive_downsample(down: AttentionDownsampler, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Explicit loops: window of k around each cell (start s*i - (k-s)//2 rounded as in the
    module), taps outside the map excluded, softmax of content*w + b."""
    k = down.kernel_size
    n, c, big_h, big_w = x.shape
    h, w = big_h // stride, big_w // stride
    content = down.logit_proj(x)
    out = torch.zeros(n, c, h, w, dtype=x.dtype)
    start = lambda i: int(torch.floor(torch.tensor((i + 0.5) * stride - 0.5 - (k - 1) / 2 + 0.5)))  # noqa: E731
    for i in range(h):
        for j in range(w):
            logits, values = [], []
            for ty in range(k):
                for tx in range(k):
                    y, xx = start(i) + ty, start(j) + tx
                    if 0 <= y < big_h and 0 <= xx < big_w:
                        logits.append(content[:, 0, y, xx] * down.tap_scale[ty, tx] + down.tap_bias[ty, tx])
                        values.append(x[:, :, y, xx])
            weights = torch.stack(logits, 1).softmax(1)  # [n, taps]
            out[:, :, i, j] = (torch.stack(values, 2) * weights[:, None]).sum(2)
    return out


@pytest.mark.parametrize("stride,k", [(2, 7), (3, 3), (4, 2)])
def test_attention_downsampler_matches_naive_loops_in_eval(stride, k):
    torch.manual_seed(stride)
    down = AttentionDownsampler(5, kernel_size=k).double().eval()
    x = torch.randn(2, 5, 4 * stride, 3 * stride, dtype=torch.float64)
    out = down(x, (4, 3))
    torch.testing.assert_close(out, _naive_downsample(down, x, stride))
    torch.testing.assert_close(down(x, (4, 3)), out, rtol=0, atol=0)  # eval: no random mask


@pytest.mark.parametrize("size,out,k", [((24, 24), (12, 12), 7), ((56, 42), (8, 6), 7), ((13, 17), (13, 17), 3)])
def test_attention_downsampler_unfold_path_equals_the_tap_loop_in_training(size, out, k):
    """Evenly spaced windows take one unfold; the tap-by-tap loop (``window_method = "taps"``, also
    used for uneven windows) is the reference: same output and gradients, random mask and dropout
    included."""
    down = AttentionDownsampler(6, kernel_size=k).double().train()
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)

    def run():
        torch.manual_seed(3)
        y = down(x, out)
        return [
            y,
            *torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [x, *down.parameters()]),
        ]

    fast = run()
    down.window_method = "taps"
    slow = run()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    down.window_method = "unfold"
    with pytest.raises(ValueError, match="window_method must be one of"):
        down(x, out)


def test_attention_downsampler_sizes_constants_and_training_mask():
    down = AttentionDownsampler(4, kernel_size=7, output_size=5)
    const = torch.full((2, 4, 20, 20), 3.0)
    torch.testing.assert_close(down.eval()(const), torch.full((2, 4, 5, 5), 3.0))  # weights sum to 1
    assert down(torch.randn(1, 4, 70, 70), (5, 5)).shape == (1, 4, 5, 5)  # stride 14
    assert down(torch.randn(1, 4, 20, 14), (7, 3)).shape == (1, 4, 7, 3)  # non-integer ratios
    down.train()
    x = torch.randn(2, 4, 20, 20)
    torch.manual_seed(0)
    a = down(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, down(x))  # the random mask (and dropout) act in training only
    with pytest.raises(ValueError, match="output_size"):
        AttentionDownsampler(4)(x)


# ----------------------------------------------------------------------------- UpsampledTeacher


def test_upsampled_teacher_is_a_teacher_at_u_times_resolution(teacher):
    u = 3
    model = UpsampledTeacher(teacher, build("featsharp", u, teacher), Debias(8, 4))
    assert isinstance(model, Teacher)
    assert (model.patch_size, model.native_size, model.embed_dim, model.summary_dim) == (4, 48, 8, 6)
    images = torch.rand(2, 3, 48, 36)  # non-square: 12 x 9 low-res grid per side / u
    out = model(images)
    assert out.features.shape == (2, 8, 12, 9)
    small = F.interpolate(images, size=(16, 12), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out.summary, teacher(small).summary)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 12.*nearest valid sizes: 36x36, 36x48"):
        model(torch.rand(1, 3, 40, 40))


def test_upsampled_teacher_trains_only_the_upsampler_and_debias(teacher):
    model = UpsampledTeacher(teacher, build("featup", 2, teacher), Debias(8, 4))
    own = {id(p) for p in model.parameters()}
    assert own and not own & {id(p) for p in teacher.parameters()}
    assert all(not k.startswith("teacher") for k in model.state_dict())
    model.train()
    assert model.training and model.upsampler.training and not teacher.training
    model.double()
    assert teacher.embed.weight.dtype == torch.float64  # the teacher follows moves and casts
    model.float()
    images = torch.rand(1, 3, 32, 32)
    model(images).features.square().mean().backward()
    assert model.debias.bias.grad is not None and teacher.embed.weight.grad is None


def test_upsampled_teacher_normalizes_with_phis_and_maps_back(teacher):
    from radiosharp.phis import PhiS

    torch.manual_seed(0)
    a = torch.randn(8, 8)
    phi = PhiS.from_stats(torch.randn(8), a @ a.T + 0.1 * torch.eye(8))
    images = torch.rand(2, 3, 16, 16)
    seen = {}

    class Spy(nn.Module):  # a bilinear-like upsampler that records what it is given
        factor = 1

        def forward(self, images, lowres, featurize):
            seen["lowres"] = lowres
            return lowres

    out = UpsampledTeacher(teacher, Spy(), phi_s=phi)(images)
    raw = teacher(images).features
    torch.testing.assert_close(seen["lowres"], phi(raw))  # the upsampler works in PHI-S space
    torch.testing.assert_close(out.features, raw, rtol=1e-4, atol=1e-4)  # ... and the output is mapped back


def _perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def test_export_round_trip_gives_equal_outputs(tmp_path, teacher):
    from radiosharp.phis import PhiS

    torch.manual_seed(1)
    a = torch.randn(8, 8)
    phi = PhiS.from_stats(torch.randn(8), a @ a.T + 0.1 * torch.eye(8))
    model = _perturbed(UpsampledTeacher(teacher, build("featsharp", 2, teacher, window_size=3), Debias(8, 4), phi))
    model.eval()
    save_upsampler(tmp_path / "run", model, {"teacher": None})
    loaded = load_upsampled_teacher(tmp_path / "run", teacher=teacher)
    assert loaded.factor == 2 and loaded.upsampler.block.attn.window_size == 3 and not loaded.training
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).features, model(images).features, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no teacher config"):
        load_upsampled_teacher(tmp_path / "run")
    other = PatchTeacher()
    other.embed_dim = 5
    with pytest.raises(ValueError, match="8-channel features"):
        load_upsampled_teacher(tmp_path / "run", teacher=other)


@pytest.mark.skipif("dinov2" not in REAL_FAMILIES, reason="tiny dinov2 teacher not registered yet")
def test_export_round_trip_rebuilds_the_teacher_from_its_config(tmp_path, tiny_teachers):
    cfg = {"family": "dinov2", "size": "tiny"}
    real = radiosharp.build_teacher(cfg)
    model = _perturbed(UpsampledTeacher(real, build("featup", 2, real), Debias(real.embed_dim, real.feature_grid)))
    save_upsampler(tmp_path, model.eval(), {"teacher": cfg})
    loaded = load_upsampled_teacher(tmp_path)
    images = torch.rand(1, 3, 2 * real.native_size, 2 * real.native_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).features, model(images).features, rtol=1e-6, atol=1e-6)


def test_export_loading_is_strict(tmp_path, teacher):
    model = UpsampledTeacher(teacher, build("featup", 2, teacher), Debias(8, 4))
    save_upsampler(tmp_path, model, {"teacher": None})
    import json

    meta = json.loads((tmp_path / "model.json").read_text())
    meta["config"]["debias"] = None  # the weights still hold debias.bias
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_upsampled_teacher(tmp_path, teacher=teacher)


@pytest.mark.parametrize("name", ["featsharp", "tiles", "bilinear"])
def test_upsampled_teacher_runs_global_view_and_tiles_in_one_teacher_call(name):
    import radiosharp

    teacher = radiosharp.build_teacher({"family": "dinov2", "size": "tiny"})
    up = UpsampledTeacher(
        teacher,
        radiosharp.build_upsampler({"name": name}, factor=2, dim=teacher.embed_dim, patch_size=teacher.patch_size),
    )
    calls = []
    original = teacher.forward
    teacher.forward = lambda x: (calls.append(len(x)), original(x))[1]
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = up(images)
        assert calls == [2 + (8 if up.upsampler.uses_tiles else 0)]  # 2 global views (+ 2*2*2 tiles)
        # the same result as featurizing the global view and the tiles separately
        lowres = up.featurize(
            torch.nn.functional.interpolate(
                images, size=(112, 112), mode="bilinear", antialias=True, align_corners=False
            )
        )
        separate = up.upsampler(images, lowres, up.featurize)
    torch.testing.assert_close(out.features, separate, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["featsharp", "featup", "bilinear"])
def test_a_bf16_upsampled_teacher_takes_float32_images(name, teacher):
    """The whole upsampled teacher cast to bf16 (inference, or DeepSpeed's cast in training):
    float32 images go in and the output stays close to the float32 one."""
    from radiosharp.phis import PhiS

    torch.manual_seed(2)
    model = _perturbed(UpsampledTeacher(PatchTeacher(), build(name, 2, teacher), Debias(8, 4), PhiS.identity(8)))
    images = torch.rand(1, 3, 32, 32)
    ref = model.eval()(images).features
    out = model.to(torch.bfloat16)(images).features
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_jbu_loads_exports_with_0_dim_scalars(teacher):
    """Exports written before 0.2.0 stored the JBU scalars as 0-dim tensors."""
    up = build("featup", 2, teacher)
    state = {
        k: (v.reshape(()) if k.endswith(("log_range_temperature", "sigma_spatial")) else v) + 0.25
        for k, v in up.state_dict().items()
    }
    fresh = build("featup", 2, teacher)
    fresh.load_state_dict(state)
    assert fresh.jbu.stages[0].sigma_spatial.shape == (1,)
    assert fresh.jbu.stages[0].sigma_spatial.item() == pytest.approx(1.25)

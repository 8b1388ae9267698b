"""Bounded-memory upsampling (upsamplers._chunked) and activation checkpointing of the upsamplers.

Chunked calls must equal the unbounded call (1e-5) for every registered upsampler, border tiles
included: the smallest chunks make every tile a border tile of some crop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import PatchTeacher

import radiosharp
from radiosharp.bench.measure import cpu_peak_bytes
from radiosharp.registry import UPSAMPLERS
from radiosharp.upsampled import MAX_MEMORY_ENV, UpsampledTeacher
from upsamplers._chunked import chunked_upsample, plan_chunks

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher() -> PatchTeacher:
    return PatchTeacher()


def inputs(teacher: PatchTeacher, u: int, cells: tuple[int, int] = (7, 5), batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = teacher.patch_size
    images = torch.rand(batch, 3, u * p * cells[0], u * p * cells[1], generator=g)
    with torch.no_grad():
        lowres = teacher(F.interpolate(images, size=(p * cells[0], p * cells[1]), mode="bilinear", antialias=True))
    return images, lowres.features


def build(name: str, u: int, teacher: PatchTeacher, **options) -> torch.nn.Module:
    cfg = {"name": name, **options}
    return radiosharp.build_upsampler(cfg, factor=u, dim=teacher.embed_dim, patch_size=teacher.patch_size).eval()


def check_equal(up, images, lowres, featurize, **budget) -> None:
    with torch.no_grad():
        ref = up(images, lowres, featurize)
        out = chunked_upsample(up, images, lowres, featurize, **budget)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(UPSAMPLERS.names()))
@pytest.mark.parametrize("u", (2, 3, 4))
def test_chunked_equals_unbounded_for_every_upsampler(name, u, teacher):
    images, lowres = inputs(teacher, u)
    up = build(name, u, teacher)
    featurize = lambda x: teacher(x).features
    for max_pixels in (1, 300):  # one-cell tiles (all border tiles) and a few cells per tile
        check_equal(up, images, lowres, featurize, max_pixels=max_pixels)
    check_equal(up, images, lowres, featurize, max_memory_mb=0.05)


@pytest.mark.parametrize(
    "name, options",
    [
        ("featup", {"border": "reflect"}),
        ("featup", {"pre_upsample": "bicubic", "fixup": True}),
        ("featup", {"factor_order": "ascending", "kernel_size": 5}),
        ("featsharp", {"base": {"name": "jafar"}}),
        ("featsharp", {"inputs": ["tiles"], "residual": "tiles", "window_size": 7}),
        ("featsharp", {"residual": "none", "base": "bilinear"}),
        ("s2", {"beta": 0.3}),
        ("naf", {"kernel_size": 5, "image_scale": 2}),
        ("anyup", {"kernel_size": 7}),
    ],
)
def test_chunked_equals_unbounded_for_options(name, options, teacher):
    u = 6 if name == "featup" else 4  # featup 6x: two stages (3x, 2x)
    images, lowres = inputs(teacher, u, cells=(6, 5), batch=1)
    up = build(name, u, teacher, **options)
    featurize = lambda x: teacher(x).features
    for max_pixels in (1, 500):
        check_equal(up, images, lowres, featurize, max_pixels=max_pixels)


def test_precomputed_tile_features_are_used(teacher):
    images, lowres = inputs(teacher, 2)
    up = build("featsharp", 2, teacher)
    tiles = teacher(up.tile_inputs(images, up.teacher_input_size(lowres))).features

    def refuse(_x):
        raise AssertionError("featurize called although tile features were given")

    with torch.no_grad():
        ref = up(images, lowres, refuse, tile_features=tiles)
        out = chunked_upsample(up, images, lowres, refuse, max_pixels=100, tile_features=tiles)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_plan_follows_the_budget(teacher):
    _, lowres = inputs(teacher, 4, cells=(32, 32), batch=1)
    lowres = lowres.repeat(1, 16, 1, 1)  # 128 channels
    up = radiosharp.build_upsampler("featup", factor=4, dim=128, patch_size=4)
    small, large = plan_chunks(up, lowres, max_memory_mb=8), plan_chunks(up, lowres, max_memory_mb=64)
    assert small.strategy == "featup" and small.halo_cells == 4
    assert 1 <= small.tile_cells < large.tile_cells <= 32
    assert small.chunk_bytes <= 8 * 2**20 and small.within_budget
    assert plan_chunks(up, lowres, max_pixels=10).within_budget is False  # not even one cell with its halo
    jafar = radiosharp.build_upsampler("jafar", factor=4, dim=128, patch_size=4)
    q_small, q_large = plan_chunks(jafar, lowres, max_memory_mb=8), plan_chunks(jafar, lowres, max_memory_mb=64)
    assert q_small.strategy == "queries" and 1 <= q_small.query_chunk < q_large.query_chunk
    with pytest.raises(ValueError, match="max_memory_mb must be > 0"):
        plan_chunks(up, lowres, max_memory_mb=0)


@pytest.mark.parametrize(
    "name",
    # featsharp (~27 s) in test-all; its bounded call is measured by tests/test_bench_memory.py
    ["bilinear", "featup", "naf", "anyup", "jafar", "loftup", pytest.param("featsharp", marks=pytest.mark.slow), "s2"],
)
def test_measured_peak_fits_the_budget(name):
    """The extra memory of the chunked call (CPU profiler), beyond the output it returns, stays under the
    budget (and so under the unbounded call's where that exceeds it)."""
    c, u, cells, budget_mb = 128, 4, 16, 14.0
    conv = torch.nn.Conv2d(3, c, 4, 4)
    featurize = lambda x: conv(x)
    up = radiosharp.build_upsampler(name, factor=u, dim=c, patch_size=4).eval()
    images = torch.rand(1, 3, u * 4 * cells, u * 4 * cells)
    with torch.no_grad():
        lowres = conv(F.interpolate(images, size=(4 * cells, 4 * cells), mode="bilinear", antialias=True))
        plan = plan_chunks(up, lowres, max_memory_mb=budget_mb)
        assert plan.within_budget, plan
        output = c * (u * cells) ** 2 * 4
        bounded = cpu_peak_bytes(lambda: chunked_upsample(up, images, lowres, featurize, max_memory_mb=budget_mb))
        unbounded = cpu_peak_bytes(lambda: up(images, lowres, featurize))
    assert bounded - output <= budget_mb * 2**20, (plan, (bounded - output) / 2**20)
    if unbounded - output > budget_mb * 2**20:
        assert bounded < unbounded


def test_upsampled_teacher_with_a_budget_gives_the_same_features(teacher, monkeypatch):
    images = torch.rand(2, 3, 4 * 4 * 6, 4 * 4 * 5)
    for name in ("featup", "featsharp"):
        up = build(name, 4, teacher)
        plain = UpsampledTeacher(teacher, up).eval()
        bounded = UpsampledTeacher(teacher, up, max_memory_mb=0.01).eval()
        with torch.no_grad():
            a, b = plain(images), bounded(images)
        torch.testing.assert_close(b.features, a.features, atol=ATOL, rtol=0)
        torch.testing.assert_close(b.summary, a.summary)
        assert "max_memory_mb=0.01" in repr(bounded)
    monkeypatch.setenv(MAX_MEMORY_ENV, "12.5")
    assert UpsampledTeacher(teacher, build("bilinear", 2, teacher)).max_memory_mb == 12.5
    monkeypatch.setenv(MAX_MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_MEMORY_ENV):
        UpsampledTeacher(teacher, build("bilinear", 2, teacher))


def test_upsampled_tiny_sam_at_4x_within_a_budget():
    """A SAM-architecture teacher (tiny) at 4x: bounded == unbounded."""
    sam = radiosharp.build_teacher({"family": "sam", "size": "tiny"})
    up = radiosharp.build_upsampler("featup", factor=4, dim=sam.embed_dim, patch_size=sam.patch_size)
    images = torch.rand(1, 3, 4 * sam.native_size, 4 * sam.native_size)
    with torch.no_grad():
        a = UpsampledTeacher(sam, up).eval()(images).features
        b = UpsampledTeacher(sam, up, max_memory_mb=1).eval()(images).features
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name, options",
    [
        ("featup", {}),
        ("featup", {"fixup": True}),  # dropout inside the checkpointed stages: the RNG state is replayed
        ("featsharp", {}),
        ("featsharp", {"base": {"name": "featup", "fixup": True}}),
    ],
)
def test_checkpoint_activations_gives_the_same_loss_and_gradients(name, options, teacher):
    images, lowres = inputs(teacher, 4, cells=(4, 4))
    featurize = lambda x: teacher(x).features
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        up = build(name, 4, teacher, **options, checkpoint_activations=checkpoint).train()
        if name == "featsharp":
            for layer in (up.block.attn.proj, up.block.mlp.w_out):  # non-trivial gradients everywhere
                torch.nn.init.normal_(layer.weight, std=0.05)
            up.block.ls1.gamma.data.fill_(0.5)
            up.block.ls2.gamma.data.fill_(0.5)
        torch.manual_seed(1)
        loss = (up(images, lowres, featurize) ** 2).mean()
        grads = torch.autograd.grad(loss, [p for p in up.parameters() if p.requires_grad])
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-6)


def test_checkpoint_activations_option_is_checked(teacher):
    with pytest.raises(ValueError, match="checkpoint_activations must be true or false"):
        build("featup", 2, teacher, checkpoint_activations="yes")
    up = build("featsharp", 2, teacher, checkpoint_activations=True)
    assert up.build_config["checkpoint_activations"] is True and up.base.jbu.checkpoint_activations


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["featup", "featsharp", "naf", "jafar"])
def test_chunked_on_cuda_equals_unbounded_and_fits_the_budget(name):
    """On the GPU: the same output, and the CUDA peak (max_memory_allocated) beyond the output under the budget."""
    from radiosharp.bench.measure import cuda_peak_bytes

    dev = torch.device("cuda")
    c, u, cells, budget_mb = 384, 4, 32, 64.0
    conv = torch.nn.Conv2d(3, c, 14, 14).to(dev)
    featurize = lambda x: conv(x)
    up = radiosharp.build_upsampler(name, factor=u, dim=c, patch_size=14).to(dev).eval()
    images = torch.rand(1, 3, u * 14 * cells, u * 14 * cells, device=dev)
    with torch.no_grad():
        lowres = conv(F.interpolate(images, size=(14 * cells, 14 * cells), mode="bilinear", antialias=True))
        ref = up(images, lowres, featurize)
        out = chunked_upsample(up, images, lowres, featurize, max_memory_mb=budget_mb)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
        del ref, out
        peak = cuda_peak_bytes(lambda: chunked_upsample(up, images, lowres, featurize, max_memory_mb=budget_mb), dev)
    output = c * (u * cells) ** 2 * 4
    assert peak - output <= budget_mb * 2**20 * 1.25  # CUDA kernels' own workspaces: some slack


def test_recipe_key_max_memory_mb_reaches_the_upsampled_teacher():
    from radiosharp.recipe import Recipe, RecipeError
    from radiosharp.trainers.common import build_upsampled

    teacher = PatchTeacher()
    base = {"family": "dinov2", "size": "tiny", "upsampler": {"name": "tiles", "factor": 2}}
    recipe = Recipe.model_validate({"kind": "distill", "teachers": {"dino": {**base, "max_memory_mb": 0.01}}})
    slot = build_upsampled("dino", recipe.teachers["dino"], teacher)
    assert slot.max_memory_mb == 0.01
    recipe = Recipe.model_validate({"kind": "distill", "teachers": {"dino": base}})
    assert build_upsampled("dino", recipe.teachers["dino"], teacher).max_memory_mb is None
    with pytest.raises((RecipeError, ValueError), match="max_memory_mb"):
        Recipe.model_validate({"kind": "distill", "teachers": {"dino": {**base, "max_memory_mb": 0}}})

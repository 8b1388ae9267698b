"""The four teacher families: shapes, the library's own outputs, seeding, freezing,
size errors, and every way weights arrive (local file, hub cache, neither)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
import torch
from conftest import fake_hub_repo
from safetensors.torch import save_file

from radiosharp.registry import TEACHERS
from teachers._contract import resize_pos_grid
from teachers._weights import MissingWeightsError, WeightsMismatchError

SPECIFIC = ("dfn_clip", "siglip", "dinov2", "sam")  # families with library-reference tests below


def source_cases(families) -> dict[str, tuple[str, dict]]:
    """One case per family and per choice of its builder's ``source`` (read from the registry)."""
    cases: dict[str, tuple[str, dict]] = {}
    for family in families:
        source = TEACHERS.options(family).get("source")
        hints = typing.get_type_hints(TEACHERS.get(family))
        choices = typing.get_args(hints["source"]) if source is not None else ()
        if not choices:
            cases[family] = (family, {})
        for choice in choices:
            cases[f"{family}-{choice}"] = (family, {} if choice == source.default else {"source": choice})
    return cases


# case -> (family, options); EXPECTED: family -> (patch, tiny native, embed_dim, summary_dim)
CASES = source_cases(SPECIFIC)
EXPECTED = {
    "dfn_clip": (14, 112, 64, 24),
    "siglip": (14, 112, 48, 48),
    "dinov2": (14, 112, 32, 32),
    "sam": (16, 128, 40, None),
}
DEFAULT_IDS = {
    "dfn_clip": "ViT-H-14-378-quickgelu",
    "siglip-open_clip": "ViT-SO400M-14-SigLIP-384",
    "siglip-hf": "google/siglip2-so400m-patch14-384",
    "dinov2-timm": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2-hf": "facebook/dinov2-with-registers-large",
    "sam": "facebook/sam-vit-huge",
}


def tiny(case: str, **extra):
    family, options = CASES[case]
    return TEACHERS.build(family, size="tiny", **options, **extra)


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {case: tiny(case) for case in CASES}


def test_registry_lists_the_four_families():
    assert {"dfn_clip", "siglip", "dinov2", "sam"} <= set(TEACHERS.names())
    assert list(CASES) == ["dfn_clip", "siglip-open_clip", "siglip-hf", "dinov2-timm", "dinov2-hf", "sam"]


@pytest.mark.parametrize("case", source_cases(TEACHERS.names()))
def test_every_registered_teacher_meets_the_contract(case):
    """Any family in the registry (a new plug-in too): tiny build, frozen, shapes, seeded."""
    family, options = source_cases(TEACHERS.names())[case]
    teacher = TEACHERS.build(family, size="tiny", seed=1, **options)
    n, p = teacher.native_size, teacher.patch_size
    assert n % p == 0 and teacher.embed_dim > 0
    assert not teacher.training and not any(q.requires_grad for q in teacher.parameters())
    x = images(2, n, n)
    out = teacher(x)
    assert out.features.shape == (2, teacher.embed_dim, n // p, n // p) and not out.features.requires_grad
    if teacher.summary_dim is None:
        assert out.summary is None
    else:
        assert out.summary.shape == (2, teacher.summary_dim)
    again = TEACHERS.build(family, size="tiny", seed=1, **options)(x)
    assert torch.equal(again.features, out.features)


@pytest.mark.parametrize("case", CASES)
def test_shapes_at_native_and_non_square_sizes(teachers, case):
    teacher = teachers[case]
    patch, native, embed_dim, summary_dim = EXPECTED[CASES[case][0]]
    assert (teacher.patch_size, teacher.native_size, teacher.embed_dim, teacher.summary_dim) == (
        patch,
        native,
        embed_dim,
        summary_dim,
    )
    for batch, height, width in [(2, native, native), (1, native - 2 * patch, native + 2 * patch)]:
        out = teacher(images(batch, height, width))
        assert out.features.shape == (batch, embed_dim, height // patch, width // patch)
        assert torch.isfinite(out.features).all()
        if summary_dim is None:
            assert out.summary is None
        else:
            assert out.summary.shape == (batch, summary_dim)


def library_outputs(teacher, case: str, pixels: torch.Tensor):
    """(summary, patch tokens [B, N, C]) from the library's own forward at the native size."""
    model = teacher.model
    if case == "dfn_clip":
        model.output_tokens = True
        try:
            pooled, tokens = model(pixels)
        finally:
            model.output_tokens = False
        return pooled, tokens
    if case in ("siglip-open_clip", "dinov2-timm"):
        tokens = model.forward_features(pixels)
        summary = model(pixels) if case == "siglip-open_clip" else tokens[:, 0]
        return summary, tokens[:, model.num_prefix_tokens :]
    if case == "siglip-hf":
        out = model(pixel_values=pixels)
        return out.pooler_output, out.last_hidden_state
    if case == "dinov2-hf":
        out = model(pixel_values=pixels)
        return out.pooler_output, out.last_hidden_state[:, 1 + model.config.num_register_tokens :]
    hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # sam: before the neck
    return None, hidden.flatten(1, 2)


@pytest.mark.parametrize("case", CASES)
def test_native_outputs_equal_the_library_forward(teachers, case):
    """Our forward (with its position-table resizing) is the library's at the native size."""
    teacher = teachers[case]
    x = images(2, teacher.native_size, teacher.native_size, seed=3)
    with torch.no_grad():
        summary, tokens = library_outputs(teacher, case, teacher.normalize(x))
    out = teacher(x)
    torch.testing.assert_close(out.features.flatten(2).transpose(1, 2), tokens, rtol=1e-5, atol=1e-5)
    if summary is None:
        assert out.summary is None
    else:
        torch.testing.assert_close(out.summary, summary, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_seed_fixes_the_weights_without_touching_the_global_rng(case):
    before = torch.get_rng_state()
    first, again, other = tiny(case, seed=0), tiny(case, seed=0), tiny(case, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    x = images(1, first.native_size, first.native_size)
    assert torch.equal(first(x).features, again(x).features)
    assert (first(x).features - other(x).features).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_teacher_is_frozen_and_gives_no_graph(teachers, case):
    teacher = teachers[case]
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    x = images(1, teacher.native_size, teacher.native_size).requires_grad_(True)
    out = teacher(x)
    assert out.features.grad_fn is None and not out.features.requires_grad
    assert out.summary is None or out.summary.grad_fn is None


@pytest.mark.parametrize("case", CASES)
def test_bad_input_size_names_the_nearest_valid_size(teachers, case):
    teacher = teachers[case]
    n, p = teacher.native_size, teacher.patch_size
    with pytest.raises(ValueError, match=f"patch size {p}.*nearest valid sizes: {n}x{n}"):
        teacher(images(1, n + 1, n + 1))
    with pytest.raises(ValueError, match=r"expected images \[B,3,H,W\]"):
        teacher(torch.rand(1, 1, n, n))


@pytest.mark.parametrize("case", CASES)
def test_missing_weights_say_how_to_provide_them(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family, options = CASES[case]
    with pytest.raises(MissingWeightsError) as err:
        TEACHERS.build(family, size="real", cache_dir=str(tmp_path), **options)
    message = str(err.value)
    assert DEFAULT_IDS[case] in message and f"teachers.{family}.weights:" in message
    assert str(tmp_path) in message and "size: tiny" in message


def save_weights(path: Path, state: dict) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "case,layout,suffix",
    [
        ("dfn_clip", "whole_clip", ".bin"),  # open_clip CLIP file: visual.* plus a text tower
        ("siglip-open_clip", "whole_clip", ".safetensors"),  # visual.trunk.*
        ("siglip-hf", "library", ".safetensors"),
        ("dinov2-timm", "teacher", ".pth"),  # a teacher.state_dict(): model.*
        ("dinov2-hf", "library", ".safetensors"),
        ("sam", "library", ".safetensors"),  # SamVisionModel: vision_encoder.*
    ],
)
def test_weights_file_round_trip(case, layout, suffix, tmp_path):
    source = tiny(case, seed=0)
    if layout == "teacher":
        state = source.state_dict()
    elif layout == "whole_clip":
        tower = "visual.trunk." if case == "siglip-open_clip" else "visual."
        state = {tower + k: v for k, v in source.model.state_dict().items()}
        state["text.token_embedding.weight"] = torch.zeros(10, 4)
        state["logit_scale"] = torch.ones(())
    else:
        state = source.model.state_dict()
    path = save_weights(tmp_path / f"weights{suffix}", state)
    loaded = tiny(case, seed=1, weights=str(path))
    x = images(2, source.native_size, source.native_size)
    assert torch.equal(loaded(x).features, source(x).features)


@pytest.mark.parametrize("case", ["dinov2-timm", "sam", "dfn_clip"])
def test_mismatched_weights_file_fails_loudly(case, tmp_path):
    state = tiny(case).model.state_dict()
    renamed = dict(state)
    key = sorted(renamed)[-1]
    renamed[key + "_renamed"] = renamed.pop(key)
    name = re.escape(key.removeprefix("vision_encoder."))  # SAM loads into its encoder
    with pytest.raises(WeightsMismatchError, match=f"missing keys: {name}; 1 unexpected keys: {name}_renamed"):
        tiny(case, weights=str(save_weights(tmp_path / "renamed.safetensors", renamed)))
    reshaped = {k: (v[..., :-1] if k == key and v.ndim else v) for k, v in state.items()}
    if reshaped[key].shape != state[key].shape:
        with pytest.raises(WeightsMismatchError, match=f"wrong shape.*{name}"):
            tiny(case, weights=str(save_weights(tmp_path / "reshaped.safetensors", reshaped)))
    other = tiny("siglip-hf").model.state_dict()  # another family's file
    with pytest.raises(WeightsMismatchError, match="do not match the model"):
        tiny(case, weights=str(save_weights(tmp_path / "other.safetensors", other)))


def test_bad_options_name_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="size='huge'.*tiny, real"):
        TEACHERS.build("dinov2", size="huge")
    with pytest.raises(ValueError, match="source='torchhub'.*timm, hf"):
        TEACHERS.build("dinov2", size="tiny", source="torchhub")
    with pytest.raises(ValueError, match="native_size=100.*multiple of the patch size 14; nearest valid: 98 or 112"):
        TEACHERS.build("siglip", size="tiny", native_size=100)
    with pytest.raises(FileNotFoundError, match="weights file not found.*nope.safetensors"):
        TEACHERS.build("sam", size="tiny", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="unknown timm model 'vit_nope'"):
        TEACHERS.build("dinov2", size="tiny", model="vit_nope")
    with pytest.raises(ValueError, match="no pretrained tag 'nope'; its tags: .*dfn5b"):
        TEACHERS.build("dfn_clip", size="tiny", pretrained="nope")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-H-14-379'; did you mean"):
        TEACHERS.build("dfn_clip", size="tiny", model="ViT-H-14-379")
    with pytest.raises(ValueError, match="`pretrained` is an open_clip tag"):
        TEACHERS.build("siglip", size="tiny", source="hf", pretrained="webli")


def test_position_grid_resize_keeps_identity_and_constants():
    grid = torch.randn(1, 4, 4, 8)
    assert resize_pos_grid(grid, (4, 4)) is grid
    constant = torch.full((1, 4, 4, 8), 0.5)
    torch.testing.assert_close(resize_pos_grid(constant, (6, 10)), torch.full((1, 6, 10, 8), 0.5))


# ----------------------------------------------------------------------------- the hub cache


def test_real_open_clip_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = tiny("dfn_clip", seed=4)
    snapshot = fake_hub_repo(tmp_path, "test/tiny-clip")
    model_cfg = {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 112, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 8, "vocab_size": 10, "width": 8, "heads": 2, "layers": 1},
    }
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    state = {"visual." + k: v for k, v in source.model.state_dict().items()}
    state["text_projection"] = torch.zeros(8, 24)
    save_weights(snapshot / "open_clip_model.safetensors", state)
    teacher = TEACHERS.build(
        "dfn_clip", size="real", model="hf-hub:test/tiny-clip", native_size=112, cache_dir=str(tmp_path)
    )
    x = images(1, 112, 112)
    assert torch.equal(teacher(x).summary, source(x).summary)


def test_real_timm_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    save_weights(fake_hub_repo(tmp_path, f"timm/{name}") / "model.safetensors", reference.state_dict())
    teacher = TEACHERS.build("dinov2", size="real", model=name, native_size=56, cache_dir=str(tmp_path))
    x = images(1, 56, 84)
    with torch.no_grad():
        tokens = reference.forward_features(teacher.normalize(x))
    out = teacher(x)
    torch.testing.assert_close(out.summary, tokens[:, 0])
    assert out.features.shape == (1, 384, 4, 6)


@pytest.mark.parametrize("case", ["siglip-hf", "dinov2-hf", "sam"])
def test_real_transformers_weights_come_from_the_hub_cache(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family, options = CASES[case]
    source = tiny(case, seed=5)
    source.model.save_pretrained(fake_hub_repo(tmp_path, "test/tiny"))
    teacher = TEACHERS.build(
        family, size="real", model="test/tiny", native_size=source.native_size, cache_dir=str(tmp_path), **options
    )
    x = images(1, source.native_size, source.native_size)
    assert torch.equal(teacher(x).features, source(x).features)


def test_real_transformers_checkpoint_missing_a_weight_fails(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = fake_hub_repo(tmp_path, "test/tiny-sam")
    tiny("sam").model.save_pretrained(snapshot)
    state = load_file(str(snapshot / "model.safetensors"))
    dropped = sorted(k for k in state if "layers.0" in k)[0]
    del state[dropped]
    save_weights(snapshot / "model.safetensors", state)
    with pytest.raises(
        WeightsMismatchError, match=f"leaves weights of SamVisionModel unset: missing .*{re.escape(dropped)}"
    ):
        TEACHERS.build("sam", size="real", model="test/tiny-sam", native_size=128, cache_dir=str(tmp_path))


@pytest.mark.parametrize("case", CASES)
def test_a_bf16_teacher_takes_float32_images(teachers, case):
    """`.to(torch.bfloat16)` for inference (or a DeepSpeed bf16 cast): float32 images in [0,1]
    still go in, and the features stay close to the float32 ones."""
    import copy

    teacher = teachers[case]
    x = images(1, teacher.native_size, teacher.native_size, seed=4)
    ref = teacher(x).features
    out = copy.deepcopy(teacher).to(torch.bfloat16)(x).features
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


# ----------------------------------------------------------------------------- size: random

# Small real architectures of each family (the defaults are ViT-L/H: see the slow test).
RANDOM_CASES = {
    "dfn_clip": ({"model": "ViT-B-16", "pretrained": None}, 768, 12),
    "siglip": ({"model": "ViT-B-16-SigLIP"}, 768, 12),
    "dinov2": ({"model": "vit_small_patch14_reg4_dinov2.lvd142m"}, 384, 12),
    "sam": ({"model": "facebook/sam-vit-base", "native_size": 256}, 768, 12),
}


def count_blocks(teacher) -> int:
    return (
        max(
            int(m.group(1))
            for name, _ in teacher.named_parameters()
            if (m := re.search(r"(?:blocks|resblocks|layers)\.(\d+)\.", name))
        )
        + 1
    )


@pytest.mark.parametrize("family", RANDOM_CASES)
def test_random_size_builds_the_real_architecture_offline_and_seeded(family, tmp_path, monkeypatch):
    """`size: random`: the library's own architecture, seeded weights, nothing read from a
    cache (an empty one here, offline), and the same contract as real teachers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options, width, depth = RANDOM_CASES[family]
    teacher = TEACHERS.build(family, size="random", cache_dir=str(tmp_path), **options)
    assert (teacher.embed_dim, count_blocks(teacher)) == (width, depth)
    again = TEACHERS.build(family, size="random", cache_dir=str(tmp_path), **options)
    other = TEACHERS.build(family, size="random", cache_dir=str(tmp_path), seed=1, **options)
    first = next(iter(teacher.state_dict()))
    assert torch.equal(teacher.state_dict()[first], again.state_dict()[first])
    assert not torch.equal(teacher.state_dict()[first], other.state_dict()[first])
    side = teacher.native_size
    out = teacher(images(1, side, side + teacher.patch_size))
    assert out.features.shape == (1, width, side // teacher.patch_size, side // teacher.patch_size + 1)
    assert torch.isfinite(out.features).all() and out.features.std() > 0.1
    assert list(tmp_path.iterdir()) == []


def test_random_size_refuses_what_it_cannot_build(tmp_path):
    with pytest.raises(ValueError, match=r"dinov2: size=random needs .*source='hf'.*use source: timm"):
        TEACHERS.build("dinov2", size="random", source="hf")
    with pytest.raises(ValueError, match=r"siglip: size=random .*use source: open_clip"):
        TEACHERS.build("siglip", size="random", source="hf")
    with pytest.raises(ValueError, match=r"dfn_clip: size=random has no text tower"):
        TEACHERS.build("dfn_clip", size="random", text=True)
    with pytest.raises(
        ValueError,
        match=r"sam: model \(with size=random\)='org/sam' is not valid; choose one of: "
        r"facebook/sam-vit-base, facebook/sam-vit-large, facebook/sam-vit-huge",
    ):
        TEACHERS.build("sam", size="random", model="org/sam")
    weights = save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"size=random builds random weights; drop `weights:`"):
        TEACHERS.build("dinov2", size="random", weights=str(weights))


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,params_m,width", [("dfn_clip", 632, 1280), ("siglip", 428, 1152), ("dinov2", 304, 1024), ("sam", 637, 1280)]
)
def test_random_size_defaults_are_the_papers_teachers(family, params_m, width):
    """The default models at `size: random`: DFN CLIP ViT-H/14-378, SigLIP SO400M/14-384,
    DINOv2-L/14 with registers, SAM ViT-H's encoder (parameter counts in millions)."""
    teacher = TEACHERS.build(family, size="random")
    assert teacher.embed_dim == width
    assert sum(p.numel() for p in teacher.parameters()) / 1e6 == pytest.approx(params_m, abs=3)

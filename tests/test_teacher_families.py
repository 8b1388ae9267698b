"""The newer teacher families (DINOv3, SigLIP 2 NaFlex, SAM 2, RADIO, any timm / open_clip
ViT by name), their `size: random` parameter counts against the published models, the
`layer` option of every ViT-like teacher, a student distilling two layers of one teacher,
and our student started from a RADIO checkpoint."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from conftest import base_recipe, fresh_process, write

from radiosharp.engine import read_metrics
from radiosharp.recipe import load_recipe
from radiosharp.registry import STUDENTS, TEACHERS
from radiosharp.student_io import load_student, save_student
from radiosharp.trainers.distill import DistillTrainer
from teachers._weights import MissingWeightsError

# case -> (family, options); the new families' tiny variants
NEW = {
    "dinov3-timm": ("dinov3", {}),
    "dinov3-hf": ("dinov3", {"source": "hf"}),
    "siglip2": ("siglip2", {}),
    "sam2": ("sam2", {}),
    "radio": ("radio", {}),
    "radio-adaptor": ("radio", {"adaptor": "clip"}),
    "timm": ("timm", {}),
    "timm-dinov2-name": ("timm", {"model": "vit_small_patch14_reg4_dinov2.lvd142m"}),
    "open_clip": ("open_clip", {}),
}
# case -> (patch, tiny native, embed_dim, summary_dim)
SHAPES = {
    "dinov3-timm": (16, 128, 32, 32),
    "dinov3-hf": (16, 128, 32, 32),
    "siglip2": (16, 128, 48, 48),
    "sam2": (32, 128, 64, None),
    "radio": (16, 128, 64, 128),  # two summary tokens of width 64
    "radio-adaptor": (16, 128, 48, 24),
    "timm": (16, 128, 32, 32),
    "timm-dinov2-name": (14, 112, 32, 32),
    "open_clip": (16, 128, 64, 24),
}


def tiny(case: str, cases=NEW, **extra):
    family, options = cases[case]
    return TEACHERS.build(family, size="tiny", **{**options, **extra})


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def built() -> dict:
    return {case: tiny(case) for case in NEW}


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("case", NEW)
@pytest.mark.parametrize("grid", [(1, 1), (2, 3)], ids=["native", "larger-nonsquare"])  # +0 / +2, +4 patches
def test_new_family_meets_the_contract_at_two_sizes(built, case, grid):
    """Shapes at the native size and at a larger, non-square one; frozen; summary as declared."""
    teacher = built[case]
    patch, native, width, summary_dim = SHAPES[case]
    assert (teacher.patch_size, teacher.native_size, teacher.embed_dim, teacher.summary_dim) == SHAPES[case]
    height, width_px = native + 2 * patch * (grid[0] - 1), native + 2 * patch * (grid[1] - 1)
    x = images(2, height, width_px, seed=1)
    out = teacher(x)
    assert out.features.shape == (2, width, height // patch, width_px // patch)
    assert torch.isfinite(out.features).all() and out.features.std() > 1e-3
    assert out.features.grad_fn is None
    if summary_dim is None:
        assert out.summary is None
    else:
        assert out.summary.shape == (2, summary_dim) and torch.isfinite(out.summary).all()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    one = teacher(x[:1])  # samples do not mix (eval mode, no batch statistics)
    torch.testing.assert_close(one.features, out.features[:1], rtol=1e-4, atol=1e-5)


def test_dinov3_is_the_librarys_own_forward_with_registers_dropped(built):
    x = images(2, 128, 96, seed=2)
    timm_teacher, hf_teacher = built["dinov3-timm"], built["dinov3-hf"]
    assert timm_teacher.model.num_prefix_tokens == 5 and hf_teacher.num_prefix_tokens == 5  # class + 4 registers
    with torch.no_grad():
        tokens = timm_teacher.model.forward_features(timm_teacher.normalize(x))
        hf = hf_teacher.model(pixel_values=hf_teacher.normalize(x))
    out = timm_teacher(x)
    torch.testing.assert_close(out.summary, tokens[:, 0])
    torch.testing.assert_close(out.features.flatten(2).transpose(1, 2), tokens[:, 5:])
    out = hf_teacher(x)
    torch.testing.assert_close(out.summary, hf.pooler_output)
    torch.testing.assert_close(out.features.flatten(2).transpose(1, 2), hf.last_hidden_state[:, 5:])


def test_siglip2_cuts_patches_as_the_processor_and_equals_its_padded_batch(built):
    """Our patches are `Siglip2ImageProcessor`'s; a non-square image keeps its h x w grid and
    gives what the processor's padded NaFlex batch (padding masked out) gives."""
    from transformers.models.siglip2.image_processing_siglip2 import (
        convert_image_to_patches,
        get_image_size_for_max_num_patches,
    )

    from teachers.siglip2 import patchify

    teacher = built["siglip2"]
    x = images(1, 64, 160, seed=3)  # a 4 x 10 grid
    pixels = teacher.normalize(x)
    assert torch.equal(patchify(pixels, 16)[0], convert_image_to_patches(pixels[0], 16))
    padded = torch.zeros(1, 48, 16 * 16 * 3)
    padded[0, :40] = patchify(pixels, 16)[0]
    mask = torch.zeros(1, 48, dtype=torch.long)
    mask[0, :40] = 1
    with torch.no_grad():
        ref = teacher.model(pixel_values=padded, pixel_attention_mask=mask, spatial_shapes=torch.tensor([[4, 10]]))
    out = teacher(x)
    assert out.features.shape == (1, 48, 4, 10)
    torch.testing.assert_close(out.features.flatten(2).transpose(1, 2), ref.last_hidden_state[:, :40])
    torch.testing.assert_close(out.summary, ref.pooler_output, rtol=1e-4, atol=1e-5)
    for budget in (64, 256, 1024):  # the aspect-preserving size for a patch budget, as the processor's
        assert teacher.naflex_size(480, 640, budget) == get_image_size_for_max_num_patches(480, 640, 16, budget)


def test_sam2_features_are_the_last_hiera_stage_before_the_neck(built, tmp_path):
    from safetensors.torch import save_file

    teacher = built["sam2"]
    x = images(1, 128, 160, seed=4)
    with torch.no_grad():
        ref = teacher.model(pixel_values=teacher.normalize(x))
    out = teacher(x)
    assert out.summary is None and out.features.shape == (1, 64, 4, 5)
    torch.testing.assert_close(out.features, ref.last_hidden_state.permute(0, 3, 1, 2))
    assert ref.fpn_hidden_states[0].shape[1] != out.features.shape[1]  # the neck's 256-d maps are not ours
    path = tmp_path / "sam2.safetensors"
    save_file({"vision_encoder." + k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(path))
    loaded = tiny("sam2", seed=7, weights=str(path))  # a whole Sam2Model file: vision_encoder.*
    assert torch.equal(loaded(x).features, out.features)


def test_generic_adaptors_equal_the_libraries_and_read_real_weights_files(built, tmp_path):
    from safetensors.torch import save_file

    timm_teacher = built["timm"]
    x = images(2, 128, 128, seed=5)
    with torch.no_grad():
        tokens = timm_teacher.model.forward_features(timm_teacher.normalize(x))
    torch.testing.assert_close(timm_teacher(x).features.flatten(2).transpose(1, 2), tokens[:, 1:])
    clip = built["open_clip"]
    with torch.no_grad():
        embedding = clip.model(clip.normalize(x))  # open_clip's own VisionTransformer forward
    torch.testing.assert_close(clip(x).summary, embedding, rtol=1e-5, atol=1e-5)
    # an open_clip checkpoint of a timm tower loads into the timm family (visual.trunk.*)
    siglip = TEACHERS.build("timm", size="tiny", model="vit_base_patch16_siglip_224.webli", seed=2)
    path = tmp_path / "open_clip.safetensors"
    state = {"visual.trunk." + k: v for k, v in siglip.model.state_dict().items()}
    save_file({**state, "text.token_embedding.weight": torch.zeros(4, 4)}, str(path))
    loaded = TEACHERS.build("timm", size="tiny", model="vit_base_patch16_siglip_224.webli", weights=str(path))
    assert siglip.summary_kind == "head" and torch.equal(loaded(x).summary, siglip(x).summary)


def test_generic_adaptors_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="unknown timm model 'vit_nope'"):
        TEACHERS.build("timm", size="tiny", model="vit_nope")
    with pytest.raises(ValueError, match="'resnet18' is not a timm ViT"):
        TEACHERS.build("timm", size="tiny", model="resnet18")
    with pytest.raises(
        ValueError, match="timm vision tower .*use family: timm with model: vit_base_patch16_siglip_224"
    ):
        TEACHERS.build("open_clip", size="tiny", model="ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        TEACHERS.build("open_clip", size="tiny", pretrained="nope")


def test_missing_real_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cases = [
        ("dinov3", {}, "vit_large_patch16_dinov3.lvd1689m"),
        ("dinov3", {"source": "hf"}, "facebook/dinov3-vitl16-pretrain-lvd1689m"),
        ("siglip2", {}, "google/siglip2-so400m-patch16-naflex"),
        ("sam2", {}, "facebook/sam2.1-hiera-large"),
        ("timm", {}, "vit_base_patch16_224.augreg_in21k"),
        ("open_clip", {}, "ViT-B-16"),
    ]
    for family, options, name in cases:
        with pytest.raises(MissingWeightsError, match=f"{family}: no weights for .*{name}.*size: tiny"):
            TEACHERS.build(family, size="real", cache_dir=str(tmp_path), **options)


# ----------------------------------------------------------------------------- RADIO

FAKE_HUBCONF = '''
import torch
from torch import nn


class FakeRadio(nn.Module):
    """RADIOModel's interface around a linear patch model: [0,1] in, own conditioning."""

    patch_size = 16
    preferred_resolution = (64, 64)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.embed = nn.Linear(3 * 16 * 16, 8)

    def tokens(self, x, count):
        b, _, h, w = x.shape
        p = (x - 0.5).unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(b, h * w // 256, -1)
        t = self.embed(p)
        for block in self.blocks[:count]:
            t = t + torch.tanh(block(t))
        return t, h // 16, w // 16

    def forward(self, x, feature_fmt="NLC"):
        t, h, w = self.tokens(x, 3)
        return t.mean(1).repeat(1, 2), t.transpose(1, 2).reshape(x.shape[0], 8, h, w)

    def forward_intermediates(self, x, indices, norm, stop_early, output_fmt, intermediates_only):
        t, h, w = self.tokens(x, indices[0] + 1)
        return [t.transpose(1, 2).reshape(x.shape[0], 8, h, w)]


def radio_model(version="", progress=True, adaptor_names=None, **kwargs):
    if version != "radio_v2.5-b":
        raise RuntimeError(f"unknown version {version}")
    return FakeRadio()
'''


def test_radio_hub_path_loads_radio_model_from_the_repo(tmp_path):
    """The torch.hub path (here a local clone holding a stand-in hubconf.py): the version
    reaches `radio_model`, images go in as [0, 1], outputs and widths come from the model."""
    repo = tmp_path / "RADIO"
    repo.mkdir()
    (repo / "hubconf.py").write_text(FAKE_HUBCONF)
    teacher = TEACHERS.build("radio", size="real", repo=str(repo), model="radio_v2.5-b")
    assert (teacher.patch_size, teacher.native_size, teacher.embed_dim, teacher.summary_dim) == (16, 64, 8, 16)
    x = images(2, 64, 96, seed=6)
    with torch.no_grad():
        summary, features = teacher.model(x)
    out = teacher(x)
    assert torch.equal(out.features, features) and torch.equal(out.summary, summary)  # no mean/std of ours
    mid = TEACHERS.build("radio", size="real", repo=str(repo), model="radio_v2.5-b", layer=0)
    assert mid.summary_dim is None and mid(x).features.shape == (2, 8, 4, 6)
    with pytest.raises(MissingWeightsError, match=r"radio: no weights for RADIO 'radio_v9'.*unknown version"):
        TEACHERS.build("radio", size="real", repo=str(repo), model="radio_v9")


def test_radio_from_a_student_run_is_our_student(tmp_path):
    student = STUDENTS.build("radio", size="tiny", teachers={"clip": {"feature_dim": 24, "summary_dim": 16}}, seed=3)
    run = tmp_path / "run"
    save_student(run, student)
    teacher = TEACHERS.build("radio", size="real", source="run", model=str(run), native_size=64, adaptor="clip")
    x = images(1, 64, 80, seed=7)
    with torch.no_grad():
        ref = load_student(run)(x)
    out = teacher(x)
    assert torch.equal(out.features, ref.features["clip"]) and torch.equal(out.summary, ref.summary["clip"])
    with pytest.raises(ValueError, match="no adaptor 'dino'; the student's adaptors: clip"):
        TEACHERS.build("radio", size="real", source="run", model=str(run), adaptor="dino")
    with pytest.raises(ValueError, match="adaptor 'clip' reads the last block; use layer: -1"):
        TEACHERS.build("radio", size="tiny", adaptor="clip", layer=-2)


def radio_checkpoint(path: Path, dim: int = 64, depth: int = 4, patch: int = 16, side: int = 32) -> dict:
    """A RADIO-layout checkpoint (``{"args": Namespace, "state_dict_ema": {"base_model.*"}}``) with
    a tiny timm ViT's blocks, a linear patch embedder, a square position table and 8 tokens."""
    import timm

    g = torch.Generator().manual_seed(11)
    vit = timm.create_model(
        "vit_base_patch16_224", pretrained=False, embed_dim=dim, depth=depth, num_heads=2, num_classes=0
    )
    backbone = {k: v for k, v in vit.state_dict().items() if k.startswith(("blocks.", "norm."))}
    backbone = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in backbone.items()}
    state = {
        **backbone,
        "patch_generator.embedder.weight": 0.05 * torch.randn(dim, 3 * patch * patch, generator=g),
        "patch_generator.pos_embed": 0.1 * torch.randn(1, side * side, dim, generator=g),
        "patch_generator.cls_token.token": torch.randn(8, dim, generator=g),
    }
    checkpoint = {
        "args": argparse.Namespace(teachers=[{"name": "clip"}], model="vit_base_patch16_224"),
        "state_dict_ema": {"base_model." + k: v for k, v in state.items()},
        "state_dict": {"base_model." + k: torch.zeros_like(v) for k, v in state.items()},  # EMA wins
    }
    torch.save(checkpoint, path)
    return state


def test_student_starts_from_a_radio_checkpoint_and_runs_its_forward(tmp_path):
    """Mapped keys, and the converted student's tokens are RADIO's forward on those weights:
    linear patch embedding of (channel, row, column) patches + table, tokens, blocks, norm."""
    import timm

    from students._radio_checkpoint import student_from_radio

    path = tmp_path / "radio_tiny.pth.tar"
    radio = radio_checkpoint(path)
    teachers = {"clip": {"feature_dim": 24, "summary_dim": 16}, "dino": {"feature_dim": 32, "summary_dim": 32}}
    student = student_from_radio(path, teachers, size="tiny").eval()
    assert torch.equal(student.prefix_tokens[0], radio["patch_generator.cls_token.token"])  # 2 summaries + 6 regs
    assert torch.equal(student.blocks[0].attn.qkv.weight, radio["blocks.0.attn.qkv.weight"])

    x = images(1, 512, 512, seed=8)  # the whole table (32 x 32 patches), so no resampling
    pixels = (x - student.pixel_mean) / student.pixel_std
    patches = pixels.reshape(1, 3, 32, 16, 32, 16).permute(0, 2, 4, 1, 3, 5).reshape(1, 1024, 768)
    tokens = patches @ radio["patch_generator.embedder.weight"].T + radio["patch_generator.pos_embed"]
    tokens = torch.cat([radio["patch_generator.cls_token.token"][None], tokens], dim=1)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=64, depth=4, num_heads=2)
    vit.load_state_dict({**vit.state_dict(), **{k: v for k, v in radio.items() if k.startswith(("blocks.", "norm."))}})
    with torch.no_grad():
        ref = vit.norm(vit.blocks(tokens))
        ours, _ = student.forward_tokens(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="does not fit a width-768, patch-16 student"):
        student_from_radio(path, teachers, size="real")


def test_a_distillation_starts_from_a_radio_checkpoint_through_init_from(tmp_path, phis):
    from students._radio_checkpoint import export_radio_init

    path = tmp_path / "radio_tiny.pth.tar"
    radio = radio_checkpoint(path)
    dims = {"dfn_clip": {"feature_dim": 64, "summary_dim": 24}, "dinov2": {"feature_dim": 32, "summary_dim": 32}}
    run = export_radio_init(path, tmp_path / "radio_init", dims, size="tiny")
    recipe = base_recipe(tmp_path / "stage", phis, init_from=str(run))
    fresh_process()
    trainer = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", recipe)))
    trainer.build()
    student = trainer.model.student
    assert torch.equal(student.blocks[3].mlp.fc2.weight, radio["blocks.3.mlp.fc2.weight"])
    assert torch.equal(student.patch_embed.proj.weight.flatten(1), radio["patch_generator.embedder.weight"])


# ----------------------------------------------------------------------------- size: random

# Parameter counts of the real architectures, from the models' published configs (what
# timm / transformers / open_clip build for them). The papers' and model cards' rounded
# figures: DINOv3 ViT-S/16 21M, ViT-L/16 300M; SigLIP 2 B/16 vision tower (with its MAP
# head) 93M, So400m 428M; SAM 2.1 whole models Hiera-T 38.9M and Hiera-L 224.4M, of
# which the image encoder (Hiera + neck) is all but the same ~11.7M of prompt encoder,
# mask decoder and memory modules; ViT-S/16 22M, ViT-B/16 86M; CLIP ViT-B/32 image
# encoder 87.8M, ViT-B/16 86.2M.
RANDOM_PARAMS = {
    "dinov3-timm-s": (("dinov3", {"model": "vit_small_patch16_dinov3.lvd1689m"}), 21_586_944, 21.0),
    "dinov3-hf-s": (
        ("dinov3", {"source": "hf", "model": "facebook/dinov3-vits16-pretrain-lvd1689m"}),
        21_596_544,
        21.0,
    ),
    "siglip2-b": (("siglip2", {"model": "google/siglip2-base-patch16-naflex"}), 92_930_304, 93.0),
    "sam2-t": (("sam2", {"model": "facebook/sam2.1-hiera-tiny"}), 27_219_136, 38.9 - 11.7),
    "timm-vit-s": (("timm", {"model": "vit_small_patch16_224.augreg_in21k"}), 21_665_664, 22.0),
    "open_clip-b32": (("open_clip", {"model": "ViT-B-32", "pretrained": None}), 87_849_216, 87.8),
    "sam2-default": (("sam2", {}), 212_703_280, 224.4 - 11.7),
    "timm-default": (("timm", {}), 85_798_656, 86.0),
    "open_clip-default": (("open_clip", {"pretrained": None}), 86_192_640, 86.2),
}
RANDOM_PARAMS_DEFAULTS = {  # default models that take over 10 s to build on a CPU
    "dinov3-timm": (("dinov3", {}), 303_079_424, 300.0),  # timm's non-qkvb: no q/v biases
    "dinov3-hf": (("dinov3", {"source": "hf"}), 303_129_600, 300.0),  # + mask token, q and v biases
    "siglip2": (("siglip2", {}), 427_888_064, 428.0),
}


def count(teacher) -> int:
    return sum(p.numel() for p in teacher.parameters())


def check_random(spec, params: int, published_m: float, tmp_path) -> None:
    ((family, options),) = (spec,)
    teacher = TEACHERS.build(family, size="random", cache_dir=str(tmp_path), **options)
    assert count(teacher) == params
    assert count(teacher) / 1e6 == pytest.approx(published_m, rel=0.03)  # published figures are rounded
    side = 2 * 32  # a small input through the real architecture
    out = teacher(images(1, side, side))
    assert out.features.shape[1] == teacher.embed_dim and torch.isfinite(out.features).all()


@pytest.mark.parametrize("case", RANDOM_PARAMS)
def test_random_size_parameter_counts_match_the_published_models(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_random(*RANDOM_PARAMS[case], tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing read from or written to a cache


@pytest.mark.slow
@pytest.mark.parametrize("case", RANDOM_PARAMS_DEFAULTS)
def test_random_size_defaults_match_the_published_models(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_random(*RANDOM_PARAMS_DEFAULTS[case], tmp_path)


def test_random_size_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="size=random with source: hf needs a built-in config"):
        TEACHERS.build("dinov3", size="random", source="hf", model="org/other")
    with pytest.raises(ValueError, match=r"sam2: model \(with size=random\)='org/sam2' is not valid"):
        TEACHERS.build("sam2", size="random", model="org/sam2")
    with pytest.raises(ValueError, match="radio: size=random is not available"):
        TEACHERS.build("radio", size="random")


# ----------------------------------------------------------------------------- layer

# case -> (family, options, path of the block list, path of the final norm or None, prefix tokens)
LAYER_CASES = {
    "dinov2-timm": ("dinov2", {}, "blocks", "norm", 5),
    "dinov2-hf": ("dinov2", {"source": "hf"}, "encoder.layer", "layernorm", 5),
    "dinov3-timm": ("dinov3", {}, "blocks", "norm", 5),
    "dinov3-hf": ("dinov3", {"source": "hf"}, "model.layer", "norm", 5),
    "siglip-open_clip": ("siglip", {}, "blocks", "norm", 0),
    "siglip-hf": ("siglip", {"source": "hf"}, "encoder.layers", "post_layernorm", 0),
    "siglip2": ("siglip2", {}, "encoder.layers", "post_layernorm", 0),
    "dfn_clip": ("dfn_clip", {}, "transformer.resblocks", "ln_post", 1),
    "open_clip": ("open_clip", {}, "transformer.resblocks", "ln_post", 1),
    "timm": ("timm", {}, "blocks", "norm", 1),
    "sam": ("sam", {}, "vision_encoder.layers", None, 0),
    "radio": ("radio", {}, "blocks", "norm", 8),
}


def with_visible_layer_scale(teacher):
    """Layer scales start near zero in some families (DINOv2/v3: 1e-5), which would make every
    block's output alike; set them to 0.5 so that picking the wrong block shows."""
    with torch.no_grad():
        for name, param in teacher.named_parameters():
            if any(part in name for part in ("gamma", "ls1.", "ls2.", "layer_scale", "lambda")):
                param.fill_(0.5)
    return teacher


def block_output(teacher, blocks: str, norm: str | None, prefix: int, index: int, x) -> torch.Tensor:
    """Block ``index``'s tokens ``[B, h*w, C]`` from a forward hook during the model's own
    full forward (the teacher at layer -1), then the final norm, prefix tokens dropped."""
    seen = []
    module = teacher.model.get_submodule(blocks)[index]
    handle = module.register_forward_hook(lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        teacher(x)
    finally:
        handle.remove()
    tokens = seen[0]
    if tokens.ndim == 4:  # SAM: [B, h, w, C]
        tokens = tokens.flatten(1, 2)
    if tokens.shape[0] != x.shape[0]:  # open_clip without batch_first: [N, B, C]
        tokens = tokens.transpose(0, 1)
    with torch.no_grad():
        tokens = teacher.model.get_submodule(norm)(tokens) if norm else tokens
    return tokens[:, prefix:]


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_returns_that_blocks_tokens_and_minus_one_is_the_default(case):
    family, options, blocks, norm, prefix = LAYER_CASES[case]
    default = with_visible_layer_scale(TEACHERS.build(family, size="tiny", **options))
    last = with_visible_layer_scale(TEACHERS.build(family, size="tiny", layer=-1, **options))
    early = with_visible_layer_scale(TEACHERS.build(family, size="tiny", layer=-2, **options))
    depth = len(default.model.get_submodule(blocks))
    x = images(2, default.native_size, default.native_size + default.patch_size, seed=9)
    ref, out = default(x), last(x)
    assert torch.equal(out.features, ref.features)  # layer: -1 is today's output, bit for bit
    assert (out.summary is None and ref.summary is None) or torch.equal(out.summary, ref.summary)
    assert last.summary_dim == default.summary_dim

    mid = early(x)
    expected = block_output(default, blocks, norm, prefix, depth - 2, x)
    torch.testing.assert_close(mid.features.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
    assert mid.summary is None and early.summary_dim is None
    assert (mid.features - ref.features).abs().max() > 1e-3  # another block than the last
    first = TEACHERS.build(family, size="tiny", layer=0, **options)
    assert torch.equal(with_visible_layer_scale(first)(x).features, mid.features) == (depth == 2)


@pytest.mark.parametrize("family", ["dinov2", "dinov3", "siglip", "siglip2", "dfn_clip", "sam", "timm", "radio"])
def test_out_of_range_layer_is_refused_naming_the_range(family):
    depth = 4 if family == "radio" else 2
    for layer in (depth, -depth - 1):
        with pytest.raises(
            ValueError,
            match=rf"^{family}: layer={layer} is out of range for a {depth}-block model; "
            rf"valid: -{depth}\.\.-1 \(from the last block\) or 0\.\.{depth - 1}$",
        ):
            TEACHERS.build(family, size="tiny", layer=layer)
    with pytest.raises(ValueError, match="'layer'.*takes an integer there, got 'last'"):  # the registry's check
        TEACHERS.build(family, size="tiny", layer="last")


def test_an_intermediate_layer_takes_no_text_tower():
    with pytest.raises(ValueError, match="text: true needs layer: -1"):
        TEACHERS.build("dfn_clip", size="tiny", text=True, layer=-2)


def test_the_student_distils_two_layers_of_one_teacher(tmp_path, phis):
    """The same teacher under two keys with different `layer`s: two heads, two targets,
    two teacher calls per step (the intermediate one stops at its block)."""
    recipe = base_recipe(tmp_path / "run", phis)
    recipe["teachers"] = {
        "dino": {"family": "dinov2", "size": "tiny", "phi_s": phis["dinov2"]},
        "dino_mid": {"family": "dinov2", "size": "tiny", "layer": -2},  # PHI-S computed in the run
    }
    recipe["stats"] = {"num_images": 8, "batch_size": 4}
    recipe["train"]["steps"] = 2
    fresh_process()
    trainer = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", recipe)))
    trainer.build()
    assert sorted(call.slot.key for call in trainer.target_calls) == ["dino", "dino_mid"]
    x = images(1, 112, 112)
    final, mid = (trainer.stack[k].teacher(x) for k in ("dino", "dino_mid"))
    assert mid.summary is None and not torch.equal(final.features, mid.features)
    run_dir = trainer.run()
    row = read_metrics(run_dir)[-1]
    assert {"low/dino/features", "low/dino/summary", "low/dino_mid/features"} <= row.keys()
    assert "low/dino_mid/summary" not in row and math.isfinite(row["loss"])
    student = load_student(run_dir)
    with torch.no_grad():
        out = student(images(1, 64, 64))
    assert out.features["dino"].shape == out.features["dino_mid"].shape == (1, 32, 4, 4)
    assert "dino_mid" not in out.summary

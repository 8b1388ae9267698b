"""DINOv2 teacher: ViT-L/14 with 4 registers, from timm (default) or transformers.

- ``summary`` = the class token after the final LayerNorm.
- ``features`` = the patch tokens after the final LayerNorm; the class token and the
  registers are dropped, so the map is ``[B, C, H/14, W/14]``.

Both libraries resize the position table to the input grid (timm
``dynamic_img_size``, transformers always), so any multiple of 14 works.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD, TeacherOutput, seeded
from radiosharp.registry import TEACHERS
from teachers._common import (
    SIZES,
    FrozenTeacher,
    TimmViTTeacher,
    check_choice,
    check_random_size,
    check_timm_name,
    check_weights_path,
    create_timm_vit,
    hf_config,
    hf_from_pretrained,
    load_weights_file,
    resolve_native_size,
    timm_converter,
    timm_weights_file,
    tokens_to_map,
)

FAMILY = "dinov2"
SOURCES = ("timm", "hf")
DEFAULT_MODELS = {"timm": "vit_large_patch14_reg4_dinov2.lvd142m", "hf": "facebook/dinov2-with-registers-large"}
REAL_NATIVE = 448  # the paper's 1x resolution for DINOv2-L
TINY_NATIVE = 112
PATCH = 14
# Tiny dims: width 32 (has a Hadamard matrix), 2 heads, 2 blocks, 4 registers.
TINY_WIDTH, TINY_DEPTH, TINY_HEADS, TINY_REGISTERS = 32, 2, 2, 4
HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


class HFDinov2Teacher(FrozenTeacher):
    """A frozen transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``."""

    name = FAMILY

    def __init__(self, model: nn.Module, native_size: int) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        config = model.config
        self.model = model
        self.patch_size = int(config.patch_size)
        self.native_size = native_size
        self.embed_dim = int(config.hidden_size)
        self.summary_dim = self.embed_dim
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        tokens = self.model(pixel_values=pixels).last_hidden_state  # final layernorm applied
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        features = tokens_to_map(tokens[:, self.num_prefix_tokens:], height, width)
        return TeacherOutput(summary=tokens[:, 0], features=features)


def _hf_model_class(model_type: str) -> type:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    return Dinov2WithRegistersModel if model_type == "dinov2_with_registers" else Dinov2Model


def _build_timm(size: str, model: str, weights: Path | None, native: int, cache_dir: str | None, seed: int) -> TimmViTTeacher:
    check_timm_name(FAMILY, model, "*dinov2*")
    path = weights
    if size == "real" and path is None:
        path = timm_weights_file(FAMILY, model, cache_dir)  # before the (slow) build
    tiny = dict(img_size=native, embed_dim=TINY_WIDTH, depth=TINY_DEPTH, num_heads=TINY_HEADS)
    # Seeded random weights (real weights are loaded over them); real and random keep the
    # position table at the checkpoint's size (518 px).
    with seeded(seed):
        trunk = create_timm_vit(model, **(tiny if size == "tiny" else {}))
    if path is not None:
        load_weights_file(trunk, path, FAMILY, prefixes=("trunk.",), convert=timm_converter(trunk))
    return TimmViTTeacher(trunk, FAMILY, native, IMAGENET_MEAN, IMAGENET_STD, summary="cls")


def _build_hf(size: str, model: str, weights: Path | None, native: int, cache_dir: str | None, seed: int) -> HFDinov2Teacher:
    if size == "tiny":
        from transformers import Dinov2WithRegistersConfig

        config = Dinov2WithRegistersConfig(
            hidden_size=TINY_WIDTH,
            num_hidden_layers=TINY_DEPTH,
            num_attention_heads=TINY_HEADS,
            num_register_tokens=TINY_REGISTERS,
            image_size=native,
            patch_size=PATCH,
        )
        with seeded(seed):
            net = _hf_model_class(config.model_type)(config)
    else:
        config = hf_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)
        if weights is None:
            net = hf_from_pretrained(FAMILY, _hf_model_class(config.model_type), model, cache_dir)
        else:
            net = _hf_model_class(config.model_type)(config)
    if weights is not None:
        load_weights_file(net, weights, FAMILY, prefixes=("dinov2.",))
    return HFDinov2Teacher(net.float(), native)


@TEACHERS.register(FAMILY)
def build_dinov2(
    size: Literal["tiny", "real", "random"] = "real",
    source: Literal["timm", "hf"] = "timm",
    model: str | None = None,
    weights: str | None = None,
    native_size: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> FrozenTeacher:
    """DINOv2 with registers.

    - ``size``: ``real``, ``tiny`` (same family: a ViT with a class token and 4
      registers, width 32, 2 blocks, 2 heads, 112 px, seeded random weights) or
      ``random`` (the real timm architecture, seeded random weights: for benchmarks).
    - ``source``: ``timm`` (default model ``vit_large_patch14_reg4_dinov2.lvd142m``) or
      ``hf`` (default ``facebook/dinov2-with-registers-large``; ``facebook/dinov2-*`` work too).
    - ``model``: the timm name / hub id (or local folder for ``hf``); None: the source's default.
    - ``weights``: a local state-dict file (timm, original DINOv2 or transformers layout).
    - ``native_size``: the input side the teacher runs at (448 real, 112 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    """
    check_choice(FAMILY, "size", size, SIZES)
    check_choice(FAMILY, "source", source, SOURCES)
    check_random_size(FAMILY, size, weights, source=source, sources=("timm",))
    weights_path = check_weights_path(FAMILY, weights)
    model = model or DEFAULT_MODELS[source]
    native = resolve_native_size(FAMILY, native_size, TINY_NATIVE if size == "tiny" else REAL_NATIVE, PATCH)
    build = _build_timm if source == "timm" else _build_hf
    return build(size, model, weights_path, native, cache_dir, seed).freeze()

"""SigLIP teacher: SO400M/14, through open_clip (default) or transformers (SigLIP 2 ids).

- ``summary`` = the pooled image embedding of the attention-pool (MAP) head, the
  vector SigLIP compares with text (1152-d for SO400M).
- ``features`` = the patch tokens after the final LayerNorm (SigLIP has no class
  token), ``[B, C, H/14, W/14]``.

open_clip's SigLIP vision tower is a timm ViT (``visual.trunk``) with a ``map`` pool
and no projection; we build that trunk directly with ``dynamic_img_size`` and load
the ``visual.trunk.*`` weights of the open_clip checkpoint. transformers resizes its
table with ``interpolate_pos_encoding``. At the default 378 px the 27x27 grid is the
table's own size (SO400M-384 models cut 384 px into 27 patches of 14 and drop 6 px).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from radiosharp.contracts import HALF_MEAN, HALF_STD, TeacherOutput
from radiosharp.registry import TEACHERS
from teachers._common import (
    SIZES,
    FrozenTeacher,
    TimmViTTeacher,
    check_choice,
    check_weights_path,
    create_timm_vit,
    hf_config,
    hf_from_pretrained,
    load_weights_file,
    open_clip_model_config,
    open_clip_pretrained,
    open_clip_weights_file,
    resolve_native_size,
    seeded,
    tokens_to_map,
)

FAMILY = "siglip"
SOURCES = ("open_clip", "hf")
DEFAULT_MODELS = {"open_clip": "ViT-SO400M-14-SigLIP-384", "hf": "google/siglip2-so400m-patch14-384"}
DEFAULT_PRETRAINED = "webli"
TINY_NATIVE = 112
PATCH = 14
# Tiny dims: width 48 (has a Hadamard matrix), 4 heads of 12, 2 blocks, MAP head.
TINY_WIDTH, TINY_DEPTH, TINY_HEADS = 48, 2, 4
HF_MODEL_TYPES = ("siglip", "siglip_vision_model")


class HFSiglipTeacher(FrozenTeacher):
    """A frozen transformers ``SiglipVisionModel`` (with its attention-pool head)."""

    name = FAMILY

    def __init__(self, model: nn.Module, native_size: int) -> None:
        super().__init__(HALF_MEAN, HALF_STD)
        config = model.config
        if not getattr(config, "vision_use_head", True):
            raise ValueError(f"{FAMILY}: the model has no attention-pool head (vision_use_head=False)")
        self.model = model
        self.patch_size = int(config.patch_size)
        self.native_size = native_size
        self.embed_dim = int(config.hidden_size)
        self.summary_dim = self.embed_dim

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        out = self.model(pixel_values=pixels, interpolate_pos_encoding=True)
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        return TeacherOutput(summary=out.pooler_output, features=tokens_to_map(out.last_hidden_state, height, width))


def _default_native(image_size: int, patch: int, size: str) -> int:
    return TINY_NATIVE if size == "tiny" else (image_size // patch) * patch


def _build_open_clip(
    size: str, model: str, pretrained: str | None, weights: Path | None,
    native_size: int | None, cache_dir: str | None, seed: int,
) -> TimmViTTeacher:
    config = open_clip_model_config(FAMILY, model, cache_dir)
    vision = config["vision_cfg"]
    timm_name = vision.get("timm_model_name")
    if not timm_name or vision.get("timm_pool") != "map" or vision.get("timm_proj", "linear") != "none":
        raise ValueError(
            f"{FAMILY}: '{model}' is not an open_clip SigLIP model (a timm tower with a 'map' pool "
            f"and no projection); e.g. {DEFAULT_MODELS['open_clip']}"
        )
    entry = open_clip_pretrained(FAMILY, model, pretrained) if weights is None else {}
    preprocess = config.get("preprocess_cfg", {})
    mean = entry.get("mean") or preprocess.get("mean") or HALF_MEAN
    std = entry.get("std") or preprocess.get("std") or HALF_STD
    if size == "tiny":
        native = resolve_native_size(FAMILY, native_size, TINY_NATIVE, PATCH)
        with seeded(seed):
            trunk = create_timm_vit(
                timm_name, global_pool="map", img_size=native,
                embed_dim=TINY_WIDTH, depth=TINY_DEPTH, num_heads=TINY_HEADS,
            )
        path = weights
    else:
        path = weights or open_clip_weights_file(FAMILY, model, pretrained, cache_dir)  # before the build
        trunk = create_timm_vit(timm_name, global_pool="map")
        patch = trunk.patch_embed.patch_size[0]
        native = resolve_native_size(FAMILY, native_size, _default_native(trunk.patch_embed.img_size[0], patch, size), patch)
    if path is not None:
        load_weights_file(trunk, path, FAMILY, prefixes=("visual.trunk.", "trunk."))
    return TimmViTTeacher(trunk, FAMILY, native, mean, std, summary="head")


def _build_hf(
    size: str, model: str, pretrained: str | None, weights: Path | None,
    native_size: int | None, cache_dir: str | None, seed: int,
) -> HFSiglipTeacher:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if pretrained is not None:
        raise ValueError(
            f"{FAMILY}: `pretrained` is an open_clip tag; with `source: hf` the weights come from "
            f"the hub id `model` (or `weights:`), so leave `pretrained` unset"
        )
    if size == "tiny":
        native = resolve_native_size(FAMILY, native_size, TINY_NATIVE, PATCH)
        config = SiglipVisionConfig(
            hidden_size=TINY_WIDTH,
            intermediate_size=4 * TINY_WIDTH,
            num_hidden_layers=TINY_DEPTH,
            num_attention_heads=TINY_HEADS,
            image_size=native,
            patch_size=PATCH,
        )
        with seeded(seed):
            net = SiglipVisionModel(config)
    else:
        config = hf_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)
        config = getattr(config, "vision_config", config)
        native = resolve_native_size(
            FAMILY, native_size, _default_native(config.image_size, config.patch_size, size), config.patch_size
        )
        net = SiglipVisionModel(config) if weights is not None else hf_from_pretrained(FAMILY, SiglipVisionModel, model, cache_dir)
    if weights is not None:
        load_weights_file(net, weights, FAMILY, prefixes=("vision_model.",))
    return HFSiglipTeacher(net.float(), native)


@TEACHERS.register(FAMILY)
def build_siglip(
    size: Literal["tiny", "real"] = "real",
    source: Literal["open_clip", "hf"] = "open_clip",
    model: str | None = None,
    pretrained: str | None = None,
    weights: str | None = None,
    native_size: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> FrozenTeacher:
    """SigLIP / SigLIP 2.

    - ``size``: ``real`` or ``tiny`` (same family as the source: a timm ViT with a MAP
      head for open_clip, a ``SiglipVisionModel`` for hf; width 48, 2 blocks, 4 heads,
      112 px, seeded random weights).
    - ``source``: ``open_clip`` (default model ``ViT-SO400M-14-SigLIP-384``, tag ``webli``)
      or ``hf`` (default ``google/siglip2-so400m-patch14-384``; fixed-resolution SigLIP /
      SigLIP 2 ids, not the NaFlex ones).
    - ``model``: open_clip name / ``hf-hub:ORG/REPO``, or hub id / local folder for ``hf``.
    - ``pretrained``: the open_clip tag (default ``webli``); unused with ``hf``.
    - ``weights``: a local state-dict file (whole model or vision tower); overrides the rest.
    - ``native_size``: the input side (default: the model's size cut to a multiple of 14,
      378 for SO400M-384; 112 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny``.
    """
    check_choice(FAMILY, "size", size, SIZES)
    check_choice(FAMILY, "source", source, SOURCES)
    weights_path = check_weights_path(FAMILY, weights)
    model = model or DEFAULT_MODELS[source]
    if source == "open_clip":
        tag = pretrained if pretrained is not None else (None if model.startswith("hf-hub:") else DEFAULT_PRETRAINED)
        teacher = _build_open_clip(size, model, tag, weights_path, native_size, cache_dir, seed)
    else:
        teacher = _build_hf(size, model, pretrained, weights_path, native_size, cache_dir, seed)
    return teacher.freeze()

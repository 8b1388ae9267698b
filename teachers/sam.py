"""SAM teacher: the image encoder of Segment Anything (ViT-H/16 at 1024 px), via transformers.

- ``features`` = the output of the last transformer block, BEFORE the neck (the
  1x1 + 3x3 convolutions to 256 channels): 1280-d for ViT-H, ``[B, C, H/16, W/16]``.
  No final norm is applied (SAM's encoder has none before the neck).
- ``summary`` = None (SAM has no image-level embedding); ``summary_dim = None``.

transformers' ``SamVisionEncoder`` insists on its configured input size, so we run
its parts ourselves: patch projection, the absolute position table resized
bicubically to the input grid, then its layers (windowed layers pad to whole
windows; the global layers resize their relative-position tables themselves).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD, TeacherOutput, seeded
from radiosharp.registry import TEACHERS
from teachers._contract import (
    FrozenTeacher,
    HubWeightOptions,
    check_choice,
    check_layer,
    jitter_zero_tables,
    resize_pos_grid,
)
from teachers._transformers import hf_from_pretrained, hf_vision_config
from teachers._weights import load_weights_file

FAMILY = "sam"
DEFAULT_MODEL = "facebook/sam-vit-huge"
REAL_NATIVE = 1024
TINY_NATIVE = 128
PATCH = 16
# Tiny dims: width 40 (has a Hadamard matrix), 2 heads of 20, 2 blocks: one windowed
# (window 3, so an 8x8 grid pads to 9x9 as 64 pads to 70 in ViT-H) and one global.
TINY_CONFIG = dict(
    hidden_size=40,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_dim=160,
    window_size=3,
    global_attn_indexes=[1],
    output_channels=32,
    initializer_range=0.02,  # the library default (1e-10) would give an all-but-zero model
)


def _sam_encoder(width: int, depth: int, heads: int) -> dict[str, Any]:
    """A SAM image encoder's config: MLP 4x the width, 4 evenly spaced global layers (the last one last)."""
    return dict(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        mlp_dim=4 * width,
        global_attn_indexes=[(i + 1) * depth // 4 - 1 for i in range(4)],
    )


# The image encoders of the three SAM checkpoints (Kirillov et al. 2023: ViT-B/L/H with
# 14x14 windows and 4 evenly spaced global layers), for `size: random` without config files.
RANDOM_CONFIGS = {
    "facebook/sam-vit-base": _sam_encoder(768, 12, 12),
    "facebook/sam-vit-large": _sam_encoder(1024, 24, 16),
    "facebook/sam-vit-huge": _sam_encoder(1280, 32, 16),
}
HF_MODEL_TYPES = ("sam", "sam_vision_model")
# Where the encoder sits in a SamModel checkpoint / in a teacher.state_dict().
WEIGHT_PREFIXES = ("vision_encoder.", "model.vision_encoder.")


class SamTeacher(FrozenTeacher):
    """A frozen transformers ``SamVisionModel``; features before the neck."""

    name = FAMILY

    def __init__(self, model: nn.Module, native_size: int, layer: int = -1) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        encoder = model.vision_encoder
        self.model = model
        self.num_blocks = check_layer(FAMILY, layer, len(encoder.layers)) + 1
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.native_size = native_size
        self.embed_dim = int(model.config.hidden_size)
        self.summary_dim = None

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        encoder = self.model.vision_encoder
        x = encoder.patch_embed.projection(pixels).permute(0, 2, 3, 1)  # [B, h, w, C]
        if encoder.pos_embed is not None:
            x = x + resize_pos_grid(encoder.pos_embed, tuple(x.shape[1:3])).to(x.dtype)
        for layer in encoder.layers[: self.num_blocks]:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        return TeacherOutput(summary=None, features=x.permute(0, 3, 1, 2))


@TEACHERS.register(FAMILY)
def build_sam(common: HubWeightOptions, model: str = DEFAULT_MODEL, layer: int = -1) -> SamTeacher:
    """SAM's image encoder through transformers ``SamVisionModel``.

    - ``size``: ``real``, ``tiny`` (a ``SamVisionModel`` of width 40, 2 blocks, 2 heads,
      one windowed and one global, 128 px, seeded random weights) or ``random`` (the
      encoder of ``model``, one of the three SAM checkpoints, with seeded random weights).
    - ``model``: hub id or local folder (``facebook/sam-vit-huge``, ``-large``, ``-base``).
    - ``weights``: a local state-dict file in transformers layout (a whole ``SamModel``
      or the vision model); the architecture comes from ``model``'s config.
    - ``native_size``: the input side (1024 real, 128 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    - ``layer``: the block whose output is the features (``-1``: the last, as without
      the option; ``-4``: the fourth from last); SAM has no final norm before the neck,
      so none is applied; the blocks after it are not run.
    """
    from transformers import SamVisionConfig, SamVisionModel

    common.check(FAMILY)
    if common.size == "random":
        check_choice(FAMILY, "model (with size=random)", model, list(RANDOM_CONFIGS))
    weights_path, native = common.weights_and_native(FAMILY, (TINY_NATIVE, REAL_NATIVE), PATCH)
    if common.size in ("tiny", "random"):
        if common.size == "tiny":
            config = SamVisionConfig(**TINY_CONFIG, image_size=native, patch_size=PATCH)
        else:
            config = SamVisionConfig(
                **RANDOM_CONFIGS[model], image_size=REAL_NATIVE, patch_size=PATCH, initializer_range=0.02
            )
        with seeded(common.seed):
            net = SamVisionModel(config)
            jitter_zero_tables(net, ("pos_embed", "rel_pos_h", "rel_pos_w"))
    else:
        config = hf_vision_config(FAMILY, model, common.cache_dir, HF_MODEL_TYPES)
        net = (
            SamVisionModel(config)
            if weights_path is not None
            else hf_from_pretrained(FAMILY, SamVisionModel, model, common.cache_dir)
        )
    if weights_path is not None:
        load_weights_file(net.vision_encoder, weights_path, FAMILY, prefixes=WEIGHT_PREFIXES)
    return SamTeacher(net.float(), native, layer).freeze()

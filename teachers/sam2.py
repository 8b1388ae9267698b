"""SAM 2 teacher: the hierarchical Hiera image encoder of SAM 2 / 2.1, via transformers.

- ``features`` = the last stage's map of the Hiera backbone, BEFORE the neck (the FPN
  of 1x1 convolutions to 256 channels): 1152-d for Hiera-L, at stride 32, so the map is
  ``[B, C, H/32, W/32]`` and ``patch_size`` is 32 (a 4 px patch embedding, then three
  2x query-pooling stages). No norm is applied (Hiera has none before the neck).
- ``summary`` = None (SAM 2 has no image-level embedding); ``summary_dim = None``.

transformers' ``Sam2HieraDetModel`` resizes its background position table bicubically
to the input grid and tiles its window table over it, and its windowed blocks pad to
whole windows, so any multiple of 32 works (square or not). Only the backbone runs;
the neck's weights are kept so that a ``Sam2VisionModel`` checkpoint loads strictly.

Hiera is hierarchical, not a plain ViT: it takes no ``layer`` option (its blocks'
outputs are at four different strides and widths).

Real weights come from the model's hub files (``config.json`` for the architecture,
``model.safetensors``: the vision encoder of a whole ``Sam2Model``, ``vision_encoder.*``)
or a local ``weights:`` file in transformers layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD, TeacherOutput, seeded
from radiosharp.registry import TEACHERS
from teachers._contract import FrozenTeacher, HubWeightOptions, check_choice, jitter_zero_tables
from teachers._hub import fetch_hub_file, missing_weights
from teachers._transformers import hf_vision_config
from teachers._weights import load_weights_file

FAMILY = "sam2"
DEFAULT_MODEL = "facebook/sam2.1-hiera-large"
REAL_NATIVE = 1024
TINY_NATIVE = 128
HF_MODEL_TYPES = ("sam2", "sam2_vision_model")
WEIGHT_PREFIXES = ("vision_encoder.", "model.vision_encoder.", "model.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Tiny Hiera: width 8 doubling per stage to 64, 4 stages of 1, 1, 2, 1 blocks, windows of
# 4, 4, 4, 2 patches, one global block (index 3) as in the real models' third stage.
TINY_BACKBONE = dict(
    hidden_size=8,
    num_attention_heads=1,
    blocks_per_stage=[1, 1, 2, 1],
    global_attention_blocks=[3],
    window_positional_embedding_background_size=[4, 4],
    window_size_per_stage=[4, 4, 4, 2],
)
# The Hiera encoders of the four SAM 2 / 2.1 checkpoints (the sam2 repository's configs:
# embed_dim, num_heads, stages, global_att_blocks, window_pos_embed_bkg_spatial_size,
# window_spec), for `size: random` without config files. Widths and heads double per stage.
HIERA_CONFIGS = {
    "tiny": dict(
        hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9]
    ),
    "small": dict(
        hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]
    ),
    "base-plus": dict(
        hidden_size=112,
        num_attention_heads=2,
        blocks_per_stage=[2, 3, 16, 3],
        global_attention_blocks=[12, 16, 20],
        window_positional_embedding_background_size=[14, 14],
    ),
    "large": dict(
        hidden_size=144,
        num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4],
        global_attention_blocks=[23, 33, 43],
        window_size_per_stage=[8, 4, 16, 8],
    ),
}
RANDOM_MODELS = {f"facebook/{prefix}-hiera-{size}": size for prefix in ("sam2", "sam2.1") for size in HIERA_CONFIGS}


def hiera_vision_config(backbone: dict[str, Any], image_size: int) -> Any:
    """A ``Sam2VisionConfig`` whose Hiera widths and heads double per stage from ``backbone``'s."""
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig

    stages = len(backbone["blocks_per_stage"])
    widths = [backbone["hidden_size"] * 2**i for i in range(stages)]
    heads = [backbone["num_attention_heads"] * 2**i for i in range(stages)]
    hiera = Sam2HieraDetConfig(
        **backbone, embed_dim_per_stage=widths, num_attention_heads_per_stage=heads, image_size=[image_size] * 2
    )
    return Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=widths[::-1])


class Sam2Teacher(FrozenTeacher):
    """A frozen transformers ``Sam2VisionModel``; features = the last Hiera stage, before the neck."""

    name = FAMILY

    def __init__(self, model: nn.Module, native_size: int) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        hiera = model.config.backbone_config
        self.model = model
        self.patch_size = int(hiera.patch_stride[0]) * int(hiera.query_stride[0]) ** int(hiera.num_query_pool_stages)
        self.native_size = native_size
        self.embed_dim = int(hiera.embed_dim_per_stage[-1])
        self.summary_dim = None

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        hidden = self.model.backbone(pixel_values=pixels).last_hidden_state  # [B, h, w, C]
        return TeacherOutput(summary=None, features=hidden.permute(0, 3, 1, 2))


def _config(size: str, model: str, native: int, cache_dir: str | None) -> Any:
    if size == "tiny":
        return hiera_vision_config(TINY_BACKBONE, native)
    if size == "random":
        check_choice(FAMILY, "model (with size=random)", model, list(RANDOM_MODELS))
        return hiera_vision_config(HIERA_CONFIGS[RANDOM_MODELS[model]], REAL_NATIVE)
    return hf_vision_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)


def _checkpoint(model: str, cache_dir: str | None) -> Path:
    """The weights file of ``model``: in its local folder, else from the hub cache (or downloaded)."""
    folder = Path(model)
    if folder.is_dir():
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
        raise missing_weights(FAMILY, f"the local model '{model}'", None, cache_dir, f"it holds none of {WEIGHT_FILES}")
    return Path(fetch_hub_file(FAMILY, f"Hugging Face model '{model}'", model, WEIGHT_FILES, cache_dir))


@TEACHERS.register(FAMILY)
def build_sam2(common: HubWeightOptions, model: str = DEFAULT_MODEL) -> Sam2Teacher:
    """SAM 2's Hiera image encoder (``teachers.<key>.family: sam2``) through transformers.

    - ``size``: ``real``, ``tiny`` (a Hiera of widths 8-64 over 4 stages of 1, 1, 2, 1
      blocks, 128 px, seeded random weights) or ``random`` (the encoder of one of the
      SAM 2 / 2.1 checkpoints, ``RANDOM_MODELS``, with seeded random weights).
    - ``model``: hub id or local folder (``facebook/sam2.1-hiera-large``, ``-base-plus``,
      ``-small``, ``-tiny``, and the ``facebook/sam2-hiera-*`` ones).
    - ``weights``: a local state-dict file in transformers layout (a whole ``Sam2Model``
      or the vision model); the architecture comes from ``model``'s config.
    - ``native_size``: the input side, a multiple of 32 (1024 real, 128 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    """
    from transformers import Sam2VisionModel

    common.check(FAMILY)
    weights_path, native = common.weights_and_native(FAMILY, (TINY_NATIVE, REAL_NATIVE), 32)
    config = _config(common.size, model, native, common.cache_dir)
    if common.size == "real" and weights_path is None:  # the checkpoint before the (slow) build
        weights_path = _checkpoint(model, common.cache_dir)
    with seeded(common.seed):  # the weights of size: tiny / random; real ones are loaded over them
        net = Sam2VisionModel(config)
        jitter_zero_tables(net, ("pos_embed", "pos_embed_window"))
    if weights_path is not None:
        load_weights_file(net, weights_path, FAMILY, prefixes=WEIGHT_PREFIXES)
    return Sam2Teacher(net.float(), native).freeze()

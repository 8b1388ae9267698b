"""Any timm ViT as a teacher, by name (``family: timm``, ``model: vit_base_patch16_224.augreg_in21k``).

A generic adaptor, so a new backbone needs no code: any timm model with ViT structure
(``VisionTransformer``, ``Eva`` and the families built on them: DeiT, BEiT-style Eva,
DINOv2/v3, SigLIP trunks, AIMv2, ...) built with ``dynamic_img_size`` (any multiple of
the patch size; the position table, if any, is resized per call).

- ``features`` = the patch tokens after the final norm (``forward_features``); prefix
  tokens (class, registers, distillation) are dropped: ``[B, C, H/p, W/p]``.
- ``summary`` = ``summary: auto`` picks the normed class token when the model has one
  (``cls``), else its pooling head (``head``: e.g. ``map`` attention pool or ``avg``),
  else none.

mean/std come from the model's pretrained config (timm's, as its own transforms use),
and the default ``native_size`` from its input size, cut to a multiple of the patch.
Weights: timm's pretrained tag from the hub cache, or ``weights:`` a local file (timm
layout, an original DINOv2/v3 file, or an open_clip checkpoint whose timm tower is under
``visual.trunk.*``).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from radiosharp.contracts import seeded
from radiosharp.registry import TEACHERS
from teachers._contract import HubWeightOptions, check_choice, resolve_native_size
from teachers._timm import TimmViTTeacher, check_timm_name, create_timm_vit, load_timm_checkpoint, timm_checkpoint
from teachers._weights import check_weights_path

FAMILY = "timm"
DEFAULT_MODEL = "vit_base_patch16_224.augreg_in21k"
# Tiny dims: width 32, 2 blocks, 2 heads, an 8x8 patch grid at the default native size.
TINY = dict(embed_dim=32, depth=2, num_heads=2)
TINY_GRID = 8
WEIGHT_PREFIXES = ("visual.trunk.", "trunk.")
VIT_EXAMPLES = "e.g. vit_base_patch16_224.augreg_in21k, vit_large_patch14_reg4_dinov2.lvd142m"


def _summary_kind(trunk: nn.Module, summary: str) -> str | None:
    has_class_token = getattr(trunk, "has_class_token", getattr(trunk, "cls_token", None) is not None)
    if summary == "auto":
        return "cls" if has_class_token else ("head" if getattr(trunk, "global_pool", "") else None)
    if summary == "none":
        return None
    return summary


@TEACHERS.register(FAMILY)
def build_timm_teacher(
    common: HubWeightOptions,
    model: str = DEFAULT_MODEL,
    summary: Literal["auto", "cls", "head", "none"] = "auto",
    layer: int = -1,
) -> TimmViTTeacher:
    """Any timm ViT by name (``teachers.<key>.family: timm``, ``teachers.<key>.model: NAME``).

    - ``size``: ``real`` (timm's pretrained weights for ``model``, an ``arch.tag`` name),
      ``tiny`` (the same timm constructor at width 32, 2 blocks, 2 heads, an 8x8 grid,
      seeded random weights) or ``random`` (the real architecture, seeded random weights).
    - ``model``: a timm model name with its pretrained tag (``vit_base_patch16_224.augreg_in21k``).
    - ``weights``: a local state-dict file (overrides the tag).
    - ``native_size``: the input side (default: the model's input size cut to a multiple of
      the patch; 8 patches tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    - ``summary``: ``auto``, ``cls`` (normed class token), ``head`` (the model's pool) or ``none``.
    - ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
      the option), after the final norm; an intermediate layer gives no summary.
    """
    common.check(FAMILY)
    check_choice(FAMILY, "summary", summary, ("auto", "cls", "head", "none"))
    check_timm_name(FAMILY, model, "vit_*")
    weights_path = check_weights_path(FAMILY, common.weights)
    path = timm_checkpoint(FAMILY, common.size, model, weights_path, common.cache_dir)
    with seeded(common.seed):  # the weights of size: tiny / random; real ones are loaded over them
        try:
            probe = create_timm_vit(model, **TINY)  # patch size and structure, cheaply
        except TypeError as err:  # a CNN or hybrid: no ViT dims / dynamic_img_size
            raise ValueError(f"{FAMILY}: '{model}' is not a timm ViT ({err}); {VIT_EXAMPLES}") from None
        if not hasattr(probe, "blocks") or not hasattr(probe, "num_prefix_tokens"):
            raise ValueError(
                f"{FAMILY}: '{model}' is not a timm ViT (a {type(probe).__name__}: no blocks + prefix tokens); "
                f"{VIT_EXAMPLES}"
            )
        patch = int(probe.patch_embed.patch_size[0])
        cfg_side = int(probe.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        tiny = common.size == "tiny"
        default = TINY_GRID * patch if tiny else max(patch, cfg_side // patch * patch)
        native = resolve_native_size(FAMILY, common.native_size, default, patch)
        trunk = create_timm_vit(model, img_size=native, **TINY) if tiny else create_timm_vit(model)
    load_timm_checkpoint(trunk, path, FAMILY, WEIGHT_PREFIXES)
    cfg = trunk.pretrained_cfg
    kind = _summary_kind(trunk, summary)
    return TimmViTTeacher(trunk, FAMILY, native, cfg["mean"], cfg["std"], summary=kind, layer=layer).freeze()

"""Any open_clip ViT as a teacher, by model name + pretrained tag (``family: open_clip``).

A generic adaptor, so a new CLIP needs no code: ``model: ViT-B-16, pretrained:
laion2b_s34b_b88k`` (any ``open_clip.list_pretrained()`` pair, or ``hf-hub:ORG/REPO``).
It is the ``dfn_clip`` teacher with no model fixed (same code, ``teachers/_open_clip.py``):

- ``summary`` = the CLIP image embedding ``ln_post(CLS) @ proj`` (``encode_image``).
- ``features`` = the final patch tokens after ``ln_post``, not projected, ``[B, C, H/p, W/p]``.
- mean/std from the pretrained tag (else the model config's, else OpenAI CLIP's).
- ``text: true`` brings the text tower (zero-shot), as for ``dfn_clip``.

Models whose vision tower is open_clip's own ``VisionTransformer`` with a class-token
pool are supported (OpenAI, LAION, DataComp, DFN, MetaCLIP ViTs). open_clip models with
a timm tower (SigLIP, EVA, ...) are built by the ``timm`` family (``model:`` the tower's
timm name, ``weights:`` the open_clip checkpoint: its ``visual.trunk.*`` is read) or
``siglip``; their error says so.
"""

from __future__ import annotations

from radiosharp.registry import TEACHERS
from teachers._open_clip import open_clip_model_config
from teachers._open_clip_family import open_clip_builders

FAMILY = "open_clip"
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "laion2b_s34b_b88k"


def _check_tower(model: str, cache_dir: str | None) -> None:
    vision = open_clip_model_config(FAMILY, model, cache_dir)["vision_cfg"]
    timm_name = vision.get("timm_model_name")
    if timm_name:
        raise ValueError(
            f"{FAMILY}: '{model}' has a timm vision tower ({timm_name}); use family: timm with "
            f"model: {timm_name} and weights: the open_clip checkpoint (its visual.trunk.* is read), "
            "or family: siglip for SigLIP models"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"{FAMILY}: '{model}' has a ResNet vision tower; only ViT towers are supported")


BUILD_DOC = """Any open_clip ViT (``teachers.<key>.family: open_clip``, ``model:`` + ``pretrained:``).

- ``size``: ``real``, ``tiny`` (the model's open_clip ViT at width 64, 2 blocks, 4 heads,
  projection 24, 112 px for /14 or the tag's grid, seeded random weights) or ``random``
  (the named architecture with seeded random weights).
- ``model``: an open_clip model name (``ViT-B-16``) or ``hf-hub:ORG/REPO``.
- ``pretrained``: its open_clip pretrained tag (``laion2b_s34b_b88k``); unused for ``hf-hub:``.
- ``weights``: a local state-dict file (whole CLIP or the visual tower); overrides the tag.
- ``native_size``: the input side (default: the model's image size cut to a multiple
  of the patch; 112 tiny).
- ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
- ``seed``: the random weights of ``size: tiny`` / ``random``.
- ``text``: also load the (frozen) text tower and its tokenizer (zero-shot).
- ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
  the option), after ``ln_post``; an intermediate layer gives no summary and no text tower.
"""
build_open_clip_any, build_open_clip_any_text_tower = open_clip_builders(
    FAMILY, DEFAULT_MODEL, DEFAULT_PRETRAINED, BUILD_DOC, __name__, check_model=_check_tower, name="build_open_clip_any"
)
TEACHERS.register(FAMILY)(build_open_clip_any)

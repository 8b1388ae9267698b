"""DFN CLIP teacher: an open_clip ``VisionTransformer`` (ViT-H/14 at 378 px, DFN-5B weights).

Outputs (the norm applied is the model's final ``ln_post`` LayerNorm):

- ``summary`` = the CLIP image embedding: ``ln_post(CLS) @ proj`` (1024-d for ViT-H),
  exactly what open_clip's ``encode_image`` returns (before L2 normalisation).
- ``features`` = the final patch tokens after ``ln_post``, NOT projected (1280-d for
  ViT-H), as ``[B, C, H/14, W/14]``.

open_clip's own forward adds a fixed-size position table; ours resizes the patch
part of the table bicubically to the input grid, so any multiple of 14 works (at
the table's size the result equals open_clip's forward exactly).

With ``text: true`` the CLIP text tower comes too (``teachers/_text.py``):
``encode_text`` equals open_clip's ``CLIP.encode_text`` (projected, not normalised),
in the space of ``summary``.
"""

from __future__ import annotations

from typing import Literal

from radiosharp.contracts import CLIP_MEAN, CLIP_STD
from radiosharp.registry import TEACHERS
from teachers._contract import TeacherRequest, check_text_layer
from teachers._open_clip import OpenClipViTTeacher, build_open_clip_teacher, build_open_clip_text_only
from teachers._text import TextTower, text_tower_builder

FAMILY = "dfn_clip"


@TEACHERS.register(FAMILY)
def build_dfn_clip(
    size: Literal["tiny", "real", "random"] = "real",
    model: str = "ViT-H-14-378-quickgelu",
    pretrained: str | None = "dfn5b",
    weights: str | None = None,
    native_size: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    text: bool = False,
    layer: int = -1,
) -> OpenClipViTTeacher:
    """DFN CLIP through open_clip.

    - ``size``: ``real`` (the named model, real weights), ``tiny`` (same open_clip
      ViT family: width 64, 2 blocks, 4 heads, projection 24, 112 px, seeded random
      weights; with ``text``, a text transformer of width 32, 2 blocks, 16 tokens,
      projected to 24) for tests and demos, or ``random`` (the named model's
      architecture with seeded random weights, for benchmarks).
    - ``model``: an open_clip model name (``ViT-H-14-378-quickgelu``) or ``hf-hub:ORG/REPO``
      (e.g. ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-378``; then ``pretrained`` is unused).
    - ``pretrained``: the open_clip pretrained tag (``dfn5b``).
    - ``weights``: a local state-dict file (whole CLIP or the visual tower); overrides the tag.
    - ``native_size``: the input side the teacher runs at (378 real, 112 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    - ``text``: also load the (frozen) text tower and its tokenizer, exposing
      ``encode_text(tokens) -> [K, summary_dim]`` and ``tokenize(prompts)`` for zero-shot
      classification (needs a whole-CLIP weights file).
    - ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
      the option; ``-4``: the fourth from last), after ``ln_post``; an intermediate
      layer gives no summary and takes no text tower.
    """
    check_text_layer(FAMILY, text, layer)
    request = TeacherRequest(size, model, pretrained, weights, native_size, cache_dir, seed, text, layer)
    return build_open_clip_teacher(FAMILY, request, CLIP_MEAN, CLIP_STD)


@text_tower_builder(build_dfn_clip)
def build_dfn_clip_text_tower(
    size: str,
    model: str,
    pretrained: str | None,
    weights: str | None,
    native_size: int | None,
    cache_dir: str | None,
    seed: int,
    text: bool,
    layer: int,
) -> TextTower:  # noqa: ARG001 - text, layer: the teacher's options, as stored
    """Only the text tower of ``build_dfn_clip(**same options, text=True)`` (no vision tower built).

    Takes ``build_dfn_clip``'s options with its defaults (see ``text_tower_builder``).
    """
    request = TeacherRequest(size, model, pretrained, weights, native_size, cache_dir, seed, text=True)
    return build_open_clip_text_only(FAMILY, request, CLIP_MEAN, CLIP_STD)

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

from radiosharp.registry import TEACHERS
from teachers._open_clip_family import open_clip_builders

FAMILY = "dfn_clip"
DEFAULT_MODEL = "ViT-H-14-378-quickgelu"
DEFAULT_PRETRAINED = "dfn5b"

BUILD_DOC = """DFN CLIP through open_clip.

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
build_dfn_clip, build_dfn_clip_text_tower = open_clip_builders(
    FAMILY, DEFAULT_MODEL, DEFAULT_PRETRAINED, BUILD_DOC, __name__
)
TEACHERS.register(FAMILY)(build_dfn_clip)

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from radiosharp.contracts import CLIP_MEAN, CLIP_STD, seeded
from radiosharp.registry import TEACHERS
from teachers._contract import (
    SIZES,
    TeacherRequest,
    check_choice,
    check_random_size,
    check_text_layer,
    resolve_native_size,
)
from teachers._open_clip import (
    OpenClipViTTeacher,
    build_open_clip_tower,
    open_clip_model_config,
    open_clip_pretrained,
    open_clip_text_tokenizer,
    open_clip_text_tower,
    open_clip_weights_file,
)
from teachers._text import TextTower, Tokenizer, text_tower_builder
from teachers._weights import check_weights_path, load_weights_state, read_weights_file

FAMILY = "dfn_clip"
REAL_NATIVE = 378
TINY_GRID = 8
# Tiny dims: width 64 (has a Hadamard matrix), 4 heads of 16, 2 blocks; the CLIP
# projection maps to 24, so summary_dim != embed_dim as in the real model (1280 -> 1024).
TINY_VISION = dict(width=64, layers=2, head_width=16)
TINY_PROJ_DIM = 24


class OpenClipSetup(NamedTuple):
    """What both towers of an open_clip teacher are built from (resolved once)."""

    config: dict[str, Any]
    quick_gelu: bool
    mean: Sequence[float]
    std: Sequence[float]
    native: int
    weights: Path | None  # the local weights file: `weights:`, or the tag's cached checkpoint (real)


def open_clip_setup(
    family: str, request: TeacherRequest, default_mean: Sequence[float], default_std: Sequence[float]
) -> OpenClipSetup:
    """Check the options, read the model config and find the weights file (before any build)."""
    size, model, pretrained, weights, native_size, cache_dir = request[:6]
    check_choice(family, "size", size, SIZES)
    weights_path = check_weights_path(family, weights)
    config = open_clip_model_config(family, model, cache_dir)
    vision = config["vision_cfg"]
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"{family}: '{model}' is not an open_clip VisionTransformer (timm or ResNet tower)")
    entry = open_clip_pretrained(family, model, pretrained) if weights_path is None else {}
    quick_gelu = bool(config.get("quick_gelu", False) or entry.get("quick_gelu", False))
    preprocess = config.get("preprocess_cfg", {})
    mean = entry.get("mean") or preprocess.get("mean") or default_mean
    std = entry.get("std") or preprocess.get("std") or default_std
    patch = vision.get("patch_size", 16)
    table_size = vision.get("image_size", REAL_NATIVE)
    table_size = table_size[0] if isinstance(table_size, (list, tuple)) else table_size
    # tiny: an 8x8 grid (112 px for /14); real: the table size cut to the patch (378 for ViT-H-14-378)
    default_native = TINY_GRID * patch if size == "tiny" else (table_size // patch) * patch
    native = resolve_native_size(family, native_size, default_native, patch)
    if size == "tiny":
        vision.update(TINY_VISION, image_size=native)
        config["embed_dim"] = TINY_PROJ_DIM
        path = weights_path
    elif size == "random":
        path = None
    else:
        # Resolve the checkpoint before building: a missing file fails in milliseconds.
        path = weights_path or Path(open_clip_weights_file(family, model, pretrained, cache_dir))
    return OpenClipSetup(config, quick_gelu, mean, std, native, path)


def open_clip_text(
    family: str,
    setup: OpenClipSetup,
    request: TeacherRequest,
    state: dict[str, torch.Tensor] | None,
    tokenizer: Tokenizer,
) -> TextTower:
    """The CLIP text tower (``encode_text`` = open_clip's), projected to ``embed_dim``."""
    config = setup.config
    return open_clip_text_tower(
        family,
        request.model,
        config,
        setup.quick_gelu,
        config["embed_dim"],
        request.size,
        request.seed,
        state,
        f"file {setup.weights}",
        tokenizer,
    )


def build_open_clip_teacher(
    family: str, request: TeacherRequest, default_mean: Sequence[float], default_std: Sequence[float]
) -> OpenClipViTTeacher:
    """Build an open_clip ViT teacher (real: config + strict weights; tiny, random: seeded random).

    With ``request.text`` the text tower is built too, from the same weights file (read once).
    """
    size, model, _, weights, _, cache_dir, seed, text = request[:8]
    check_random_size(family, size, weights, text)
    setup = open_clip_setup(family, request, default_mean, default_std)
    tokenizer = open_clip_text_tokenizer(family, model, setup.config, size, cache_dir) if text else None
    with seeded(seed):  # the weights of size: tiny / random; real ones are loaded below
        visual = build_open_clip_tower(setup.config, setup.quick_gelu)
    state = read_weights_file(setup.weights) if setup.weights is not None else None
    if state is not None:
        load_weights_state(visual, state, family, f"file {setup.weights}", prefixes=("visual.",))
    teacher = OpenClipViTTeacher(visual, family, setup.native, setup.mean, setup.std, request.layer)
    if text:
        teacher.attach_text_tower(open_clip_text(family, setup, request, state, tokenizer))
    return teacher.freeze()


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
    check_random_size(FAMILY, size, weights, text=True)
    request = TeacherRequest(size, model, pretrained, weights, native_size, cache_dir, seed, text=True)
    setup = open_clip_setup(FAMILY, request, CLIP_MEAN, CLIP_STD)
    tokenizer = open_clip_text_tokenizer(FAMILY, model, setup.config, size, cache_dir)
    state = read_weights_file(setup.weights) if setup.weights is not None else None
    return open_clip_text(FAMILY, setup, request, state, tokenizer)

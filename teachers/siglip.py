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

With ``text: true`` the text tower comes too (``teachers/_text.py``): open_clip's
SigLIP text transformer (``text.*``) or transformers' ``SiglipTextModel``
(``text_model.*``), whose pooled output is in the space of the image ``summary``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from radiosharp.contracts import HALF_MEAN, HALF_STD, seeded
from radiosharp.registry import TEACHERS
from teachers._contract import (
    SIZES,
    FrozenTeacher,
    HubWeightOptions,
    TeacherRequest,
    check_choice,
    check_random_size,
    check_text_layer,
    resolve_native_size,
)
from teachers._open_clip import (
    open_clip_model_config,
    open_clip_pretrained,
    open_clip_text_tokenizer,
    open_clip_text_tower,
    open_clip_weights_file,
    simple_tokenizer,
)
from teachers._text import TINY_CONTEXT, TINY_TEXT, TextTower, Tokenizer, load_text_state, text_tower_builder
from teachers._timm import TimmViTTeacher, create_timm_vit
from teachers._transformers import HFAttentionPoolTeacher, HFTextTower, hf_config, hf_from_pretrained, hf_tokenizer
from teachers._weights import check_weights_path, load_weights_state, read_optional_weights

FAMILY = "siglip"
SOURCES = ("open_clip", "hf")
DEFAULT_MODELS = {"open_clip": "ViT-SO400M-14-SigLIP-384", "hf": "google/siglip2-so400m-patch14-384"}
DEFAULT_PRETRAINED = "webli"
TINY_NATIVE = 112
PATCH = 14
# Tiny dims: width 48 (has a Hadamard matrix), 4 heads of 12, 2 blocks, MAP head.
TINY_WIDTH, TINY_DEPTH, TINY_HEADS = 48, 2, 4
HF_MODEL_TYPES = ("siglip", "siglip_vision_model")


class HFSiglipTeacher(HFAttentionPoolTeacher):
    """A frozen transformers ``SiglipVisionModel`` (with its attention-pool head)."""

    name = FAMILY

    def model_inputs(self, pixels: torch.Tensor) -> dict[str, Any]:
        return {"pixel_values": pixels, "interpolate_pos_encoding": True}  # the table resized to the grid


def _default_native(image_size: int, patch: int, size: str) -> int:
    return TINY_NATIVE if size == "tiny" else (image_size // patch) * patch


class OpenClipSiglipSetup(NamedTuple):
    """What both towers of an open_clip SigLIP are built from (resolved before any build)."""

    config: dict[str, Any]
    timm_name: str
    mean: Sequence[float]
    std: Sequence[float]
    weights: Path | None  # `weights:`, or the tag's cached checkpoint (real)


def _open_clip_setup(
    size: str, model: str, pretrained: str | None, weights: Path | None, cache_dir: str | None
) -> OpenClipSiglipSetup:
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
    if size in ("tiny", "random"):
        path = weights
    else:
        path = weights or Path(open_clip_weights_file(FAMILY, model, pretrained, cache_dir))  # before the build
    return OpenClipSiglipSetup(config, timm_name, mean, std, path)


def _open_clip_text(
    setup: OpenClipSiglipSetup, request: TeacherRequest, state: dict[str, torch.Tensor] | None, tokenizer: Tokenizer
) -> TextTower:
    """SigLIP's text transformer (``text.*`` of open_clip's CustomTextCLIP), width = the image embedding's."""
    size, config = request.size, setup.config
    output_dim = TINY_WIDTH if size == "tiny" else config["embed_dim"]
    quick_gelu = bool(config.get("quick_gelu", False))
    where = f"file {setup.weights}"
    return open_clip_text_tower(
        FAMILY, request.model, config, quick_gelu, output_dim, size, request.seed, state, where, tokenizer
    )


def _build_open_clip(request: TeacherRequest) -> TimmViTTeacher:
    size, model, pretrained, weights, native_size, cache_dir, seed, text = request[:8]
    setup = _open_clip_setup(size, model, pretrained, weights, cache_dir)
    tokenizer = open_clip_text_tokenizer(FAMILY, model, setup.config, size, cache_dir) if text else None
    if size == "tiny":
        native = resolve_native_size(FAMILY, native_size, TINY_NATIVE, PATCH)
        with seeded(seed):
            trunk = create_timm_vit(
                setup.timm_name,
                global_pool="map",
                img_size=native,
                embed_dim=TINY_WIDTH,
                depth=TINY_DEPTH,
                num_heads=TINY_HEADS,
            )
    else:
        with seeded(seed):  # the weights of size: random; real ones are loaded below
            trunk = create_timm_vit(setup.timm_name, global_pool="map")
        patch = trunk.patch_embed.patch_size[0]
        native = resolve_native_size(
            FAMILY, native_size, _default_native(trunk.patch_embed.img_size[0], patch, size), patch
        )
    state = read_optional_weights(setup.weights)
    if state is not None:
        load_weights_state(trunk, state, FAMILY, f"file {setup.weights}", prefixes=("visual.trunk.", "trunk."))
    teacher = TimmViTTeacher(trunk, FAMILY, native, setup.mean, setup.std, summary="head", layer=request.layer)
    if text:
        teacher.attach_text_tower(_open_clip_text(setup, request, state, tokenizer))
    return teacher


def _check_hf_options(pretrained: str | None) -> None:
    if pretrained is not None:
        raise ValueError(
            f"{FAMILY}: `pretrained` is an open_clip tag; with `source: hf` the weights come from "
            f"the hub id `model` (or `weights:`), so leave `pretrained` unset"
        )


def _hf_model_config(model: str, cache_dir: str | None, text: bool) -> Any:
    """The hub config of a real HF SigLIP; with ``text`` it must be a whole (vision + text) model."""
    config = hf_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)
    if text and getattr(config, "text_config", None) is None:
        raise ValueError(
            f"{FAMILY}: '{model}' is a '{config.model_type}' model without a text tower; "
            f"`text: true` needs a whole SigLIP model id (e.g. {DEFAULT_MODELS['hf']})"
        )
    return config


def _hf_text(
    size: str,
    model: str,
    config: Any,
    seed: int,
    state: dict[str, torch.Tensor] | None,
    source: str,
    tokenizer: Tokenizer,
    cache_dir: str | None,
) -> HFTextTower:
    """transformers' ``SiglipTextModel``: ``pooler_output`` = the text head on the last token."""
    from transformers import SiglipTextConfig, SiglipTextModel

    if size == "tiny":
        tiny = SiglipTextConfig(
            vocab_size=simple_tokenizer(FAMILY).vocab_size,
            hidden_size=TINY_TEXT["width"],
            intermediate_size=4 * TINY_TEXT["width"],
            num_hidden_layers=TINY_TEXT["layers"],
            num_attention_heads=TINY_TEXT["heads"],
            max_position_embeddings=TINY_CONTEXT,
            projection_size=TINY_WIDTH,
        )
        with seeded(seed):
            net = SiglipTextModel(tiny)
    elif state is not None:
        net = SiglipTextModel(config.text_config)
    else:
        net = hf_from_pretrained(FAMILY, SiglipTextModel, model, cache_dir)
    if state is not None:
        load_text_state(net, state, FAMILY, source)
    return HFTextTower(net.float(), tokenizer, net.config.projection_size, FAMILY)


def _hf_tokenizer(size: str, model: str, config: Any, cache_dir: str | None) -> Tokenizer:
    if size == "tiny":
        return simple_tokenizer(FAMILY)
    return hf_tokenizer(FAMILY, model, config.text_config.max_position_embeddings, cache_dir)


def _build_hf(request: TeacherRequest) -> HFSiglipTeacher:
    size, model, pretrained, weights, native_size, cache_dir, seed, text = request[:8]
    from transformers import SiglipVisionConfig, SiglipVisionModel

    _check_hf_options(pretrained)
    full = None if size == "tiny" else _hf_model_config(model, cache_dir, text)
    tokenizer = _hf_tokenizer(size, model, full, cache_dir) if text else None
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
        config = getattr(full, "vision_config", full)
        native = resolve_native_size(
            FAMILY, native_size, _default_native(config.image_size, config.patch_size, size), config.patch_size
        )
        net = (
            SiglipVisionModel(config)
            if weights is not None
            else hf_from_pretrained(FAMILY, SiglipVisionModel, model, cache_dir)
        )
    state = read_optional_weights(weights)
    if state is not None:
        load_weights_state(net, state, FAMILY, f"file {weights}", prefixes=("vision_model.",))
    teacher = HFSiglipTeacher(net.float(), native, request.layer)
    if text:
        teacher.attach_text_tower(_hf_text(size, model, full, seed, state, f"file {weights}", tokenizer, cache_dir))
    return teacher


def _resolve(
    size: str, source: str, model: str | None, pretrained: str | None, weights: str | None
) -> tuple[str, str | None, Path | None]:
    """Checked options: (model, pretrained tag, weights path)."""
    check_choice(FAMILY, "size", size, SIZES)
    check_choice(FAMILY, "source", source, SOURCES)
    weights_path = check_weights_path(FAMILY, weights)
    model = model or DEFAULT_MODELS[source]
    if source == "open_clip" and pretrained is None and not model.startswith("hf-hub:"):
        pretrained = DEFAULT_PRETRAINED
    return model, pretrained, weights_path


@TEACHERS.register(FAMILY)
def build_siglip(
    common: HubWeightOptions,
    source: Literal["open_clip", "hf"] = "open_clip",
    model: str | None = None,
    pretrained: str | None = None,
    text: bool = False,
    layer: int = -1,
) -> FrozenTeacher:
    """SigLIP / SigLIP 2.

    - ``size``: ``real``, ``tiny`` (same family as the source: a timm ViT with a MAP
      head for open_clip, a ``SiglipVisionModel`` for hf; width 48, 2 blocks, 4 heads,
      112 px, seeded random weights; with ``text``, a SigLIP text transformer of width
      32, 2 blocks, 16 tokens, projected to 48) or ``random`` (open_clip only: the
      model's real timm tower with seeded random weights, for benchmarks).
    - ``source``: ``open_clip`` (default model ``ViT-SO400M-14-SigLIP-384``, tag ``webli``)
      or ``hf`` (default ``google/siglip2-so400m-patch14-384``; fixed-resolution SigLIP /
      SigLIP 2 ids, not the NaFlex ones).
    - ``model``: open_clip name / ``hf-hub:ORG/REPO``, or hub id / local folder for ``hf``.
    - ``pretrained``: the open_clip tag (default ``webli``); unused with ``hf``.
    - ``weights``: a local state-dict file (whole model or vision tower); overrides the rest.
    - ``native_size``: the input side (default: the model's size cut to a multiple of 14,
      378 for SO400M-384; 112 tiny).
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    - ``text``: also load the (frozen) text tower and its tokenizer (open_clip's, or the
      hub id's for hf), exposing ``encode_text(tokens) -> [K, summary_dim]`` and
      ``tokenize(prompts)`` for zero-shot classification (needs a whole-model weights file).
    - ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
      the option; ``-4``: the fourth from last), after the final LayerNorm; an
      intermediate layer gives no summary (the MAP head reads the last block) and takes
      no text tower.
    """
    size, weights = common.size, common.weights
    model, pretrained, weights_path = _resolve(size, source, model, pretrained, weights)
    check_random_size(FAMILY, size, weights, text, source, ("open_clip",))
    check_text_layer(FAMILY, text, layer)
    request = common.request(model, pretrained, text, layer, weights=weights_path)
    if source == "open_clip":
        teacher = _build_open_clip(request)
    else:
        teacher = _build_hf(request)
    return teacher.freeze()


@text_tower_builder(build_siglip)
def build_siglip_text_tower(
    size: str,
    source: str,
    model: str | None,
    pretrained: str | None,
    weights: str | None,
    native_size: int | None,
    cache_dir: str | None,
    seed: int,  # noqa: ARG001
    text: bool,
    layer: int,
) -> TextTower:  # noqa: ARG001 - the teacher's options, as stored
    """Only the text tower of ``build_siglip(**same options, text=True)`` (no vision tower built).

    Takes ``build_siglip``'s options with its defaults (see ``text_tower_builder``).
    """
    model, pretrained, weights_path = _resolve(size, source, model, pretrained, weights)
    check_random_size(FAMILY, size, weights, text=True)
    if source == "open_clip":
        setup = _open_clip_setup(size, model, pretrained, weights_path, cache_dir)
        tokenizer = open_clip_text_tokenizer(FAMILY, model, setup.config, size, cache_dir)
        state = read_optional_weights(setup.weights)
        request = TeacherRequest(size, model, pretrained, weights_path, native_size, cache_dir, seed, text=True)
        return _open_clip_text(setup, request, state, tokenizer)
    _check_hf_options(pretrained)
    full = None if size == "tiny" else _hf_model_config(model, cache_dir, text=True)
    tokenizer = _hf_tokenizer(size, model, full, cache_dir)
    state = read_optional_weights(weights_path)
    return _hf_text(size, model, full, seed, state, f"file {weights_path}", tokenizer, cache_dir)

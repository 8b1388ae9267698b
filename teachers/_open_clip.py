"""open_clip models: configs, pretrained tags, checkpoints, the vision tower and the teacher
around it (:class:`OpenClipViTTeacher`), the text tower and its tokenizers, and the build of
both towers that the ``dfn_clip`` and ``open_clip`` families share (:func:`build_open_clip_teacher`).

``size: tiny`` text towers use open_clip's ``SimpleTokenizer``, whose BPE vocabulary
ships inside the open_clip package, so they work offline.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from radiosharp.contracts import TeacherOutput, seeded
from teachers._contract import (
    FINAL_LAYER,
    SIZES,
    FrozenTeacher,
    TeacherRequest,
    check_choice,
    check_layer,
    check_random_size,
    resize_pos_grid,
    resolve_native_size,
    tokens_to_map,
)
from teachers._hub import fetch_hub_file, hub_offline, missing_weights, url_weights_file
from teachers._text import TINY_CONTEXT, TINY_TEXT, TextTower, Tokenizer, first_line, load_text_state
from teachers._weights import check_weights_path, load_weights_state, read_optional_weights

TOKENIZER_FIELDS = ("hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode")
DEFAULT_IMAGE_SIZE = 378  # the position table's side when a vision config gives none
TINY_GRID = 8
# Tiny dims: width 64 (has a Hadamard matrix), 4 heads of 16, 2 blocks; the CLIP
# projection maps to 24, so summary_dim != embed_dim as in the real models (1280 -> 1024 for ViT-H).
TINY_VISION = dict(width=64, layers=2, head_width=16)
TINY_PROJ_DIM = 24


def open_clip_model_config(family: str, model: str, cache_dir: str | None) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ...) of a built-in name or ``hf-hub:``."""
    import copy
    import difflib
    import json

    import open_clip
    from open_clip.constants import HF_CONFIG_NAME

    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :]
        path = fetch_hub_file(family, f"open_clip model '{model}'", repo, [HF_CONFIG_NAME], cache_dir)
        config = json.loads(Path(path).read_text())
        return {**config["model_cfg"], "preprocess_cfg": config.get("preprocess_cfg", {})}
    config = open_clip.get_model_config(model)
    if config is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
        raise ValueError(
            f"{family}: unknown open_clip model '{model}'"
            + (f"; did you mean: {', '.join(close)}" if close else "; see open_clip.list_models()")
            + " (or use 'hf-hub:ORG/REPO')"
        )
    return copy.deepcopy(config)


def open_clip_pretrained(family: str, model: str, pretrained: str | None) -> dict[str, Any]:
    """The pretrained-tag entry (``hf_hub``/``url``, mean/std, quick_gelu); {} for ``hf-hub:`` models."""
    import open_clip

    if model.startswith("hf-hub:") or pretrained is None:
        return {}
    entry = open_clip.pretrained.get_pretrained_cfg(model, pretrained)
    if not entry:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"{family}: open_clip model '{model}' has no pretrained tag '{pretrained}'; "
            f"its tags: {', '.join(tags) or '(none)'}"
        )
    return entry


def open_clip_weights_file(family: str, model: str, pretrained: str | None, cache_dir: str | None) -> str:
    """Local path of the open_clip checkpoint of ``model`` + ``pretrained``, cache first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    what = f"open_clip model '{model}'" + (f" pretrained '{pretrained}'" if pretrained else "")
    if model.startswith("hf-hub:"):
        repo, filenames = model[len("hf-hub:") :], [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    else:
        if pretrained is None:
            raise ValueError(f"{family}: real open_clip weights need `pretrained:` (a tag) or `weights:` (a file)")
        entry = open_clip_pretrained(family, model, pretrained)
        hub = entry.get("hf_hub", "")
        if not hub:
            return _open_clip_url_file(family, what, entry.get("url", ""), cache_dir)
        repo, filename = os.path.split(hub)  # 'org/repo/' (default file names) or 'org/repo/file'
        if filename in ("", HF_WEIGHTS_NAME):
            filenames = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        else:
            filenames = [filename]
    return fetch_hub_file(family, what, repo, filenames, cache_dir)


def _open_clip_url_file(family: str, what: str, url: str, cache_dir: str | None) -> str:
    """Checkpoints published by URL only live in open_clip's own cache (``~/.cache/clip``)."""
    import open_clip

    def download(url: str, target: str) -> None:  # open_clip's own, which checks the file's SHA-256
        open_clip.pretrained.download_pretrained_from_url(url, cache_dir=os.path.dirname(target))

    return url_weights_file(family, what, url, Path(cache_dir or Path("~/.cache/clip").expanduser()), download)


def build_open_clip_tower(config: dict[str, Any], quick_gelu: bool) -> nn.Module:
    """open_clip's own vision-tower constructor, without building the text tower."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    return _build_vision_tower(config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), quick_gelu=quick_gelu)


# ----------------------------------------------------------------------------- the vision teacher


class OpenClipViTTeacher(FrozenTeacher):
    """A frozen open_clip ``VisionTransformer`` with position-table resizing.

    Outputs: ``summary`` = ``ln_post(CLS) @ proj`` (open_clip's ``encode_image``),
    ``features`` = the patch tokens after ``ln_post``, not projected. ``layer`` (see
    :func:`~teachers._contract.check_layer`): another block's patch tokens, also after
    ``ln_post``, with no summary; the blocks after it are not run.
    """

    def __init__(self, visual: nn.Module, name: str, native_size: int, mean, std, layer: int = FINAL_LAYER) -> None:
        super().__init__(mean, std)
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError(f"{name}: only open_clip ViTs with a class token pool ('tok') are supported")
        if getattr(visual, "final_ln_after_pool", False):
            raise ValueError(f"{name}: open_clip ViTs with final_ln_after_pool are not supported")
        self.name = name
        self.model = visual
        self.patch_size = visual.patch_size[0]
        self.native_size = native_size
        self.embed_dim = visual.conv1.out_channels
        blocks = visual.transformer.resblocks
        self.block_index = check_layer(name, layer, len(blocks))
        self.final_layer = self.block_index == len(blocks) - 1
        if not self.final_layer:
            self.summary_dim = None
        else:
            self.summary_dim = visual.proj.shape[1] if visual.proj is not None else self.embed_dim

    def position_table(self, height: int, width: int) -> torch.Tensor:
        """``[1, 1 + h*w, C]``: the class position plus the patch table resized to ``h x w``."""
        table = self.model.positional_embedding
        grid_h, grid_w = self.model.grid_size
        patches = table[1:].reshape(1, grid_h, grid_w, -1)
        patches = resize_pos_grid(patches, (height, width)).reshape(1, height * width, -1)
        return torch.cat([table[:1].unsqueeze(0), patches], dim=1)

    def run_blocks(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """Tokens ``[B, N, C]`` after the first ``count`` residual blocks (open_clip's own loop)."""
        transformer = self.model.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:count]:
            x = block(x)
        return x if transformer.batch_first else x.transpose(0, 1)

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        visual = self.model
        x = visual.conv1(pixels)  # [B, C, h, w]
        batch, channels, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, channels).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_table(height, width).to(x.dtype)
        x = visual.ln_pre(x)
        if not self.final_layer:
            x = self.run_blocks(x, self.block_index + 1)
            return TeacherOutput(summary=None, features=tokens_to_map(visual.ln_post(x)[:, 1:], height, width))
        x = visual.transformer(x)
        x = visual.ln_post(x)
        summary = x[:, 0] @ visual.proj if visual.proj is not None else x[:, 0]
        return TeacherOutput(summary=summary, features=tokens_to_map(x[:, 1:], height, width))


# ----------------------------------------------------------------------------- tokenizers


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(bpe_path: str, context_length: int) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(bpe_path=bpe_path, context_length=context_length)


def simple_tokenizer_path(family: str) -> str:
    """The CLIP BPE vocabulary inside the open_clip package; a clear error when it is missing."""
    from open_clip import tokenizer as oc_tokenizer

    path = Path(oc_tokenizer.default_bpe())
    if not path.is_file():
        raise FileNotFoundError(
            f"{family}: the text tokenizer's BPE vocabulary {path} is missing from the open_clip package; "
            f"reinstall it (`pip install --force-reinstall open_clip_torch`)"
        )
    return str(path)


def simple_tokenizer(family: str, context_length: int = TINY_CONTEXT) -> Tokenizer:
    """open_clip's CLIP BPE tokenizer from the vocabulary file inside the package (offline)."""
    return _simple_tokenizer(simple_tokenizer_path(family), context_length)


def open_clip_tokenizer(family: str, model: str, text_cfg: dict[str, Any], cache_dir: str | None) -> Tokenizer:
    """The tokenizer ``open_clip.get_tokenizer(model)`` would give, from the config already read.

    Same choice as open_clip: the config's ``hf_tokenizer_name`` (a transformers tokenizer,
    from the cache first; none cached is a MissingWeightsError naming it), open_clip's own
    SigLIP vocabularies for built-in SigLIP names without one, else CLIP's BPE (shipped in
    the package) at the config's context length. Built from our config rather than by
    ``get_tokenizer`` itself, because that one re-fetches the config and ignores
    ``HF_HUB_OFFLINE`` set after import.
    """
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    repo = text_cfg.get("hf_tokenizer_name")
    if repo:
        try:
            return HFTokenizer(
                repo,
                context_length=context_length,
                cache_dir=cache_dir,
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                local_files_only=hub_offline(),
                **kwargs,
            )
        except (OSError, ValueError) as err:
            raise missing_weights(
                family, f"the text tokenizer of '{model}' ({repo})", repo, cache_dir, first_line(err)
            ) from err
    if not model.startswith("hf-hub:") and "siglip" in model.lower():
        try:
            return open_clip.get_tokenizer(model, context_length=context_length)
        except (OSError, ValueError) as err:  # its SentencePiece vocabulary is downloaded on first use
            raise missing_weights(
                family, f"the SigLIP text tokenizer of '{model}'", None, cache_dir, first_line(err)
            ) from err
    return SimpleTokenizer(bpe_path=simple_tokenizer_path(family), context_length=context_length, **kwargs)


# ----------------------------------------------------------------------------- text towers


def open_clip_text_encoder(
    family: str, model: str, config: dict[str, Any], quick_gelu: bool, output_dim: int, tiny: bool
) -> nn.Module:
    """open_clip's ``TextTransformer`` for ``config`` (tiny: the same flags at tiny dims).

    Build it under ``seeded(seed)`` for reproducible tiny weights.
    """
    from open_clip.model import _build_text_tower

    text_cfg = dict(config.get("text_cfg") or {})
    if not text_cfg:
        raise ValueError(f"{family}: open_clip model '{model}' has no text tower config (text_cfg)")
    if text_cfg.get("hf_model_name"):
        raise ValueError(
            f"{family}: '{model}' has a Hugging Face text encoder ({text_cfg['hf_model_name']}); "
            "only open_clip TextTransformer towers are supported with `text: true`"
        )
    for key in TOKENIZER_FIELDS:  # the tokenizer's business, not the tower's
        text_cfg.pop(key, None)
    if tiny:  # tiny towers read open_clip's own BPE tokens (pad 0, end-of-text = the highest id)
        text_cfg.update(TINY_TEXT, context_length=TINY_CONTEXT, vocab_size=simple_tokenizer(family).vocab_size)
        text_cfg.pop("pad_id", None)
        text_cfg.pop("eos_id", None)
    return _build_text_tower(output_dim, text_cfg, quick_gelu=quick_gelu)


def open_clip_text_tokenizer(
    family: str, model: str, config: dict[str, Any], size: str, cache_dir: str | None
) -> Tokenizer:
    """The tokenizer of an open_clip text tower: offline BPE for tiny, ``get_tokenizer(model)`` for real.

    Builders ask for it before building any tower, so a missing tokenizer fails fast.
    """
    if size == "tiny":
        return simple_tokenizer(family)
    return open_clip_tokenizer(family, model, config.get("text_cfg") or {}, cache_dir)


def open_clip_text_tower(
    family: str,
    model: str,
    config: dict[str, Any],
    quick_gelu: bool,
    output_dim: int,
    size: str,
    seed: int,
    state: dict[str, torch.Tensor] | None,
    source: str,
    tokenizer: Tokenizer,
) -> TextTower:
    """The text tower of an open_clip teacher.

    ``state``: the whole-model weights (already read for the vision tower), or None for
    seeded random tiny weights.
    """
    if size == "tiny":
        with seeded(seed):
            encoder = open_clip_text_encoder(family, model, config, quick_gelu, output_dim, tiny=True)
    else:
        encoder = open_clip_text_encoder(family, model, config, quick_gelu, output_dim, tiny=False)
    if state is not None:
        load_text_state(encoder, state, family, source)
    return TextTower(encoder, tokenizer, output_dim, family)


# ----------------------------------------------------------------------------- the teacher build (dfn_clip, open_clip)


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
    table_size = vision.get("image_size", DEFAULT_IMAGE_SIZE)
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
    state = read_optional_weights(setup.weights)
    if state is not None:
        load_weights_state(visual, state, family, f"file {setup.weights}", prefixes=("visual.",))
    teacher = OpenClipViTTeacher(visual, family, setup.native, setup.mean, setup.std, request.layer)
    if text:
        teacher.attach_text_tower(open_clip_text(family, setup, request, state, tokenizer))
    return teacher.freeze()


def build_open_clip_text_only(
    family: str, request: TeacherRequest, default_mean: Sequence[float], default_std: Sequence[float]
) -> TextTower:
    """Only the text tower of :func:`build_open_clip_teacher` with ``request`` (no vision tower built)."""
    check_random_size(family, request.size, request.weights, text=True)
    setup = open_clip_setup(family, request, default_mean, default_std)
    tokenizer = open_clip_text_tokenizer(family, request.model, setup.config, request.size, request.cache_dir)
    return open_clip_text(family, setup, request, read_optional_weights(setup.weights), tokenizer)

"""transformers models: their configs and strict ``from_pretrained`` (hub cache first),
and the text tower of a SigLIP (``SiglipTextModel``) with its padded tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.contracts import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, TeacherOutput, seeded
from teachers._contract import FINAL_LAYER, FrozenTeacher, check_layer, tokens_to_map
from teachers._hub import hub_offline, missing_weights
from teachers._text import TextTower, Tokenizer, first_line
from teachers._weights import WeightsMismatchError, preview_keys


def hf_config(family: str, model_id: str, cache_dir: str | None, model_types: Sequence[str]) -> Any:
    """The transformers config of ``model_id`` (hub id or local folder), from the cache first.

    Reading the small config.json first makes a missing model fail fast, before any
    large model is built, and lets us refuse a model of the wrong kind by name.
    """
    from transformers import AutoConfig

    what = f"Hugging Face model '{model_id}'"
    try:
        config = AutoConfig.from_pretrained(model_id, cache_dir=cache_dir, local_files_only=hub_offline())
    except OSError as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(
            family,
            what,
            repo,
            cache_dir,
            "its config.json is not available (a `weights:` file needs it too, for the architecture: "
            "cache it, or set `model:` to a local folder holding config.json)",
        ) from err
    check_model_type(family, model_id, config, model_types)
    return config


def check_model_type(family: str, model_id: str, config: Any, model_types: Sequence[str]) -> None:
    """Refuse a transformers config whose ``model_type`` is not one of ``model_types``."""
    if config.model_type not in model_types:
        raise ValueError(
            f"{family}: '{model_id}' is a '{config.model_type}' model; this teacher takes model types: "
            f"{', '.join(model_types)}"
        )


def hf_vision_config(family: str, model_id: str, cache_dir: str | None, model_types: Sequence[str]) -> Any:
    """The vision model's config of ``model_id`` (:func:`hf_config`): a whole model's
    ``vision_config``, or the config itself for a vision-only model."""
    config = hf_config(family, model_id, cache_dir, model_types)
    return getattr(config, "vision_config", config)


def hf_from_pretrained(family: str, model_cls: type, model_id: str, cache_dir: str | None) -> nn.Module:
    """``model_cls.from_pretrained`` in float32 that refuses to leave any weight uninitialised."""
    what = f"Hugging Face model '{model_id}'"
    try:
        model, info = model_cls.from_pretrained(
            model_id, cache_dir=cache_dir, local_files_only=hub_offline(), dtype=torch.float32, output_loading_info=True
        )
    except OSError as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(family, what, repo, cache_dir, "its weights are not available") from err
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        raise WeightsMismatchError(
            f"{family}: the checkpoint of '{model_id}' leaves weights of {model_cls.__name__} "
            f"unset: missing {preview_keys(missing)}; mismatched {preview_keys(mismatched)}"
        )
    return model


def hf_pretrained_or_seeded(
    family: str,
    model_cls: type,
    model_id: str,
    config: Any,
    size: str,
    weights: Path | None,
    cache_dir: str | None,
    seed: int,
) -> nn.Module:
    """The model of a transformers teacher: ``size: real`` without ``weights:`` is
    :func:`hf_from_pretrained`; otherwise ``model_cls(config)`` with random weights seeded
    by ``seed`` (``size: tiny`` / ``random``, or for a weights file the caller loads over them)."""
    if size == "real" and weights is None:
        return hf_from_pretrained(family, model_cls, model_id, cache_dir)
    with seeded(seed):
        return model_cls(config)


# ----------------------------------------------------------------------------- intermediate layers


class HFLayerChoice:
    """Which encoder block a transformers teacher reads (``layer`` option, see
    :func:`~teachers._contract.check_layer`).

    ``final`` (the last block) keeps the model's own ``last_hidden_state`` path, so
    ``layer: -1`` is exactly the output without the option. Another block's tokens
    come from ``output_hidden_states`` (the whole encoder still runs: transformers
    records every block) and go through the model's final norm, as DINOv2's
    ``get_intermediate_layers(norm=True)`` and transformers' ``DINOv3ViTBackbone``
    (``apply_layernorm``) return them.
    """

    def __init__(self, family: str, layer: int, depth: int) -> None:
        self.depth = depth
        self.block_index = check_layer(family, layer, depth)
        self.final = self.block_index == depth - 1

    def tokens(self, model: nn.Module, norm: nn.Module | None, **inputs: Any) -> torch.Tensor:
        """The chosen block's tokens ``[B, N, C]`` (after ``norm`` unless it is None)."""
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        if len(hidden) < self.depth:
            raise RuntimeError(f"{type(model).__name__} recorded {len(hidden)} hidden states for {self.depth} blocks")
        tokens = hidden[self.block_index - self.depth]  # counted from the end: [embeddings,] block 0 .. block N-1
        return norm(tokens) if norm is not None else tokens


# ----------------------------------------------------------------------------- vision teachers


class HFViTTeacher(FrozenTeacher):
    """A frozen transformers ViT whose config gives ``patch_size``, ``hidden_size`` (the
    feature width) and ``num_hidden_layers``; ``layer`` chooses the block (:class:`HFLayerChoice`)
    and the summary, ``embed_dim``-wide, comes only from the final one.

    Subclasses set ``name`` (the family, also in option errors) and implement ``extract``.
    """

    def __init__(
        self, model: nn.Module, native_size: int, mean: Sequence[float], std: Sequence[float], layer: int = FINAL_LAYER
    ) -> None:
        super().__init__(mean, std)
        config = model.config
        self.model = model
        self.patch_size = int(config.patch_size)
        self.native_size = native_size
        self.embed_dim = int(config.hidden_size)
        self.layer = HFLayerChoice(self.name, layer, int(config.num_hidden_layers))
        self.summary_dim = self.embed_dim if self.layer.final else None


class HFClassTokenTeacher(HFViTTeacher):
    """A transformers ViT with a class token and registers before the patch tokens
    (DINOv2, DINOv3; ImageNet mean/std): ``summary`` = the normed class token, ``features``
    = the normed patch tokens. ``final_norm`` names the model's final norm module, applied
    to an intermediate block's tokens too."""

    final_norm: str

    def __init__(self, model: nn.Module, native_size: int, layer: int = FINAL_LAYER) -> None:
        super().__init__(model, native_size, IMAGENET_MEAN, IMAGENET_STD, layer)
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        if not self.layer.final:
            tokens = self.layer.tokens(self.model, getattr(self.model, self.final_norm), pixel_values=pixels)
            return TeacherOutput(None, tokens_to_map(tokens[:, self.num_prefix_tokens :], height, width))
        tokens = self.model(pixel_values=pixels).last_hidden_state  # final norm applied
        return TeacherOutput(tokens[:, 0], tokens_to_map(tokens[:, self.num_prefix_tokens :], height, width))


class HFAttentionPoolTeacher(HFViTTeacher):
    """A transformers SigLIP vision model with its attention-pool (MAP) head (mean/std 0.5):
    ``summary`` = the head's ``pooler_output``, ``features`` = the patch tokens after
    ``post_layernorm`` (there is no class token). :meth:`model_inputs` turns pixels into the
    model's keyword inputs."""

    def __init__(self, model: nn.Module, native_size: int, layer: int = FINAL_LAYER) -> None:
        if not getattr(model.config, "vision_use_head", True):
            raise ValueError(f"{self.name}: the model has no attention-pool head (vision_use_head=False)")
        super().__init__(model, native_size, HALF_MEAN, HALF_STD, layer)

    def model_inputs(self, pixels: torch.Tensor) -> dict[str, Any]:
        """The model's inputs for normalized ``pixels`` (``[B, 3, H, W]``)."""
        raise NotImplementedError

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        inputs = self.model_inputs(pixels)
        if not self.layer.final:
            tokens = self.layer.tokens(self.model, self.model.post_layernorm, **inputs)
            return TeacherOutput(None, tokens_to_map(tokens, height, width))
        out = self.model(**inputs)
        return TeacherOutput(out.pooler_output, tokens_to_map(out.last_hidden_state, height, width))


# ----------------------------------------------------------------------------- text towers


class HFTextTower(TextTower):
    """A transformers ``SiglipTextModel``: the pooled output is the text head's projection."""

    def run_encoder(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=tokens).pooler_output


class PaddedHFTokenizer:
    """A transformers tokenizer padded to the fixed length SigLIP was trained with.

    SigLIP pools the LAST position and never masks padding, so prompts must be padded
    to ``max_length`` exactly as in training; texts are lowercased as SigLIP's
    training text was (open_clip's ``canonicalize`` and SigLIP 2's tokenizer do too).
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            [t.lower() for t in texts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"]


def hf_tokenizer(family: str, model_id: str, max_length: int, cache_dir: str | None) -> Tokenizer:
    """The transformers tokenizer of ``model_id`` (cache first), padded to ``max_length``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, cache_dir=cache_dir, local_files_only=hub_offline())
    except (OSError, ValueError) as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(family, f"the text tokenizer of '{model_id}'", repo, cache_dir, first_line(err)) from err
    return PaddedHFTokenizer(tokenizer, max_length)

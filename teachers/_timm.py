"""timm ViTs: model names and tags, checkpoints (hub cache first), and the teacher around one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD, TeacherOutput, seeded
from teachers._contract import FINAL_LAYER, FrozenTeacher, check_choice, check_layer, tokens_to_map
from teachers._hub import fetch_hub_file, missing_weights, url_weights_file
from teachers._weights import load_weights_file


def check_timm_name(family: str, name: str, pattern: str) -> None:
    import timm

    if not timm.is_model(name) or _bad_timm_tag(name):
        raise ValueError(f"{family}: unknown timm model '{name}'; e.g. {', '.join(timm.list_pretrained(pattern)[:6])}")


def _bad_timm_tag(name: str) -> bool:
    """``arch.tag`` with a tag timm does not list (timm.is_model checks only the arch)."""
    import timm

    if "." not in name:
        return False
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return True
    return False


def timm_weights_file(family: str, name: str, cache_dir: str | None) -> str:
    """Local path of timm's pretrained checkpoint for ``name`` (``arch.tag``), cache first."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    what = f"timm model '{name}'"
    if cfg is not None and cfg.hf_hub_id:
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return fetch_hub_file(family, what, cfg.hf_hub_id, filenames, cache_dir)
    if cfg is not None and cfg.url:
        return url_weights_file(family, what, cfg.url, Path(torch.hub.get_dir()) / "checkpoints")
    raise missing_weights(family, what, None, cache_dir, "timm lists no pretrained weights for it")


def timm_checkpoint(
    family: str, size: str, model: str, weights: Path | None, cache_dir: str | None
) -> str | Path | None:
    """The checkpoint a timm teacher loads: ``weights:``, else for ``size: real`` timm's
    pretrained file of ``model`` (found before the slow build, so a missing one fails fast),
    else None (``tiny`` / ``random`` keep their seeded random weights)."""
    if size == "real" and weights is None:
        return timm_weights_file(family, model, cache_dir)
    return weights


def load_timm_checkpoint(trunk: nn.Module, path: str | Path | None, family: str, prefixes: Sequence[str]) -> None:
    """Load ``path`` (none: nothing to load) strictly into ``trunk``; ``prefixes`` name where
    the trunk sits in a whole-model file, original DINOv2/v3 layouts are converted (:func:`timm_converter`)."""
    if path is not None:
        load_weights_file(trunk, path, family, prefixes=prefixes, convert=timm_converter(trunk))


def timm_converter(trunk: nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Map an original DINOv2 (it has ``mask_token``) or DINOv3 (``storage_tokens``) checkpoint
    to timm keys; others pass through."""

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "storage_tokens" in state:
            from timm.models.eva import checkpoint_filter_fn as eva_filter

            return eva_filter(state, trunk)
        if "mask_token" not in state:
            return state
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, trunk)

    return convert


def create_timm_vit(name: str, **kwargs: Any) -> nn.Module:
    """A timm ViT without classifier, taking any input size (position table resized per call)."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)


def build_timm_dino_teacher(
    family: str,
    name_pattern: str,
    tiny_dims: dict[str, int],
    size: str,
    model: str,
    weights: Path | None,
    native: int,
    cache_dir: str | None,
    seed: int,
    layer: int,
) -> TimmViTTeacher:
    """A DINO-style timm teacher (DINOv2, DINOv3): ImageNet mean/std, the normed class token
    as summary; ``model`` must be a timm name (``name_pattern`` lists examples in the error).

    ``size: tiny`` builds ``model``'s constructor at ``tiny_dims`` and ``native`` px; ``real``
    and ``random`` keep the architecture's own sizes (the position table at the checkpoint's).
    Random weights are seeded by ``seed``; a checkpoint (:func:`timm_checkpoint`) loads over them.
    """
    check_timm_name(family, model, name_pattern)
    path = timm_checkpoint(family, size, model, weights, cache_dir)
    tiny = dict(img_size=native, **tiny_dims)
    with seeded(seed):
        trunk = create_timm_vit(model, **(tiny if size == "tiny" else {}))
    load_timm_checkpoint(trunk, path, family, ("trunk.",))
    return TimmViTTeacher(trunk, family, native, IMAGENET_MEAN, IMAGENET_STD, summary="cls", layer=layer)


class TimmViTTeacher(FrozenTeacher):
    """A frozen timm ``VisionTransformer`` (or ``Eva``: DINOv3); prefix tokens (class,
    registers) leave the feature map.

    ``summary`` is ``"cls"`` (the normed class token, DINOv2), ``"head"`` (the model's
    pooling head, e.g. SigLIP's attention pool ``map``) or None (no summary).

    ``layer`` (see :func:`~teachers._contract.check_layer`): ``-1`` is the model's own
    ``forward_features``; another block's tokens go through the model's final norm
    (timm ``forward_intermediates(norm=True)``, stopping at that block), and such a
    teacher has no summary (``summary_dim`` None).
    """

    def __init__(
        self, trunk: nn.Module, name: str, native_size: int, mean, std, summary: str | None, layer: int = FINAL_LAYER
    ) -> None:
        super().__init__(mean, std)
        check_choice(name, "summary", summary, ("cls", "head", None))
        # timm's Eva (DINOv3) has no has_class_token flag, only the token itself
        has_class_token = getattr(trunk, "has_class_token", getattr(trunk, "cls_token", None) is not None)
        if summary == "cls" and not has_class_token:
            raise ValueError(f"{name}: summary 'cls' needs a model with a class token")
        if summary == "head" and not trunk.global_pool:
            raise ValueError(f"{name}: summary 'head' needs a model with a pooling head")
        self.name = name
        self.model = trunk
        self.summary_kind = summary
        self.patch_size = trunk.patch_embed.patch_size[0]
        self.native_size = native_size
        self.embed_dim = trunk.num_features
        self.block_index = check_layer(name, layer, len(trunk.blocks))
        self.final_layer = self.block_index == len(trunk.blocks) - 1
        self.summary_dim = trunk.num_features if self.final_layer and summary is not None else None

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        if not self.final_layer:
            (features,) = self.model.forward_intermediates(
                pixels, indices=[self.block_index], norm=True, stop_early=True, intermediates_only=True
            )  # NCHW, prefix tokens dropped
            return TeacherOutput(summary=None, features=features)
        tokens = self.model.forward_features(pixels)  # final norm applied
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        features = tokens_to_map(tokens[:, self.model.num_prefix_tokens :], height, width)
        if self.summary_kind is None:
            summary = None
        else:
            summary = tokens[:, 0] if self.summary_kind == "cls" else self.model.forward_head(tokens)
        return TeacherOutput(summary=summary, features=features)

"""Plug-ins built from configs: a recipe section, a ``{name: ..., **options}`` mapping or a bare name.

What the trainers and loaders call; the public API (:mod:`radiosharp.api`) re-exports
these and adds the ``create_*(name, **options)`` forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from radiosharp.contracts import Teacher

__all__ = ["build_dataset", "build_student", "build_teacher", "build_upsampler"]


def _plugin_args(cfg: Any, name_field: str, where: str) -> tuple[str, dict[str, Any]]:
    """``(name, builder kwargs)`` of a plug-in config: a recipe section, a mapping or a bare name.

    A recipe section (:class:`~radiosharp.recipe.PluginConfig`) keeps its own fields
    (a teacher's loss weights, an upsampler's ``run``) apart from the builder's options;
    a plain mapping is the name plus builder options only.
    """
    from radiosharp.recipe import PluginConfig

    if isinstance(cfg, PluginConfig):
        return getattr(cfg, cfg.name_field), cfg.options
    if isinstance(cfg, str):
        return cfg, {}
    if not isinstance(cfg, Mapping) or name_field not in cfg:
        raise ValueError(f"{where}: expected a name or a mapping with '{name_field}', got {cfg!r}")
    args = dict(cfg)
    name = args.pop(name_field)
    return name, args


def build_teacher(cfg: Any, where: str = "teacher", **options: Any) -> Teacher:
    """A frozen teacher from a family name or a config mapping (``family`` + builder options)."""
    from radiosharp.registry import TEACHERS

    name, args = _plugin_args(cfg, "family", where)
    return TEACHERS.build(name, where, **{**args, **options})


def build_upsampler(cfg: Any, where: str = "upsampler", **options: Any) -> nn.Module:
    """An upsampler from a name or a config mapping (``name`` + builder options)."""
    from radiosharp.registry import UPSAMPLERS

    name, args = _plugin_args(cfg, "name", where)
    return UPSAMPLERS.build(name, where, **{**args, **options})


def build_student(cfg: Any, where: str = "student", **options: Any) -> nn.Module:
    """A student from a name or a config mapping (``name`` + builder options)."""
    from radiosharp.registry import STUDENTS

    name, args = _plugin_args(cfg, "name", where)
    return STUDENTS.build(name, where, **{**args, **options})


def build_dataset(cfg: Any, where: str = "data", **options: Any) -> Dataset:
    """A data source (a torch Dataset of ``{"image": [3,H,W] in [0,1], ...}``) from a name or mapping."""
    from radiosharp.registry import DATASETS

    name, args = _plugin_args(cfg, "source", where)
    return DATASETS.build(name, where, **{**args, **options})

"""radiosharp: sharper vision-model features and agglomerative distillation from them.

Public builders go through the registries, so plug-ins (``teachers/``,
``upsamplers/``, ``students/``) are found by name::

    import radiosharp
    teacher = radiosharp.build_teacher({"family": "dinov2", "size": "tiny"})
"""
from __future__ import annotations

from typing import Any, Mapping

__version__ = "0.2.0"


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
        raise ValueError(f"{where}: expected a mapping with '{name_field}', got {cfg!r}")
    args = dict(cfg)
    name = args.pop(name_field)
    return name, args


def build_teacher(cfg: Any, where: str = "teacher"):
    """Build a frozen teacher from a config mapping (``family`` + builder options)."""
    from radiosharp.registry import TEACHERS

    name, args = _plugin_args(cfg, "family", where)
    return TEACHERS.build(name, where, **args)


def build_upsampler(cfg: Any, where: str = "upsampler", **extra: Any):
    """Build an upsampler from a config mapping (``name`` + builder options)."""
    from radiosharp.registry import UPSAMPLERS

    name, args = _plugin_args(cfg, "name", where)
    args.update(extra)
    return UPSAMPLERS.build(name, where, **args)


def build_student(cfg: Any, where: str = "student", **extra: Any):
    from radiosharp.registry import STUDENTS

    name, args = _plugin_args(cfg, "name", where)
    args.update(extra)
    return STUDENTS.build(name, where, **args)


def build_dataset(cfg: Any, where: str = "data", **extra: Any):
    """Build a data source (a torch Dataset of ``{"image": [3,H,W] in [0,1], ...}``)."""
    from radiosharp.registry import DATASETS

    name, args = _plugin_args(cfg, "source", where)
    args.update(extra)
    return DATASETS.build(name, where, **args)


def load_upsampled_teacher(run_dir: Any, teacher: Any = None):
    """Rebuild an exported upsampler run as a teacher at ``u x`` resolution."""
    from radiosharp.upsampled import load_upsampled_teacher as _load

    return _load(run_dir, teacher)


def load_student(run_dir: Any, text_towers: Any = False):
    """Rebuild an exported student run (``text_towers=True``: with its CLIP teachers' text towers)."""
    from radiosharp.student_io import load_student as _load

    return _load(run_dir, text_towers)

"""The public API: build plug-ins by name, list them, load exported runs, upsample a teacher.

Shaped like ``timm.create_model``: a registry name first, the builder's options as
keywords. Every function here resolves names through :mod:`radiosharp.registry`, so the
plug-in packages (``teachers/``, ``upsamplers/``, ``students/``) are found by name::

    import radiosharp

    teacher = radiosharp.create_teacher("dinov2", size="tiny")
    sharp = radiosharp.upsample(teacher, "bilinear", factor=2)   # itself a teacher, at 2x
    model = radiosharp.load("runs/demo/up_featsharp")            # any exported run

The ``build_*`` forms take a recipe section or a ``{name: ..., **options}`` mapping, as
the trainers do; ``create_*`` take the name and the options apart.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from radiosharp.builders import _plugin_args, build_dataset, build_student, build_teacher, build_upsampler

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from radiosharp.contracts import Teacher
    from radiosharp.upsampled import UpsampledTeacher

__all__ = [
    "build_dataset",
    "build_student",
    "build_teacher",
    "build_upsampler",
    "create_dataset",
    "create_student",
    "create_teacher",
    "create_upsampler",
    "is_trainable",
    "list_datasets",
    "list_students",
    "list_tasks",
    "list_teachers",
    "list_upsamplers",
    "load",
    "load_student",
    "load_upsampled_teacher",
    "upsample",
]


# ----------------------------------------------------------------------------- create by name


def create_teacher(name: str, /, **options: Any) -> Teacher:
    """``create_teacher("dinov2", size="tiny")``: a frozen teacher of a registered family."""
    return build_teacher(name, f"create_teacher('{name}')", **options)


def create_upsampler(name: str, /, teacher: Teacher | None = None, **options: Any) -> nn.Module:
    """An upsampler by registry name; with ``teacher``, its ``dim`` and ``patch_size`` come from it."""
    if teacher is not None:
        options = {"dim": teacher.embed_dim, "patch_size": teacher.patch_size, **options}
    return build_upsampler(name, f"create_upsampler('{name}')", **options)


def create_student(name: str, /, **options: Any) -> nn.Module:
    """``create_student("radio", teachers={"dinov2": {"feature_dim": 384}})``."""
    return build_student(name, f"create_student('{name}')", **options)


def create_dataset(name: str, /, **options: Any) -> Dataset:
    """``create_dataset("photos", split="train", size=224)``: a registered data source."""
    return build_dataset(name, f"create_dataset('{name}')", **options)


# ----------------------------------------------------------------------------- list


def list_teachers() -> list[str]:
    """The registered teacher families."""
    from radiosharp.registry import TEACHERS

    return TEACHERS.names()


def list_upsamplers(trainable: bool | None = None) -> list[str]:
    """The registered upsamplers; ``trainable=False`` keeps the training-free ones (bilinear,
    tiles, s2), ``True`` the ones with weights to learn. Each upsampler says so itself
    (its ``trainable`` attribute), so a new plug-in needs no list kept elsewhere."""
    from radiosharp.registry import UPSAMPLERS

    names = UPSAMPLERS.names()
    if trainable is None:
        return names
    return [name for name in names if is_trainable(name) == trainable]


def is_trainable(upsampler: str) -> bool:
    """Whether the registered upsampler ``upsampler`` has weights to learn.

    Read from the class that builds it: the registered class itself, or the class its
    builder function declares it returns; a builder without either is built small and asked."""
    import typing

    from radiosharp.registry import UPSAMPLERS

    builder = inspect.unwrap(UPSAMPLERS.get(upsampler))
    returned: object = builder
    if not isinstance(builder, type):
        try:
            returned = typing.get_type_hints(builder).get("return")
        except (NameError, TypeError):
            returned = None
    if isinstance(returned, type) and hasattr(returned, "trainable"):
        return bool(returned.trainable)
    return bool(getattr(UPSAMPLERS.build(upsampler, factor=2, dim=8, patch_size=14), "trainable", False))


def list_students() -> list[str]:
    """The registered students."""
    from radiosharp.registry import STUDENTS

    return STUDENTS.names()


def list_datasets() -> list[str]:
    """The registered data sources (the ``source`` of a ``data:`` section)."""
    from radiosharp.registry import DATASETS

    return DATASETS.names()


def list_tasks() -> list[str]:
    """The registered eval tasks of ``python -m radiosharp.eval``."""
    from radiosharp.registry import TASKS

    return TASKS.names()


# ----------------------------------------------------------------------------- runs


def load_upsampled_teacher(run_dir: str | os.PathLike, teacher: Teacher | None = None) -> UpsampledTeacher:
    """Rebuild an exported upsampler run as a teacher at ``u x`` resolution."""
    from radiosharp.upsampled import load_upsampled_teacher as _load

    return _load(run_dir, teacher)


def load_student(run_dir: str | os.PathLike, text_towers: bool | str | list[str] = False) -> nn.Module:
    """Rebuild an exported student run (``text_towers=True``: with its CLIP teachers' text towers)."""
    from radiosharp.student_io import load_student as _load

    return _load(run_dir, text_towers)


def load(run_dir: str | os.PathLike, teacher: Teacher | None = None) -> nn.Module:
    """Any exported run, by the kind its ``model.json`` names, in eval mode.

    An upsampler run comes back as an :class:`~radiosharp.upsampled.UpsampledTeacher`
    (around ``teacher`` when given, else the teacher rebuilt from the export); a student
    run as the student.
    """
    from radiosharp.export import read_export_meta

    kind = read_export_meta(run_dir).kind
    if kind == "upsampler":
        return load_upsampled_teacher(run_dir, teacher)
    if kind == "student":
        if teacher is not None:
            raise ValueError(f"{run_dir} holds a student export; teacher= applies to upsampler runs only")
        return load_student(run_dir)
    raise ValueError(f"{run_dir}: cannot load an export of kind '{kind}'; valid kinds: student, upsampler")


def upsample(
    teacher: Teacher, upsampler: str | Mapping[str, Any] = "bilinear", factor: int = 2, **options: Any
) -> UpsampledTeacher:
    """``teacher`` lifted ``factor`` x by ``upsampler``: itself a teacher at the higher resolution.

    ``upsampler`` is a training-free registry name (``bilinear``, ``tiles``, ``s2``) or
    mapping, or an exported run (``run:PATH`` or a path, see :mod:`radiosharp.run_ref`),
    which is loaded around ``teacher``. A trainable upsampler given by name has no learned
    weights yet and is refused: train it first (``python -m radiosharp.train``).
    """
    from radiosharp.run_ref import run_folder_of
    from radiosharp.upsampled import UpsampledTeacher

    run = run_folder_of(upsampler) if isinstance(upsampler, str) else None
    if run is not None:
        if options:
            raise ValueError(f"upsample: options {sorted(options)} do not apply to an exported run ({run})")
        model = load_upsampled_teacher(run, teacher)
        if model.factor != factor:
            raise ValueError(f"upsample: {run} upsamples {model.factor}x, not {factor}x")
        return model
    name, args = _plugin_args(upsampler, "name", "upsample")
    module = create_upsampler(name, teacher=teacher, factor=factor, **{**args, **options})
    if getattr(module, "trainable", False):
        raise ValueError(
            f"upsample: '{name}' has weights to learn; train it "
            "(python -m radiosharp.train with kind: upsampler) and pass its run folder, "
            "or use a training-free upsampler"
        )
    return UpsampledTeacher(teacher, module).eval()

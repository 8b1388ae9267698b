"""Teachers and upsamplers from text: teacher specs, upsampler run folders and names, checked and built.

Shared by the commands that take them on the command line (``radiosharp.viz``,
``radiosharp.bench``, ``radiosharp.eval upsample``).

A teacher spec is a family name, a YAML/JSON mapping or an exported upsampler run
folder; an upsampler spec is a run folder (trained for that teacher) or a
training-free name. A spec names a run folder by :mod:`radiosharp.run_ref`'s rule
(``run:PATH`` or a path separator), never by looking at the disk. Every problem is a
`SpecError` raised before any model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from radiosharp.api import list_upsamplers
from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.export import read_export_meta
from radiosharp.run_ref import run_folder_of, run_hint

__all__ = [
    "DEFAULT_FACTOR",
    "SpecError",
    "build_upsamplers",
    "check_upsampler_specs",
    "is_run_folder",
    "parse_teacher_spec",
    "run_config",
    "run_spec",
    "same_teacher",
    "training_free",
]


DEFAULT_FACTOR = 2


class SpecError(ValueError):
    """A bad teacher or upsampler spec (missing run, mismatched teacher or factor)."""


def training_free() -> list[str]:
    """The upsamplers usable by name (each says so itself: ``trainable`` is False)."""
    return list_upsamplers(trainable=False)


def run_spec(spec: str) -> str | None:
    """The run folder a spec names, or None (a name, or an inline ``{...}`` mapping)."""
    return None if spec.lstrip().startswith("{") else run_folder_of(spec)


def is_run_folder(spec: str) -> bool:
    """Whether ``spec`` names a run folder (``run:PATH`` or a path separator; see :mod:`radiosharp.run_ref`)."""
    return run_spec(spec) is not None


def run_config(run: str | Path) -> dict[str, Any]:
    """The ``model.json`` config of an exported upsampler run (clear errors when it is not one)."""
    try:
        return read_export_meta(run, expect_kind="upsampler").config
    except (FileNotFoundError, ValueError) as err:
        raise SpecError(str(err)) from None


def parse_teacher_spec(spec: str, size: str | None = None) -> dict[str, Any]:
    """A teacher build config from a family name, a YAML/JSON mapping, or an upsampler run folder.

    ``size`` (tiny|real) applies to a family name (default real) and fills in a
    mapping that does not say; a run folder's teacher is used as it was trained.
    """
    from radiosharp.registry import TEACHERS

    families = TEACHERS.names()
    run = run_spec(spec)
    if run is not None:
        cfg = run_config(run).get("teacher")
        if not cfg:
            raise SpecError(f"{spec}: the export records no teacher config; give --teacher as a family name")
        return dict(cfg) if isinstance(cfg, Mapping) else {"family": str(cfg)}
    if spec in families:
        return {"family": spec, "size": size or "real"}
    try:
        parsed = yaml.safe_load(spec)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, Mapping):
        cfg = dict(parsed)
        if cfg.get("family") not in families:
            raise SpecError(f"--teacher mapping needs 'family' (one of: {', '.join(families)}), got {spec!r}")
        if size is not None:
            cfg.setdefault("size", size)
        return cfg
    raise SpecError(
        f"--teacher '{spec}' is neither a teacher family ({', '.join(families)}), "
        "a mapping like '{family: dinov2, size: tiny}', nor an upsampler run folder"
    )


def same_teacher(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two teacher configs build the same network (defaults filled in; see
    :func:`radiosharp.recipe.resolved_teacher_options`)."""
    from radiosharp.recipe import resolved_teacher_options

    return resolved_teacher_options(a) == resolved_teacher_options(b)


def check_upsampler_specs(specs: list[str], teacher_cfg: Mapping[str, Any], factor: int | None) -> int:
    """Validate every ``--upsampler`` before any model is built; returns the figure's factor.

    Run folders must hold an upsampler export trained for ``teacher_cfg`` (builder
    defaults filled in, so ``{family: dinov2}`` equals ``{family: dinov2, size: real}``)
    at one factor, equal to ``factor`` when given; other specs must be training-free names.
    """
    from radiosharp.registry import UPSAMPLERS

    free = training_free()
    run_factors: dict[str, int] = {}
    for spec in specs:
        run = run_spec(spec)
        if run is not None:
            cfg = run_config(run)
            trained_for = cfg.get("teacher")
            if trained_for and not same_teacher(trained_for, teacher_cfg):
                raise SpecError(
                    f"mismatched teacher: {spec} was trained for teacher {dict(trained_for)}, "
                    f"but --teacher is {dict(teacher_cfg)}"
                )
            run_factors[spec] = int(cfg["factor"])
        elif spec in UPSAMPLERS and spec not in free:
            raise SpecError(
                f"--upsampler {spec}: '{spec}' must be trained first; give its run folder "
                f"(python -m radiosharp.train ...), or a training-free name: {', '.join(free)}"
            )
        elif spec not in free:
            raise SpecError(
                f"--upsampler '{spec}' is neither a run folder nor a training-free upsampler "
                f"({', '.join(free)}); {run_hint(spec)}"
            )
    if factor is not None:
        wrong = {r: f for r, f in run_factors.items() if f != factor}
        if wrong:
            raise SpecError(
                f"factor mismatch: --factor {factor}, but "
                + ", ".join(f"{r} was trained at {f}x" for r, f in wrong.items())
            )
        return factor
    if len(set(run_factors.values())) > 1:
        raise SpecError(
            "factor mismatch: the runs upsample by different factors ("
            + ", ".join(f"{r}: {f}x" for r, f in run_factors.items())
            + "); give runs of one factor"
        )
    return next(iter(run_factors.values()), DEFAULT_FACTOR)


def build_upsamplers(specs: list[str], teacher: Teacher, factor: int) -> dict[str, nn.Module]:
    """Name -> module for checked ``--upsampler`` specs (runs load around ``teacher``)."""
    from radiosharp.upsampled import load_upsampled_teacher

    modules: dict[str, nn.Module] = {}
    for spec in specs:
        run = run_spec(spec)
        module: nn.Module
        if run is not None:
            name = f"{Path(run).name} ({run_config(run).get('upsampler', {}).get('name', '?')})"
            module = load_upsampled_teacher(run, teacher=teacher)
        else:
            name = spec
            module = build_upsampler(spec, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
        while name in modules:
            name += "'"
        modules[name] = module
    return modules

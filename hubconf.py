"""torch.hub entry points of a radiosharp clone (no network needed for a local one)::

    import torch

    model = torch.hub.load("path/to/radiosharp", "featsharp", source="local", run="runs/demo/up_featsharp")
    teacher = torch.hub.load("path/to/radiosharp", "teacher", source="local", family="dinov2", size="tiny")

Each entry is a thin call of the public API (:mod:`radiosharp.api`).
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "torchvision", "timm", "safetensors", "pydantic", "yaml"]


def _upsampler_run(run: str, expect: str | None, teacher: Any = None) -> Any:
    import radiosharp
    from radiosharp.export import read_export_meta

    meta = read_export_meta(run, expect_kind="upsampler")
    name = (meta.config.get("upsampler") or {}).get("name")
    if expect is not None and name != expect:
        raise ValueError(f"{run} holds a '{name}' upsampler run, not '{expect}'")
    return radiosharp.load(run, teacher)


def featsharp(run: str, teacher: Any = None) -> Any:
    """An exported FeatSharp run as a teacher at ``u x`` resolution (its teacher rebuilt unless given)."""
    return _upsampler_run(run, "featsharp", teacher)


def featup(run: str, teacher: Any = None) -> Any:
    """An exported FeatUp (JBU stack) run as a teacher at ``u x`` resolution."""
    return _upsampler_run(run, "featup", teacher)


def upsampled_teacher(run: str, teacher: Any = None) -> Any:
    """Any exported upsampler run as a teacher at ``u x`` resolution."""
    return _upsampler_run(run, None, teacher)


def student(run: str, text_towers: bool = False) -> Any:
    """An exported RADIO student run."""
    import radiosharp

    return radiosharp.load_student(run, text_towers)


def teacher(family: str, **options: Any) -> Any:
    """A frozen teacher by family name and builder options (``size: tiny`` needs no weights)."""
    import radiosharp

    return radiosharp.create_teacher(family, **options)

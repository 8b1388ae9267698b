"""The builder the DINO families share (``dinov2``, ``dinov3``): the same options, checks and
dispatch to timm (:func:`~teachers._timm.build_timm_dino_teacher`) or the family's transformers build.

Each family module describes itself in a :class:`DinoFamily` (its module constants and its two
family-specific steps) and registers ``dino_builder(family, doc)``; the builder's signature is
written out here once, so the registry reads and records the same explicit options for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

from teachers._contract import SIZES, FrozenTeacher, check_choice, weights_and_native
from teachers._timm import build_timm_dino_teacher

SOURCES = ("timm", "hf")


class DinoFamily(NamedTuple):
    """What a DINO family adds to the shared builder (the names are its module constants)."""

    name: str
    default_models: Mapping[str, str]  # source -> the model used when ``model:`` is None
    real_native: int
    tiny_native: int
    patch: int
    timm_pattern: str  # the timm names the unknown-model error lists, e.g. ``*dinov2*``
    timm_tiny: dict[str, int]  # the timm constructor's dims of ``size: tiny``
    check_random: Callable[[str, str | None, str, str], None]  # (size, weights, source, model)
    build_hf: Callable[[str, str, Path | None, int, str | None, int, int], FrozenTeacher]


def dino_builder(family: DinoFamily, doc: str, module: str) -> Callable[..., FrozenTeacher]:
    """The teacher builder ``build_<family>`` (docstring ``doc``) of a DINO family, named as a
    function of the family's ``module`` (so it pickles and prints as one)."""

    def build(
        size: Literal["tiny", "real", "random"] = "real",
        source: Literal["timm", "hf"] = "timm",
        model: str | None = None,
        weights: str | None = None,
        native_size: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        layer: int = -1,
    ) -> FrozenTeacher:
        name = family.name
        check_choice(name, "size", size, SIZES)
        check_choice(name, "source", source, SOURCES)
        model = model or family.default_models[source]
        family.check_random(size, weights, source, model)
        natives = (family.tiny_native, family.real_native)
        weights_path, native = weights_and_native(name, size, weights, native_size, natives, family.patch)
        teacher: FrozenTeacher
        if source == "timm":
            teacher = build_timm_dino_teacher(
                name, family.timm_pattern, family.timm_tiny, size, model, weights_path, native, cache_dir, seed, layer
            )
        else:
            teacher = family.build_hf(size, model, weights_path, native, cache_dir, seed, layer)
        return teacher.freeze()

    build.__name__ = build.__qualname__ = f"build_{family.name}"
    build.__doc__, build.__module__ = doc, module
    return build

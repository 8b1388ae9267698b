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

from radiosharp.option_groups import expand_option_groups
from teachers._contract import SIZES, FrozenTeacher, HubWeightOptions, check_choice
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
        common: HubWeightOptions, source: Literal["timm", "hf"] = "timm", model: str | None = None, layer: int = -1
    ) -> FrozenTeacher:
        name, size = family.name, common.size
        check_choice(name, "size", size, SIZES)
        check_choice(name, "source", source, SOURCES)
        model = model or family.default_models[source]
        family.check_random(size, common.weights, source, model)
        weights_path, native = common.weights_and_native(name, (family.tiny_native, family.real_native), family.patch)
        teacher: FrozenTeacher
        if source == "timm":
            pattern, tiny = family.timm_pattern, family.timm_tiny
            teacher = build_timm_dino_teacher(
                name, pattern, tiny, size, model, weights_path, native, common.cache_dir, common.seed, layer
            )
        else:
            teacher = family.build_hf(size, model, weights_path, native, common.cache_dir, common.seed, layer)
        return teacher.freeze()

    build.__name__ = build.__qualname__ = f"build_{family.name}"
    build.__doc__, build.__module__ = doc, module
    return expand_option_groups(build)

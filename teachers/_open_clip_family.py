"""The builders the open_clip ViT families share (``dfn_clip``, ``open_clip``): the same options,
the same build (:func:`~teachers._open_clip.build_open_clip_teacher`) and the same text-tower-only
build, with each family's default model and tag.

A family module registers the teacher builder of ``open_clip_builders(...)``; the builder's signature is written out
here once, so the registry reads and records the same explicit options for both families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radiosharp.contracts import CLIP_MEAN, CLIP_STD
from radiosharp.option_groups import expand_option_groups
from teachers._contract import HubWeightOptions, TeacherRequest, check_text_layer
from teachers._open_clip import OpenClipViTTeacher, build_open_clip_teacher, build_open_clip_text_only
from teachers._text import TextTower, text_tower_builder

# The options a text tower is built from (it always reads the final summary: ``layer`` stays -1).
TEXT_TOWER_OPTIONS = ("size", "model", "pretrained", "weights", "native_size", "cache_dir", "seed")


def open_clip_builders(
    family: str,
    default_model: str,
    default_pretrained: str | None,
    doc: str,
    module: str,
    check_model: Callable[[str, str | None], None] | None = None,
    name: str | None = None,
) -> tuple[Callable[..., OpenClipViTTeacher], Callable[..., TextTower]]:
    """The teacher builder ``build_<family>`` (docstring ``doc``) of an open_clip ViT family, and
    its ``build_text_tower`` (:func:`~teachers._text.text_tower_builder`: only the text tower).

    Both are named as functions of the family's ``module`` (so they pickle and print as such).
    ``check_model(model, cache_dir)``, when given, refuses a model before anything is read for it;
    ``name``: the builder's ``__name__`` (default ``build_<family>``).
    """

    def build(
        common: HubWeightOptions,
        model: str = default_model,
        pretrained: str | None = default_pretrained,
        text: bool = False,
        layer: int = -1,
    ) -> OpenClipViTTeacher:
        check_text_layer(family, text, layer)
        if check_model is not None:
            check_model(model, common.cache_dir)
        return build_open_clip_teacher(family, common.request(model, pretrained, text, layer), CLIP_MEAN, CLIP_STD)

    def build_text_tower(**options: Any) -> TextTower:
        request = TeacherRequest(**{key: options[key] for key in TEXT_TOWER_OPTIONS}, text=True)
        return build_open_clip_text_only(family, request, CLIP_MEAN, CLIP_STD)

    name = name or f"build_{family}"
    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    build.__module__ = build_text_tower.__module__ = module
    build = expand_option_groups(build)
    build_text_tower.__name__ = build_text_tower.__qualname__ = f"{name}_text_tower"
    build_text_tower.__doc__ = (
        f"Only the text tower of ``{name}(**same options, text=True)`` (no vision tower built).\n\n"
        f"Takes ``{name}``'s options with its defaults (see ``text_tower_builder``)."
    )
    return build, text_tower_builder(build)(build_text_tower)

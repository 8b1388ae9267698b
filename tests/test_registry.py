"""Registries: names resolve, unknown names list the valid ones, options are checked."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest

from radiosharp.option_groups import expand_option_groups
from radiosharp.registry import TEACHERS, UPSAMPLERS, BadOptionError, Registry, UnknownNameError


def test_register_get_build_and_errors():
    reg = Registry("widget")

    @reg.register("round")
    def build_round(radius: float = 1.0):
        return ("round", radius)

    assert reg.names() == ["round"] and "round" in reg
    assert reg.build("round", radius=2.0) == ("round", 2.0)
    with pytest.raises(UnknownNameError, match="unknown widget 'square'.*valid widgets: round"):
        reg.get("square")
    with pytest.raises(BadOptionError, match=r"unknown key 'w\.radios'.*valid keys: radius"):
        reg.build("round", "w", radios=3)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("round")(lambda: None)


def test_plugin_packages_register_themselves():
    assert {"dfn_clip", "siglip", "dinov2", "sam"} <= set(TEACHERS.names())
    assert {"bilinear", "tiles", "s2", "featup", "featsharp"} <= set(UPSAMPLERS.names())


@dataclass(frozen=True)
class _Shared:
    size: str = "real"
    seed: int = 0


def test_option_groups_flatten_into_the_signature_and_gather_into_one_value():
    reg = Registry("thing", records=True)

    @reg.register("a")
    def build_a(common: _Shared, width: int = 4) -> dict:
        return _Recorded(common=common, width=width)

    assert [p for p in reg.options("a")] == ["size", "seed", "width"]
    assert inspect.signature(build_a).parameters["seed"].default == 0
    built = reg.build("a", size="tiny", width=8)
    assert built["common"] == _Shared(size="tiny", seed=0) and built["width"] == 8
    assert built.build_config == {"name": "a", "size": "tiny", "seed": 0, "width": 8}
    assert build_a("tiny", 3)["common"] == _Shared("tiny", 3)  # positional, in the flat order
    with pytest.raises(BadOptionError, match="valid keys: seed, size, width"):
        reg.build("a", common={})
    with pytest.raises(BadOptionError, match="'seed'.*an integer"):
        reg.build("a", seed="x")


def test_option_groups_that_repeat_an_option_are_refused():
    def build_b(common: _Shared, seed: int = 1) -> None: ...

    with pytest.raises(TypeError, match="repeat the option.*seed"):
        expand_option_groups(build_b)


def test_a_builder_without_option_groups_is_unchanged():
    def build_c(width: int = 4) -> int:
        return width

    assert expand_option_groups(build_c) is build_c


class _Recorded(dict):
    """A dict that takes attributes (the registry sets ``build_config`` on what a builder returns)."""

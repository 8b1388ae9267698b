"""Registries: names resolve, unknown names list the valid ones, options are checked."""

from __future__ import annotations

import pytest

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

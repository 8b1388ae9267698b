"""Upsampler figures: feature maps of one image on one PCA basis (FeatSharp figure 1).

- :mod:`radiosharp.viz.figure`: the library (:func:`figure_maps`, :func:`feature_panels`,
  :func:`make_figure`);
- teacher and upsampler specs from text, checked and built, live in :mod:`radiosharp.specs`
  (shared with bench and eval); ``VizError`` is its ``SpecError``;
- :mod:`radiosharp.viz.cli`: ``python -m radiosharp.viz IMAGE --teacher T ...``.

Python use: ``make_figure(image, teacher, {"featsharp": up_teacher}, "fig.png")``.
"""

from radiosharp.specs import (
    SpecError,
    build_upsamplers,
    check_upsampler_specs,
    is_run_folder,
    parse_teacher_spec,
    run_config,
    same_teacher,
)
from radiosharp.viz.cli import build_parser, default_out, main
from radiosharp.viz.figure import DEFAULT_FACTOR, feature_panels, figure_maps, make_figure

VizError = SpecError

__all__ = [
    "DEFAULT_FACTOR",
    "VizError",
    "build_parser",
    "build_upsamplers",
    "check_upsampler_specs",
    "default_out",
    "feature_panels",
    "figure_maps",
    "is_run_folder",
    "main",
    "make_figure",
    "parse_teacher_spec",
    "run_config",
    "same_teacher",
]

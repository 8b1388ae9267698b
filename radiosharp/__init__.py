"""radiosharp: sharper vision-model features and agglomerative distillation from them.

Plug-ins (``teachers/``, ``upsamplers/``, ``students/``) are found by name through the
registries; the public API (:mod:`radiosharp.api`) builds, lists and loads them::

    import radiosharp

    radiosharp.list_teachers()                      # ['dfn_clip', 'dinov2', 'sam', 'siglip', 'vgg_hed']
    teacher = radiosharp.create_teacher("dinov2", size="tiny")
    sharp = radiosharp.upsample(teacher, "tiles", factor=2)
    model = radiosharp.load("runs/demo/up_featsharp")
"""

from __future__ import annotations

from radiosharp._version import __version__
from radiosharp.api import *  # noqa: F403 (the public API)
from radiosharp.api import __all__ as _api_names

__all__ = ["__version__", *_api_names]

"""The figure-1 style upsampler figure: feature maps of one image, panels on one PCA basis, the PNG.

The image, the teacher's raw low-res features, bilinear upsampling, then each
upsampler given, all projected on ONE PCA basis fitted on every map together, so a
colour means the same feature in every panel (a per-panel basis would re-colour each
map and hide real differences).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.data.image_spec import load_image
from radiosharp.images import resize
from radiosharp.pca import PCABasis, image_to_uint8, save_panels, upscale_nearest
from radiosharp.specs import DEFAULT_FACTOR

__all__ = ["DEFAULT_FACTOR", "feature_panels", "figure_maps", "make_figure"]

log = logging.getLogger(__name__)


def feature_panels(maps: Mapping[str, torch.Tensor], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each map ([C,h,w] or [1,C,h,w]) as a uint8 picture of ``size`` on ONE shared PCA basis."""
    maps = {k: (m[0] if m.ndim == 4 else m) for k, m in maps.items()}
    basis = PCABasis.fit(list(maps.values()))
    return {k: upscale_nearest(basis.to_rgb(m), size) for k, m in maps.items()}


def _factor_of(module: nn.Module) -> int:
    factor = getattr(module, "factor", None)
    if factor is None:
        raise ValueError(f"{type(module).__name__} has no 'factor': pass an upsampler or an UpsampledTeacher")
    return int(factor)


def _as_image(image: torch.Tensor | str, side: int) -> torch.Tensor:
    """[1,3,side,side] in [0,1] from a tensor ([3,H,W] or [1,3,H,W]) or an image spec."""
    if isinstance(image, (str, Path)):
        return load_image(str(image), side)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"make_figure: expected one image [3,H,W] or [1,3,H,W], got {tuple(image.shape)}")
    return resize(image.float(), (side, side)).clamp(0, 1)


@torch.no_grad()
def figure_maps(
    image: torch.Tensor,
    teacher: Teacher,
    upsamplers: Mapping[str, nn.Module],
    factor: int,
    hires_reference: bool = False,
) -> dict[str, torch.Tensor]:
    """Raw low-res features, bilinear, then each upsampler's output for one [1,3,H,W] image
    (at ``factor x`` the teacher's native size); with ``hires_reference``, last, the teacher's
    own features of the image at that size (the real hi-res reference of a resolution-robust
    teacher such as DINOv2)."""
    from radiosharp.upsampled import UpsampledTeacher

    native = teacher.native_size
    lowres = teacher(resize(image, (native, native))).features
    grid = lowres.shape[-1]
    bilinear = build_upsampler("bilinear", factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
    maps = {f"raw features {grid}x{grid}": lowres}
    entries = {"bilinear": bilinear, **{k: v for k, v in upsamplers.items() if k != "bilinear"}}
    for name, module in entries.items():
        model = module if isinstance(module, UpsampledTeacher) else UpsampledTeacher(teacher, module)
        model = model.to(image.device).eval()
        out = model(image).features
        maps[f"{name} {factor}x"] = out
    if hires_reference:
        side = image.shape[-1]
        maps[f"{teacher.name} at {side}px input"] = teacher(image).features
    return maps


def make_figure(
    image: torch.Tensor | str,
    teacher: Teacher,
    upsamplers: Mapping[str, nn.Module],
    out: str | Path,
    factor: int | None = None,
    hires_reference: bool = False,
) -> Path:
    """Write the figure-1 style PNG and return its path.

    ``image``: a [3,H,W]/[1,3,H,W] tensor in [0,1] (resized to ``factor * native``
    square) or an image spec (path or ``skimage:NAME``, centre-cropped square).
    ``upsamplers``: name -> an upsampler module (wrapped with ``teacher``) or an
    :class:`~radiosharp.upsampled.UpsampledTeacher`; all must share one factor.
    ``factor``: the upsampling factor (default: the upsamplers', else 2).
    Panels: image, raw features, bilinear, each upsampler in the given order, then (with
    ``hires_reference``) the teacher run on the image at ``factor x`` its native size.
    """
    factors = {name: _factor_of(m) for name, m in upsamplers.items()}
    wanted = factor if factor is not None else next(iter(factors.values()), DEFAULT_FACTOR)
    wrong = {name: f for name, f in factors.items() if f != wanted}
    if wrong:
        raise ValueError(
            f"upsampling factor mismatch: the figure is at {wanted}x but "
            + ", ".join(f"'{n}' upsamples {f}x" for n, f in wrong.items())
        )
    device = next(teacher.parameters(), torch.empty(0)).device
    picture = _as_image(image, wanted * teacher.native_size).to(device)
    maps = figure_maps(picture, teacher, upsamplers, wanted, hires_reference)
    side = picture.shape[-1]
    panels = feature_panels(maps, (side, side))
    titles = [f"image {side}x{side}", *panels]
    path = save_panels([image_to_uint8(picture[0]), *panels.values()], titles, out)
    log.info("make_figure: %d panels at %dx%d, %dx, -> %s", len(titles), side, side, wanted, path)
    return path

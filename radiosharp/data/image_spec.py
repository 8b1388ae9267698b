"""One image by name, for the tools (viz, bench, reproduce): a file, ``skimage:NAME`` or ``photo:NAME``."""

from __future__ import annotations

from pathlib import Path

import torch

from radiosharp.data.decode import read_rgb
from radiosharp.data.errors import DataError, DataNotFoundError, UnreadableFileError
from radiosharp.data.photos import CATALOGUE, load_photo
from radiosharp.data.samples import load_sample
from radiosharp.data.transforms import image_to_square


def load_image(spec: str, size: int | None = None) -> torch.Tensor:
    """[1,3,S,S] in [0,1] from a file path, ``skimage:NAME`` (an image bundled with scikit-image)
    or ``photo:NAME`` (one of the packaged photographs of :mod:`radiosharp.data.photos`).

    Read as the data sources read images (``radiosharp.data``): files with their EXIF
    rotation, samples with RGBA composited over white and grey repeated to RGB. With
    ``size``, the shorter side is resized to ``size`` and the centre cropped square.
    FileNotFoundError for a missing file or sample name, ValueError for an unreadable file.
    """
    if spec.startswith("photo:"):
        name = spec.split(":", 1)[1]
        if name not in CATALOGUE:
            raise DataNotFoundError(f"no packaged photo '{name}'; valid: {', '.join(CATALOGUE)}")
        pixels = load_photo(name)
    elif spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        if name.startswith("_") or not callable(getattr(skimage.data, name, None)):
            raise DataNotFoundError(
                f"scikit-image has no sample image '{name}' (try skimage:astronaut, "
                "skimage:coffee, skimage:chelsea, skimage:rocket)"
            )
        pixels = load_sample(name)
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataNotFoundError(f"image not found: {path}")
        try:
            pixels = read_rgb(path)
        except UnreadableFileError as err:
            raise DataError(f"cannot read {path} as an image: {err}") from None
    if size is None:
        return pixels.float().div_(255.0)[None]
    return image_to_square(pixels, size)[None]

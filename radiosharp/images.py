"""Images: the one resize every part uses, and reading single images for the tools (viz, bench)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of images or feature maps ``[..., H, W]``,
    antialiased when shrinking; a no-op at equal size."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def load_image(spec: str, size: int | None = None) -> torch.Tensor:
    """[1,3,S,S] in [0,1] from a file path, ``skimage:NAME`` (an image bundled with scikit-image)
    or ``photo:NAME`` (one of the packaged photographs of :mod:`radiosharp.data.photos`).

    Read as the data sources read images (``radiosharp.data``): files with their EXIF
    rotation, samples with RGBA composited over white and grey repeated to RGB. With
    ``size``, the shorter side is resized to ``size`` and the centre cropped square.
    FileNotFoundError for a missing file or sample name, ValueError for an unreadable file.
    """
    from radiosharp.data.decode import UnreadableFileError, read_rgb
    from radiosharp.data.samples import load_sample
    from radiosharp.data.transforms import image_to_square

    if spec.startswith("photo:"):
        from radiosharp.data.photos import CATALOGUE, load_photo

        name = spec.split(":", 1)[1]
        if name not in CATALOGUE:
            raise FileNotFoundError(f"no packaged photo '{name}'; valid: {', '.join(CATALOGUE)}")
        pixels = load_photo(name)
    elif spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        if name.startswith("_") or not callable(getattr(skimage.data, name, None)):
            raise FileNotFoundError(f"scikit-image has no sample image '{name}' (try skimage:astronaut, "
                                    "skimage:coffee, skimage:chelsea, skimage:rocket)")
        pixels = load_sample(name)
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            pixels = read_rgb(path)
        except UnreadableFileError as err:
            raise ValueError(f"cannot read {path} as an image: {err}") from None
    if size is None:
        return pixels.float().div_(255.0)[None]
    return image_to_square(pixels, size)[None]

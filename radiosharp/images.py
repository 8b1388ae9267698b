"""Reading single images for the command-line tools (viz, bench)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_image(spec: str, size: int | None = None) -> torch.Tensor:
    """[1,3,S,S] in [0,1] from a file path or ``skimage:NAME`` (an image bundled with scikit-image).

    With ``size``, the shorter side is resized to ``size`` and the centre cropped square.
    """
    if spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        fn = getattr(skimage.data, name, None)
        if fn is None or not callable(fn):
            raise FileNotFoundError(f"scikit-image has no sample image '{name}' (try skimage:astronaut, "
                                    "skimage:coffee, skimage:chelsea, skimage:rocket)")
        array = np.asarray(fn())
    else:
        from PIL import Image, UnidentifiedImageError

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                array = np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read {path} as an image: {err}") from None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    image = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()[None] / 255.0
    if size is not None:
        h, w = image.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[..., top:top + size, left:left + size]
    return image.clamp(0, 1)

"""``samples``: the photographs bundled with scikit-image, for demos and smoke runs.

They need no download and no data folder. Colour images come first, then grey ones
(repeated to three channels), in a fixed order; RGBA is composited over white. Only
images shipped inside the scikit-image wheel are listed (others need ``pooch`` and a
network connection).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from radiosharp.data.errors import DataError
from radiosharp.data.transforms import check_size, image_to_square
from radiosharp.registry import DATASETS

COLOUR_SAMPLES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
)
GREY_SAMPLES = ("camera", "coins", "moon", "clock", "page", "text", "brick", "grass", "gravel", "cell")
DEFAULT_SAMPLES = COLOUR_SAMPLES + GREY_SAMPLES


def load_sample(name: str) -> torch.Tensor:
    """uint8 ``[3,H,W]`` of ``skimage.data.<name>``."""
    import skimage.data

    loader = getattr(skimage.data, name, None) if not name.startswith("_") else None
    if loader is None or not callable(loader):
        raise DataError(
            f"samples: scikit-image has no sample image '{name}'; valid names: {', '.join(DEFAULT_SAMPLES)}"
        )
    try:
        array = np.asarray(loader())
    except (ImportError, OSError) as err:  # an image that needs pooch / a download
        raise DataError(
            f"samples: '{name}' is not bundled with scikit-image ({err}); bundled names: {', '.join(DEFAULT_SAMPLES)}"
        ) from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise DataError(f"samples: '{name}' is not a 2-D image (shape {array.shape})")
    if array.shape[-1] == 4:  # composite over white: transparent pixels hold arbitrary colours
        alpha = array[..., 3:].astype(np.float32) / 255.0
        array = (array[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


class SampleImages(Dataset):
    """The scikit-image samples ``names`` at ``size x size`` (decoded once, then cached)."""

    def __init__(self, size: int = 224, names: list[str] | None = None) -> None:
        self.size = check_size(size)
        import skimage.data

        self.names = list(names) if names else list(DEFAULT_SAMPLES)
        for name in self.names:  # fail at build time, not in the middle of a run
            if name.startswith("_") or not callable(getattr(skimage.data, name, None)):
                raise DataError(
                    f"samples: scikit-image has no sample image '{name}'; valid names: {', '.join(DEFAULT_SAMPLES)}"
                )
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            self._cache[index] = image_to_square(load_sample(self.names[index]), self.size)
        return {"image": self._cache[index].clone(), "key": self.names[index]}


@DATASETS.register("samples")
def build_samples(size: int = 224, names: list[str] | None = None) -> SampleImages:
    """The sample photographs of scikit-image (``names``: a subset, in that order)."""
    return SampleImages(size, names)

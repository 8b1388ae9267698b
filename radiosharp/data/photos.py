"""``photos``: real photographs that ship inside Python packages, with a fixed split.

No download and no data folder: the pictures come from the wheels of scikit-image
(``skimage.data``), scikit-learn (``sklearn.datasets.load_sample_image``) and matplotlib
(``mpl-data/sample_data``), all dependencies of this project. 19 photographs in all
(people, animals, objects, a street, a landscape, microscopy, astronomy, textures);
grey ones are repeated to three channels.

``split: heldout`` is four of them (astronaut, coffee, china, camera), never used for
training: held-out fidelity, figures and agreement with the hi-res teacher are measured
there. ``split: train`` is the other 15; ``all`` is both, train first.

Each photo gives ``crops`` samples: with ``crops: 1`` its centred square; with more,
random squares whose side is ``scale`` (a range, as a share of the shorter side) of the
photo, placed uniformly, the same for a given ``(seed, index)`` in every run (resumed
runs and other processes see the same pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from radiosharp.data.errors import DataError
from radiosharp.data.transforms import check_size, image_to_square
from radiosharp.registry import DATASETS

Split = Literal["train", "heldout", "all"]
SPLITS = ("train", "heldout", "all")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())

    return load


def _skimage_file(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:  # bundled, but its skimage.data loader also wants the right-eye view
        import skimage.data
        from PIL import Image

        return np.asarray(Image.open(Path(skimage.data.__file__).parent / filename).convert("RGB"))

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(filename))

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib
        from PIL import Image

        return np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / filename).convert("RGB"))

    return load


@dataclass(frozen=True)
class Photo:
    name: str
    origin: str  # where it comes from, for docs and reports
    load: Callable[[], np.ndarray]


def _photos(origin: str, loader: Callable[[str], Callable[[], np.ndarray]], names: dict[str, str]) -> list[Photo]:
    return [Photo(name, f"{origin} {ref}", loader(ref)) for name, ref in names.items()]


CATALOGUE: dict[str, Photo] = {
    p.name: p
    for p in [
        *_photos(
            "scikit-image",
            _skimage,
            {
                n: n
                for n in (
                    "astronaut",
                    "chelsea",
                    "coffee",
                    "rocket",
                    "camera",
                    "coins",
                    "moon",
                    "clock",
                    "page",
                    "grass",
                    "gravel",
                    "brick",
                    "retina",
                    "immunohistochemistry",
                    "hubble_deep_field",
                )
            },
        ),
        *_photos("scikit-image", _skimage_file, {"motorcycle": "motorcycle_left.png"}),
        *_photos("scikit-learn", _sklearn, {"china": "china.jpg", "flower": "flower.jpg"}),
        *_photos("matplotlib", _matplotlib, {"grace_hopper": "grace_hopper.jpg"}),
    ]
}
HELDOUT = ("astronaut", "coffee", "china", "camera")
TRAIN = tuple(name for name in CATALOGUE if name not in HELDOUT)


def split_names(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise DataError(f"photos: split={split!r} is not valid; choose one of: {', '.join(SPLITS)}")
    return {"train": TRAIN, "heldout": HELDOUT, "all": TRAIN + HELDOUT}[split]


def load_photo(name: str) -> torch.Tensor:
    """uint8 ``[3,H,W]`` RGB of the photo ``name``."""
    if name not in CATALOGUE:
        raise DataError(f"photos: no photo named {name!r}; valid names: {', '.join(CATALOGUE)}")
    array = CATALOGUE[name].load()
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"photos: {name} decoded as {array.dtype} {array.shape}, not an RGB image")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)  # writable: some loaders share


def random_square(image: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """A square of ``image [3,H,W]`` whose side is ``scale`` of the shorter side, placed uniformly."""
    h, w = image.shape[-2:]
    low, high = scale
    share = low + (high - low) * float(torch.rand((), generator=generator))
    side = max(1, int(round(share * min(h, w))))
    top = int(torch.randint(0, h - side + 1, (), generator=generator))
    left = int(torch.randint(0, w - side + 1, (), generator=generator))
    return image[:, top : top + side, left : left + side]


class Photos(Dataset):
    """The packaged photographs of one split at ``size x size`` (decoded once, then cached)."""

    def __init__(
        self,
        size: int = 224,
        split: str = "train",
        crops: int = 1,
        scale: tuple[float, float] = (0.3, 1.0),
        seed: int = 0,
        names: list[str] | None = None,
    ) -> None:
        self.size = check_size(size)
        self.names = list(names) if names is not None else list(split_names(split))
        for name in self.names:
            if name not in CATALOGUE:
                raise DataError(f"photos: no photo named {name!r}; valid names: {', '.join(CATALOGUE)}")
        if not self.names:
            raise DataError("photos: `names` is empty; leave it out for the whole split")
        if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
            raise DataError(f"photos: crops={crops!r} must be a positive integer (samples per photo)")
        low, high = (float(v) for v in scale)
        if not 0.0 < low <= high <= 1.0:
            raise DataError(
                f"photos: scale={list(scale)} must be [low, high] with 0 < low <= high <= 1 "
                "(the crop side as a share of the photo's shorter side)"
            )
        self.split, self.crops, self.scale, self.seed = split, crops, (low, high), seed
        self._pixels: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names) * self.crops

    def _photo(self, name: str) -> torch.Tensor:
        if name not in self._pixels:
            self._pixels[name] = load_photo(name)
        return self._pixels[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"photos: index {index} out of range for {len(self)} samples")
        name, crop = self.names[index // self.crops], index % self.crops
        image = self._photo(name)
        if self.crops == 1:
            return {"image": image_to_square(image, self.size), "key": name}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        square = random_square(image, generator, self.scale)
        return {"image": image_to_square(square, self.size), "key": f"{name}#{crop}"}


@DATASETS.register("photos")
def build_photos(
    size: int = 224,
    split: Split = "train",
    crops: int = 1,
    scale: list[float] = (0.3, 1.0),
    seed: int = 0,
    names: list[str] | None = None,
) -> Photos:
    """Real photographs bundled with scikit-image, scikit-learn and matplotlib.

    - ``split``: ``train`` (15 photos), ``heldout`` (astronaut, coffee, china, camera) or ``all``
    - ``crops``: samples per photo: 1 = the centred square; more = seeded random squares
    - ``scale``: ``[low, high]``, the random squares' side as a share of the shorter side
    - ``names``: a subset of photos, in that order (overrides ``split``)
    """
    if len(scale) != 2:
        raise DataError(f"photos: scale={list(scale)} must be two numbers [low, high]")
    return Photos(size, split, crops, (scale[0], scale[1]), seed, names)


def describe() -> list[tuple[str, str, str]]:
    """(name, split, origin) of every photo, for docs."""
    return [(p.name, "heldout" if p.name in HELDOUT else "train", p.origin) for p in CATALOGUE.values()]

"""``keypoint_pairs``: SPair-71k image pairs with corresponding keypoints, in the layout as distributed.

It and ``synthetic_pairs`` (:mod:`radiosharp.data.synthetic_pairs`) serve the eval task
``keypoints`` (PCK@alpha). A source yields its *images* (``{"image", "key"}`` samples, each
image once, so the feature cache extracts each image once even when it takes part in many
pairs) and lists the pairs in ``keypoint_pairs`` (:class:`KeypointPair`: the keys of its
source and target images, the keypoints, and the length that the PCK threshold ``alpha``
multiplies). ``image_keys`` lists the image keys in sample order.

Coordinate convention (one for both sources and the task): keypoints are continuous
``(x, y)`` pixel coordinates of the square ``size x size`` image, x to the right, y down,
with the image spanning ``[0, size]`` on both axes, so pixel (row ``i``, column ``j``) covers
``[j, j+1) x [i, i+1)`` and its centre is at ``(j + 0.5, i + 0.5)``. This is the convention of
``align_corners=False`` resizing and sampling (``radiosharp.images.resize``, ``grid_sample``)
and of the synthetic scenes' pixel centres, so a keypoint is mapped through a resize by
scaling alone.

SPair-71k layout (as distributed)::

    root/JPEGImages/<category>/<name>.jpg
    root/PairAnnotation/<split>/<pair_id>-<src>-<trg>:<category>.json   (splits: trn, val, test)

Each pair file holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` / ``trg_kps``
(``[[x, y], ...]``, the same count and order) and ``trg_bndbox`` (``[x1, y1, x2, y2]``); other
keys are ignored. SPair's keypoints are integer pixel indices (0-based), read here as the
centre of that pixel (index + 0.5). Images are made square by ``fit``:

- ``pad`` (default, as correspondence benchmarks do, so no keypoint is lost): the longer
  side is resized to ``size`` (the shorter to ``round(side * size / longer)``) and the image
  centred on a black square; a point maps as ``x' = x * new_w / w + left``.
- ``crop``: exactly ``radiosharp.data.transforms.image_to_square`` (the centred
  ``min(h, w)`` square, then resized); keypoints that fall outside the crop are dropped
  from the pair (both of its points), and pairs left without keypoints are dropped.

The PCK length of a pair is ``max(x2 - x1, y2 - y1)`` of ``trg_bndbox`` mapped to the square
(the SPair convention; the box is not clipped by a crop: it measures the object), or the
image side ``size`` when the file has no box. An image's EXIF orientation is applied to
the image (as every source does) and to its keypoints and box alike.

Errors: a missing root, split folder, pair file key or image file raises
:class:`~radiosharp.data.errors.DataError` naming the file; an image that exists but cannot
be decoded is skipped when read (``SkippedSample``), and the task leaves its pairs out.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from radiosharp.data.decode import exif_orientation, read_rgb
from radiosharp.data.errors import DataError, DataNotFoundError, UnreadableFileError
from radiosharp.data.folders import existing_folder
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import check_size, image_to_square
from radiosharp.images import resize
from radiosharp.registry import DATASETS

FITS = ("pad", "crop")
SPAIR_SPLITS = ("trn", "val", "test")


@dataclass
class KeypointPair:
    """One source/target pair: image keys, keypoints ``[K,2]`` (x, y; see the module doc) and the PCK length."""

    name: str
    src: str  # key of the source image (a sample's "key")
    trg: str
    src_kps: torch.Tensor  # [K,2] float
    trg_kps: torch.Tensor  # [K,2] float
    scale: float  # alpha multiplies this (pixels of the square image)
    category: str | None = None


# ----------------------------------------------------------------------------- geometry


def orient_points(xy: torch.Tensor, width: int, height: int, orientation: int) -> torch.Tensor:
    """Continuous points ``[K,2]`` of a stored ``width x height`` image, in the upright image that
    ``radiosharp.data.decode.orient`` makes for EXIF ``orientation`` (1 / unknown: unchanged)."""
    x, y, w, h = xy[:, 0], xy[:, 1], float(width), float(height)
    table = {
        2: (w - x, y),  # mirrored left-right
        3: (w - x, h - y),  # rotated 180
        4: (x, h - y),  # mirrored top-bottom
        5: (y, x),  # transposed
        6: (h - y, x),  # turned clockwise
        7: (h - y, w - x),  # transversed
        8: (y, w - x),  # turned counter-clockwise
    }
    if orientation not in table:
        return xy
    return torch.stack(table[orientation], 1)


def square_geometry(width: int, height: int, size: int, fit: str) -> tuple[float, float, float, float]:
    """``(scale_x, scale_y, offset_x, offset_y)``: a point of a ``width x height`` image maps to
    ``(x * scale_x + offset_x, y * scale_y + offset_y)`` in the ``size`` square made by ``fit``."""
    if fit == "crop":  # image_to_square: centred min-side square, then resized
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        s = size / side
        return s, s, -left * s, -top * s
    new_w, new_h = pad_shape(width, height, size)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return new_w / width, new_h / height, float(left), float(top)


def pad_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(new width, new height) of the resized image that ``fit='pad'`` centres on the square."""
    longer = max(width, height)
    return max(1, round(width * size / longer)), max(1, round(height * size / longer))


def pad_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3,H,W]`` (uint8 or float 0..1) -> float ``[3,size,size]``: longer side resized to ``size``,
    centred on black (see :func:`square_geometry`)."""
    h, w = image.shape[-2:]
    new_w, new_h = pad_shape(w, h, size)
    pixels = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
    pixels = resize(pixels[None], (new_h, new_w))[0].clamp(0.0, 1.0)
    out = torch.zeros(3, size, size)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    out[:, top : top + new_h, left : left + new_w] = pixels
    return out


def to_square(image: torch.Tensor, size: int, fit: str) -> torch.Tensor:
    return image_to_square(image, size) if fit == "crop" else pad_to_square(image, size)


# ----------------------------------------------------------------------------- SPair-71k


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"keypoint_pairs: cannot read pair file {path} ({type(err).__name__}: {err})") from None


def _points(value: Any, key: str, path: Path) -> torch.Tensor:
    try:
        points = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 2)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"keypoint_pairs: '{key}' in {path} is not a list of [x, y] points") from None
    return points


class KeypointPairs(Dataset):
    """SPair-71k pairs of ``split`` (``trn`` / ``val`` / ``test``) under ``root``; see the module doc.

    Each referenced image once, the pairs in ``keypoint_pairs``. ``category`` keeps one category
    (or a list of them); ``max_pairs`` the first pairs in file-name order; ``fit`` is ``pad``
    (default) or ``crop``; ``images`` / ``annotations`` name the two folders under ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "test",
        size: int = 224,
        category: str | list[str] | None = None,
        max_pairs: int | None = None,
        fit: str = "pad",
        images: str = "JPEGImages",
        annotations: str = "PairAnnotation",
    ) -> None:
        if fit not in FITS:
            raise DataError(f"keypoint_pairs: fit '{fit}' is not valid; valid: {', '.join(FITS)}")
        if max_pairs is not None and max_pairs < 1:
            raise DataError(f"keypoint_pairs: max_pairs must be >= 1 (or null for all), got {max_pairs}")
        base = existing_folder(root, "keypoint_pairs root")
        self.root, self.size, self.fit = base, check_size(size), fit
        self.image_root = existing_folder(base / images, "keypoint_pairs images")
        split_dir = base / annotations / split
        if not split_dir.is_dir():
            raise DataNotFoundError(
                f"keypoint_pairs: pair folder not found: {split_dir} (SPair-71k splits: {', '.join(SPAIR_SPLITS)})"
            )
        wanted = {category} if isinstance(category, str) else (set(category) if category else None)
        files = sorted(split_dir.glob("*.json"))
        if not files:
            raise DataError(f"keypoint_pairs: no pair files (*.json) in {split_dir}")
        self._headers: dict[str, tuple[int, int, int] | None] = {}
        self.paths: dict[str, Path] = {}
        self.keypoint_pairs: list[KeypointPair] = []
        dropped = 0
        for path in files:
            stem_category = path.stem.rsplit(":", 1)[1] if ":" in path.stem else None
            if wanted is not None and stem_category is not None and stem_category not in wanted:
                continue  # filtered by the file name, without reading it
            record = _read_json(path)
            cat = record.get("category", stem_category)
            if wanted is not None and cat not in wanted:
                continue
            pair = self._pair(path, record, cat)
            if pair is None:
                dropped += 1
                continue
            self.keypoint_pairs.append(pair)
            if max_pairs is not None and len(self.keypoint_pairs) >= max_pairs:
                break
        if not self.keypoint_pairs:
            which = f" of category {sorted(wanted)}" if wanted else ""
            raise DataError(f"keypoint_pairs {base}: no usable pair{which} in {split_dir}")
        if dropped:
            warnings.warn(
                f"keypoint_pairs {base}: {dropped} pairs have no keypoint inside both images (fit='{fit}') "
                "or an unreadable image, and are left out",
                stacklevel=2,
            )
        used = {key for pair in self.keypoint_pairs for key in (pair.src, pair.trg)}
        self.image_keys = sorted(used)

    def _header(self, key: str, path: Path) -> tuple[int, int, int] | None:
        """(stored width, height, EXIF orientation) of an image, or None when it cannot be opened."""
        if key not in self._headers:
            from PIL import Image

            try:
                with Image.open(path) as im:
                    self._headers[key] = (im.size[0], im.size[1], exif_orientation(im))
            except (OSError, ValueError, SyntaxError) as err:
                warnings.warn(
                    f"keypoint_pairs: image {path} cannot be read ({err}); its pairs are left out", stacklevel=3
                )
                self._headers[key] = None
        return self._headers[key]

    def _image(self, record: dict[str, Any], which: str, category: str | None, path: Path) -> tuple[str, Path]:
        name = record.get(f"{which}_imname")
        if not name:
            raise DataError(f"keypoint_pairs: pair file {path} has no '{which}_imname'")
        rel = Path(category or "") / name
        image = self.image_root / rel
        if not image.is_file():
            raise DataNotFoundError(
                f"keypoint_pairs: image {image} (named by {path.name}) not found; put the SPair-71k JPEGImages/"
                f"<category>/ folders under {self.image_root}"
            )
        key = rel.as_posix()
        self.paths[key] = image
        return key, image

    def _to_square(self, points: torch.Tensor, header: tuple[int, int, int]) -> tuple[torch.Tensor, float, float]:
        width, height, orientation = header
        points = orient_points(points, width, height, orientation)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        sx, sy, ox, oy = square_geometry(width, height, self.size, self.fit)
        return torch.stack([points[:, 0] * sx + ox, points[:, 1] * sy + oy], 1), sx, sy

    def _pair(self, path: Path, record: dict[str, Any], category: str | None) -> KeypointPair | None:
        for key in ("src_kps", "trg_kps"):
            if key not in record:
                raise DataError(f"keypoint_pairs: pair file {path} has no '{key}'")
        src_key, src_path = self._image(record, "src", category, path)
        trg_key, trg_path = self._image(record, "trg", category, path)
        src_head, trg_head = self._header(src_key, src_path), self._header(trg_key, trg_path)
        if src_head is None or trg_head is None:
            return None
        src, trg = _points(record["src_kps"], "src_kps", path), _points(record["trg_kps"], "trg_kps", path)
        if len(src) != len(trg):
            raise DataError(f"keypoint_pairs: {path} has {len(src)} src_kps but {len(trg)} trg_kps")
        src, _, _ = self._to_square(src + 0.5, src_head)  # pixel index -> its centre
        trg, sx, sy = self._to_square(trg + 0.5, trg_head)
        inside = ((src >= 0) & (src < self.size)).all(1) & ((trg >= 0) & (trg < self.size)).all(1)
        if not inside.any():
            return None
        box = record.get("trg_bndbox")
        if box is not None:
            corners = _points(box, "trg_bndbox", path)
            width, height, orientation = trg_head
            corners = orient_points(corners, width, height, orientation)
            extent = corners.max(0).values - corners.min(0).values  # upright: sx, sy apply
            scale = float(max(extent[0] * sx, extent[1] * sy))
        else:
            scale = float(self.size)
        return KeypointPair(
            name=path.stem,
            src=src_key,
            trg=trg_key,
            src_kps=src[inside].float(),
            trg_kps=trg[inside].float(),
            scale=scale,
            category=category,
        )

    def __len__(self) -> int:
        return len(self.image_keys)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        key = self.image_keys[index]
        path = self.paths[key]
        try:
            pixels = read_rgb(path)
        except UnreadableFileError as err:
            return SkippedSample(str(path), str(err))
        return {"image": to_square(pixels, self.size, self.fit), "key": key}


DATASETS.register("keypoint_pairs")(KeypointPairs)  # the class is the builder: one signature

"""``hf``: a dataset of the Hugging Face ``datasets`` library.

``name_or_path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
any local folder ``datasets.load_dataset`` understands (e.g. an image folder or parquet
files), or a hub id (needs the network or a filled HF cache). Image columns are read
undecoded and decoded here, so one corrupt image is skipped (and named) instead of
stopping the run; plain arrays (``[H,W,3]`` uint8 or float in [0,1]) work as well.
A ``ClassLabel`` label column gives ``.classes``. ``mask_column`` / ``depth_column``
add dense targets (resized like ``seg_folder`` / ``depth_folder``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from radiosharp.data.decode import UnreadableFileError, depth_in_units, read_depth_array, read_mask, read_rgb
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import LabelledSource, check_size, depth_to_square, image_to_square, mask_to_square
from radiosharp.registry import DATASETS


def open_hf_dataset(name_or_path: str, split: str) -> Any:
    """One split of a saved dataset, a local folder or a hub dataset."""
    import datasets

    path = Path(name_or_path).expanduser()
    saved = path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))
    try:
        loaded = (
            datasets.load_from_disk(str(path))
            if saved
            else datasets.load_dataset(str(path) if path.exists() else name_or_path, split=split)
        )
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        raise ValueError(
            f"hf: cannot load '{name_or_path}' split '{split}': {err}. Give a folder saved with "
            "datasets' save_to_disk, a local data folder, or a hub id (needs the network)"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"hf: '{name_or_path}' has no split '{split}'; valid splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def _undecoded(ds: Any, column: str | None) -> Any:
    """Keep image columns as bytes/paths, so decoding (and its failures) happens in ``__getitem__``."""
    import datasets

    if column is not None and isinstance(ds.features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _array(value: Any, what: str, reader) -> Any:
    """Decode an encoded-image cell (``{"bytes", "path"}``) with ``reader``; pass arrays through."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        source = value.get("bytes") or value.get("path")
        if source is None:
            raise UnreadableFileError(f"{what}: the cell holds neither bytes nor a path")
        return reader(source)
    return np.asarray(value)  # also a PIL image from a custom dataset


class HFImages(LabelledSource, Dataset):
    """Samples of one split of a ``datasets`` dataset (see module doc).

    A split of a Hugging Face ``datasets`` dataset: saved folder, local folder or hub id.

    ``label_column`` gives ``label`` (and ``.classes`` for a ClassLabel); ``mask_column``
    / ``depth_column`` give dense targets; ``depth_scale`` as in ``depth_folder``.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        split: str = "train",
        image_column: str = "image",
        label_column: str | None = None,
        size: int = 224,
        mask_column: str | None = None,
        depth_column: str | None = None,
        depth_scale: float | None = None,
    ) -> None:
        import datasets

        if not name_or_path:
            raise ValueError("hf: 'name_or_path' is required (a saved dataset folder or a hub id)")
        self.size = check_size(size)
        ds = open_hf_dataset(name_or_path, split)
        for option, column in (
            ("image_column", image_column),
            ("label_column", label_column),
            ("mask_column", mask_column),
            ("depth_column", depth_column),
        ):
            if column is not None and column not in ds.column_names:
                raise ValueError(
                    f"hf: {option} '{column}' is not a column of '{name_or_path}'; "
                    f"columns: {', '.join(ds.column_names)}"
                )
        for column in (image_column, mask_column, depth_column):
            ds = _undecoded(ds, column)
        self.ds, self.name = ds, str(name_or_path)
        self.image_column, self.label_column = image_column, label_column
        self.mask_column, self.depth_column, self.depth_scale = mask_column, depth_column, depth_scale
        feature = ds.features.get(label_column) if label_column else None
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else []

    def __len__(self) -> int:
        return len(self.ds)

    def _image(self, cell: Any) -> torch.Tensor:
        # Dense targets are aligned to the full-resolution image: no reduced JPEG decoding then.
        min_side = None if (self.mask_column or self.depth_column) else self.size
        value = _array(cell, "image", lambda src: read_rgb(src, min_side=min_side))
        if isinstance(value, torch.Tensor):
            return value
        if value.ndim == 2:
            value = np.repeat(value[..., None], 3, axis=-1)
        if value.ndim != 3 or value.shape[-1] not in (3, 4):
            raise UnreadableFileError(f"image array has shape {value.shape}; expected [H,W,3]")
        value = value[..., :3]
        tensor = torch.from_numpy(np.array(value)).permute(2, 0, 1)  # a writable, contiguous copy
        return tensor if tensor.dtype == torch.uint8 else tensor.float()

    def _depth(self, cell: Any) -> torch.Tensor:
        if isinstance(cell, dict) and ("bytes" in cell or "path" in cell):
            array = read_depth_array(cell.get("bytes") or cell.get("path"))
        else:
            array = np.squeeze(np.asarray(cell))
        return depth_in_units(array, self.depth_scale)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        row = self.ds[int(index)]
        key = f"{self.name}[{index}]"
        try:
            image = self._image(row[self.image_column])
            targets: dict[str, torch.Tensor] = {}
            if self.mask_column:
                mask = _array(row[self.mask_column], "mask", read_mask)
                targets["mask"] = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(mask.astype(np.int64))
            if self.depth_column:
                targets["depth"] = self._depth(row[self.depth_column])
        except UnreadableFileError as err:
            return SkippedSample(key, str(err))
        for name, target in targets.items():
            if tuple(target.shape) != tuple(image.shape[-2:]):
                return SkippedSample(key, f"{name} is {tuple(target.shape)} but the image is {tuple(image.shape[-2:])}")
        sample: dict[str, Any] = {"image": image_to_square(image, self.size), "key": key}
        if "mask" in targets:
            sample["mask"] = mask_to_square(targets["mask"], self.size)
        if "depth" in targets:
            sample["depth"] = depth_to_square(targets["depth"], self.size)
        if self.label_column:
            sample["label"] = int(row[self.label_column])
        return sample


DATASETS.register("hf")(HFImages)  # the class is the builder: one signature

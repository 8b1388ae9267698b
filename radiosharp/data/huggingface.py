"""``hf``: a dataset of the Hugging Face ``datasets`` library.

``name_or_path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
any local folder ``datasets.load_dataset`` understands (e.g. an image folder or parquet
files), or a hub id (needs the network or a filled HF cache). Image columns are read
undecoded and decoded here, so one corrupt image is skipped (and named) instead of
stopping the run; plain arrays (``[H,W,3]`` uint8 or float in [0,1]) work as well.
A ``ClassLabel`` label column gives ``.classes``. ``mask_column`` / ``depth_column``
add dense targets (resized like ``seg_folder`` / ``depth_folder``; an 8-bit depth
column needs ``depth_scale``, an encoded image's EXIF orientation is applied to its
mask and depth too, as in :mod:`radiosharp.data.decode`).

``split`` for a saved folder:

- ``DatasetDict.save_to_disk`` (``dataset_dict.json``): one of its splits, read on its
  own (the other splits are not loaded); a name it lacks is an error listing its splits.
- ``Dataset.save_to_disk`` (``state.json``): one dataset. When it was saved with a split
  name (``load_dataset(...)["validation"]``, ``Dataset.from_dict(..., split=...)``),
  ``split`` must be that name. Without one, the default ``train`` (or ``split: null``)
  reads it, and any other name is an error: the folder cannot say whether it is that
  split, and reading it anyway would, for ``val_data`` pointing at the train folder,
  score the training images.

``split: null`` takes the folder's only split. A dataset without rows is an error
naming the folder (``datasets`` itself fails with an IndexError on an empty saved
dataset). Every error is a :class:`~radiosharp.data.errors.DataError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from radiosharp.data.decode import depth_in_units, orient, read_depth_array, read_mask, read_rgb_oriented
from radiosharp.data.errors import DataError, UnreadableFileError
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import LabelledSource, check_size, depth_to_square, image_to_square, mask_to_square
from radiosharp.registry import DATASETS


def _saved_state(folder: Path) -> dict[str, Any]:
    """The ``state.json`` of a folder written by ``Dataset.save_to_disk`` ({} when unreadable)."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _empty(where: str, split: str | None) -> DataError:
    of = f" split '{split}'" if split else ""
    return DataError(f"hf: {where}{of} is empty (0 rows); give a dataset with at least one row")


def _load_saved(folder: Path, where: str, split: str | None) -> Any:
    """One saved ``Dataset`` folder; an empty one is refused before ``datasets`` trips over it."""
    import datasets

    if _saved_state(folder).get("_data_files") == []:
        raise _empty(where, split)
    try:
        return datasets.load_from_disk(str(folder))
    except (FileNotFoundError, OSError, ValueError, IndexError) as err:
        raise DataError(f"hf: cannot load the saved dataset {folder}: {type(err).__name__}: {err}") from None


def open_hf_dataset(name_or_path: str, split: str | None) -> Any:
    """One split of a saved dataset, a local folder or a hub dataset (see the module doc)."""
    import datasets

    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        try:
            splits = list(json.loads((path / "dataset_dict.json").read_text())["splits"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"hf: {path / 'dataset_dict.json'} is not a valid DatasetDict description: {err}") from None
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            asked = f"no split '{split}'" if split is not None else f"{len(splits)} splits; set split"
            raise DataError(f"hf: '{name_or_path}' has {asked}; valid splits: {', '.join(splits)}")
        loaded = _load_saved(path / split, f"'{name_or_path}'", split)
    elif path.is_dir() and (path / "state.json").is_file():  # Dataset.save_to_disk: one split
        saved = _saved_state(path).get("_split")
        if split is not None and saved is not None and split != saved:
            raise DataError(
                f"hf: '{name_or_path}' is one dataset saved as split '{saved}', not '{split}'; set split: {saved}, "
                f"or point at the folder of the '{split}' split (or save a DatasetDict holding both)"
            )
        if split is not None and saved is None and split != "train":
            raise DataError(
                f"hf: '{name_or_path}' is one dataset saved without a split name (Dataset.save_to_disk), so it "
                f"cannot be the '{split}' split of anything; set split: null to read the whole folder, or save a "
                f"DatasetDict with a '{split}' split"
            )
        loaded = _load_saved(path, f"'{name_or_path}'", split)
    else:
        try:
            loaded = datasets.load_dataset(str(path) if path.exists() else name_or_path, split=split)
        except (FileNotFoundError, ConnectionError, OSError, ValueError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(
                f"hf: cannot load '{name_or_path}' split '{split}': {first}. Give a folder saved with "
                "datasets' save_to_disk, a local data folder, or a hub id (needs the network)"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):  # split: null
            if len(loaded) != 1:
                raise DataError(f"hf: '{name_or_path}' has {len(loaded)} splits; set split: {', '.join(loaded)}")
            split, loaded = next(iter(loaded.items()))
    if len(loaded) == 0:
        raise _empty(f"'{name_or_path}'", split)
    return loaded


def _undecoded(ds: Any, column: str | None) -> Any:
    """Keep image columns as bytes/paths, so decoding (and its failures) happens in ``__getitem__``."""
    import datasets

    if column is not None and isinstance(ds.features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def declared_dtype(feature: Any) -> np.dtype | None:
    """The numpy dtype a column declares (``Array2D(..., "uint8")``, ``Sequence(Value("uint16"))``), else None.

    Rows come back as Python lists, which forget it: an 8-bit depth or image array would
    read as int64 (taken for 16-bit millimetres, or for floats in [0, 1])."""
    while hasattr(feature, "feature"):  # Sequence / List of ...
        feature = feature.feature
    try:
        return np.dtype(getattr(feature, "dtype", None) or "")
    except (TypeError, ValueError):
        return None


def _array(value: Any, what: str, reader, dtype: np.dtype | None = None) -> Any:
    """Decode an encoded-image cell (``{"bytes", "path"}``) with ``reader``; pass arrays through
    (as the column's declared ``dtype``)."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        source = value.get("bytes") or value.get("path")
        if source is None:
            raise UnreadableFileError(f"{what}: the cell holds neither bytes nor a path")
        return reader(source)
    return np.asarray(value, dtype=dtype)  # also a PIL image from a custom dataset


class HFImages(LabelledSource, Dataset):
    """Samples of one split of a ``datasets`` dataset (see module doc).

    A split of a Hugging Face ``datasets`` dataset: saved folder, local folder or hub id.

    ``label_column`` gives ``label`` (and ``.classes`` for a ClassLabel); ``mask_column``
    / ``depth_column`` give dense targets; ``depth_scale`` as in ``depth_folder``;
    ``split``: see the module doc (``null``: the only split).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        split: str | None = "train",
        image_column: str = "image",
        label_column: str | None = None,
        size: int = 224,
        mask_column: str | None = None,
        depth_column: str | None = None,
        depth_scale: float | None = None,
    ) -> None:
        import datasets

        if not name_or_path:
            raise DataError("hf: 'name_or_path' is required (a saved dataset folder or a hub id)")
        self.size = check_size(size)
        ds = open_hf_dataset(name_or_path, split)
        for option, column in (
            ("image_column", image_column),
            ("label_column", label_column),
            ("mask_column", mask_column),
            ("depth_column", depth_column),
        ):
            if column is not None and column not in ds.column_names:
                raise DataError(
                    f"hf: {option} '{column}' is not a column of '{name_or_path}'; "
                    f"columns: {', '.join(ds.column_names)}"
                )
        for column in (image_column, mask_column, depth_column):
            ds = _undecoded(ds, column)
        self.ds, self.name = ds, str(name_or_path)
        self.image_column, self.label_column = image_column, label_column
        self.mask_column, self.depth_column, self.depth_scale = mask_column, depth_column, depth_scale
        self.dtypes = {column: declared_dtype(ds.features.get(column)) for column in (image_column, depth_column)}
        feature = ds.features.get(label_column) if label_column else None
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else []

    def __len__(self) -> int:
        return len(self.ds)

    def _image(self, cell: Any) -> tuple[torch.Tensor, int]:
        """The image and the EXIF orientation applied to it (1 for an array cell)."""
        # Dense targets are aligned to the full-resolution image: no reduced JPEG decoding then.
        min_side = None if (self.mask_column or self.depth_column) else self.size
        value = _array(
            cell, "image", lambda src: read_rgb_oriented(src, min_side=min_side), self.dtypes[self.image_column]
        )
        if isinstance(value, tuple):
            return value
        if value.ndim == 2:
            value = np.repeat(value[..., None], 3, axis=-1)
        if value.ndim != 3 or value.shape[-1] not in (3, 4):
            raise UnreadableFileError(f"image array has shape {value.shape}; expected [H,W,3]")
        value = value[..., :3]
        tensor = torch.from_numpy(np.array(value)).permute(2, 0, 1)  # a writable, contiguous copy
        return (tensor if tensor.dtype == torch.uint8 else tensor.float()), 1

    def _depth(self, cell: Any, key: str) -> torch.Tensor:
        if isinstance(cell, dict) and ("bytes" in cell or "path" in cell):
            array = read_depth_array(cell.get("bytes") or cell.get("path"))
        else:
            array = np.squeeze(np.asarray(cell, dtype=self.dtypes[self.depth_column]))
        return depth_in_units(array, self.depth_scale, f"{key} (column '{self.depth_column}')")

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        row = self.ds[int(index)]
        key = f"{self.name}[{index}]"
        try:
            image, orientation = self._image(row[self.image_column])
            targets: dict[str, torch.Tensor] = {}
            if self.mask_column:
                mask = _array(row[self.mask_column], "mask", read_mask)
                targets["mask"] = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(mask.astype(np.int64))
            if self.depth_column:
                targets["depth"] = self._depth(row[self.depth_column], key)
            targets = {name: orient(t, orientation) for name, t in targets.items()}  # the image's EXIF turn
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

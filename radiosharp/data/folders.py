"""``image_folder``: every image below a folder, labelled by its first-level sub-folder.

Layouts::

    root/cat/001.jpg, root/dog/x/002.png   -> labelled: classes = ["cat", "dog"]
    root/001.jpg, root/002.png             -> flat: no labels

Classes are the sorted names of the first-level sub-folders that hold images (like
torchvision's ImageFolder), so two folders whose class lists differ number their
classes differently. The eval takes the class ids of the train split and maps the val
labels onto them by class name (a val folder that lacks a class keeps the train ids,
with a warning; val images of a class the train folder lacks are refused), see
:func:`radiosharp.eval.features.align_classes`. Outside the eval, ``classes: [...]``
pins the list and its order.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from radiosharp.data.decode import IMAGE_EXTENSIONS, is_image_file, normalize_extensions, read_rgb
from radiosharp.data.errors import DataError, DataNotFoundError, UnreadableFileError
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import LabelledSource, check_size, image_to_square
from radiosharp.registry import DATASETS


def list_images(folder: Path, extensions: tuple[str, ...], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` in sorted (deterministic) order; hidden entries skipped."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p, extensions))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(Path(f), extensions))
    return sorted(found)


def existing_folder(path: str | os.PathLike | None, what: str) -> Path:
    if path is None or str(path) == "":
        raise DataError(f"{what} is required: set it to a folder path")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"{what}: folder not found: {folder}")
    return folder


class ImageFolder(LabelledSource, Dataset):
    """Images (and labels from class sub-folders) below ``root``; see module doc."""

    def __init__(
        self,
        root: str | os.PathLike | None,
        size: int = 224,
        recursive: bool = True,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        classes: list[str] | None = None,
    ) -> None:
        self.root = existing_folder(root, "image_folder root")
        self.size = check_size(size)
        self.extensions = normalize_extensions(extensions)
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = {d.name: list_images(d, self.extensions, recursive) for d in subdirs}
        per_class = {name: files for name, files in per_class.items() if files}
        top_level = list_images(self.root, self.extensions, recursive=False)
        self.files: list[Path]
        self.labels: list[int] | None
        if per_class or classes:
            self.classes = list(classes) if classes else sorted(per_class)
            unknown = sorted(set(per_class) - set(self.classes))
            if unknown:
                raise DataError(
                    f"image_folder {self.root}: sub-folders {unknown} are not in the given classes {self.classes}"
                )
            if top_level:
                warnings.warn(
                    f"image_folder {self.root}: {len(top_level)} images directly in the root "
                    "are ignored because the class sub-folders define the labels",
                    stacklevel=2,
                )
            self.files, self.labels = [], []
            for index, name in enumerate(self.classes):
                files = per_class.get(name, [])
                self.files += files
                self.labels += [index] * len(files)
        else:
            self.classes, self.files, self.labels = [], top_level, None
        if not self.files:
            raise DataError(f"image_folder {self.root}: no images with extensions {list(self.extensions)}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        path = self.files[index]
        try:
            pixels = read_rgb(path, min_side=self.size)
        except UnreadableFileError as err:
            return SkippedSample(str(path), str(err))
        sample: dict[str, Any] = {
            "image": image_to_square(pixels, self.size),
            "key": path.relative_to(self.root).as_posix(),
        }
        if self.labels is not None:
            sample["label"] = self.labels[index]
        return sample


@DATASETS.register("image_folder")
def build_image_folder(
    root: str | None = None,
    size: int = 224,
    recursive: bool = True,
    extensions: str | list[str] = ";".join(e.lstrip(".") for e in IMAGE_EXTENSIONS),  # noqa: B008 (computed once, shown in the signature)
    classes: list[str] | None = None,
) -> ImageFolder:
    """Every image below ``root``; ``label`` from the first-level sub-folder (``.classes``).

    ``recursive: false`` reads only ``root/*`` and ``root/<class>/*``. ``extensions`` is
    a ``;``-separated string or a list. ``classes`` pins the class list and its order.
    """
    return ImageFolder(root, size, recursive, normalize_extensions(extensions), classes)

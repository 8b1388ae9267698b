"""``seg_folder`` and ``depth_folder``: images paired with a dense target of the same stem.

Layouts (the eval probes read these)::

    root/images/<rel>/<stem>.jpg  +  root/masks/<rel>/<stem>.png      (ADE20K, VOC)
    root/images/<rel>/<stem>.jpg  +  root/depth/<rel>/<stem>.png|.npy (NYU-style)

ADE20K (``ADEChallengeData2016``): ``images=images/validation``,
``masks=annotations/validation``; its masks hold 0 = "other / unlabelled" and the 150
classes as 1..150. Keep 0 as a class of its own (151 classes) or set
``reduce_zero_label: true`` to map 0 -> 255 (ignored) and k -> k-1 (150 classes), the
usual benchmark protocol. VOC: ``images=JPEGImages``, ``masks=SegmentationClass``,
``list_file=ImageSets/Segmentation/val.txt``; its palette PNGs hold the class index,
with 255 on object borders (ignored). Images without a target are left out (with one
warning that counts them), which is how VOC's few segmented images are picked from
JPEGImages without a list file.

With ``num_classes`` (or ``class_names``) every mask is checked when it is read: a
class id outside ``0..num_classes-1`` that is not the ignore index 255 raises
:class:`~radiosharp.data.errors.DataError` naming the mask file, the id, num_classes
and the option that fixes it (``reduce_zero_label`` for ADE20K-style masks), instead of
a cross-entropy traceback or pixels silently left out of the mIoU.

Masks are resized with nearest neighbour; depth with ``depth_resize`` (``nearest`` by
default, see ``radiosharp.data.transforms``). Depth in metres = stored value *
``depth_scale``; by default 1/1000 for 16-bit integer files (NYU's 16-bit PNGs hold
millimetres) and 1 for float files (``.npy``, float TIFF). 8-bit depth files (grey or
palette PNGs, uint8 arrays) have no such convention: they are refused with a
``DataError`` naming the file unless ``depth_scale`` says their unit (metres per
stored step). A stored 0 stays 0, which in NYU-style data means "no measurement".

A ``depth_folder`` pointed at the BTS / NYU "sync" layout (``<scene>/rgb_<n>.jpg`` next to
``<scene>/sync_depth_<n>.png``) is refused with a ``DataError`` that names the source which
reads it, ``nyu_bts`` (:mod:`radiosharp.data.seg_layouts`), instead of "no image has a
target". Layouts as datasets are distributed (Cityscapes, COCO-Stuff, Pascal-Context,
BTS NYU) are sources of their own in that module, built on these classes
(``SegFolder.map_mask`` turns stored ids into class ids).

EXIF: an image is read upright (its orientation tag applied) and its mask or depth map
gets the same transposition, so the pair stays aligned; a tag on the target file itself
is ignored (see :mod:`radiosharp.data.decode`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from radiosharp.data.decode import (
    IMAGE_EXTENSIONS,
    depth_in_units,
    orient,
    read_depth_array,
    read_mask,
    read_rgb_oriented,
)
from radiosharp.data.errors import DataError, DataNotFoundError, UnreadableFileError
from radiosharp.data.folders import existing_folder, list_images
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import check_depth_resize, check_size, depth_to_square, image_to_square, mask_to_square
from radiosharp.registry import DATASETS

IGNORE_INDEX = 255
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
DEPTH_EXTENSIONS = (".png", ".npy", ".npz", ".tif", ".tiff")


def read_list_file(path: Path) -> set[str]:
    """Stems (relative paths without extension) listed one per line, e.g. VOC's ``val.txt``."""
    if not path.is_file():
        raise DataNotFoundError(f"list_file not found: {path}")
    stems = set()
    for line in path.read_text().splitlines():
        if line.strip():
            token = Path(line.split()[0])
            known = token.suffix.lower() in IMAGE_EXTENSIONS + MASK_EXTENSIONS + DEPTH_EXTENSIONS
            stems.add((token.with_suffix("") if known else token).as_posix())
    return stems


def out_of_range_id(mask: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> int | None:
    """The largest class id of ``mask`` outside ``0..num_classes-1`` that is not ``ignore_index`` (None: all valid)."""
    bad = (mask < 0) | (mask >= num_classes)
    bad &= mask != ignore_index
    if not bool(bad.any()):
        return None
    return int(mask[bad].max())


def mask_id_fix(
    bad: int,
    num_classes: int,
    reduce_zero_label: bool = False,
    num_classes_option: str = "num_classes",
    reduce_option: str = "reduce_zero_label",
) -> str:
    """What fixes masks holding class id ``bad`` outside ``0..num_classes-1``, naming the options to set."""
    if bad < 0:
        return f"class ids must be >= 0 (or {IGNORE_INDEX} = ignore)"
    if bad == num_classes and not reduce_zero_label:
        return (
            f"if 0 means 'void' and the classes are 1..{num_classes} (ADE20K), set {reduce_option}: true; "
            f"else set {num_classes_option}: {bad + 1}"
        )
    return f"set {num_classes_option} to at least {bad + 1}, or map those pixels to {IGNORE_INDEX} (ignored)"


BTS_IMAGE_PREFIX, BTS_DEPTH_PREFIX = "rgb_", "sync_depth_"


def bts_layout_in(folder: Path, max_depth: int = 3) -> bool:
    """Whether ``folder`` (or a sub-folder up to ``max_depth`` levels down) holds the BTS / NYU "sync"
    layout: ``sync_depth_<n>.png`` next to its ``rgb_<n>.jpg`` in one folder (stops at the first)."""
    if not folder.is_dir():
        return False
    for dirpath, dirnames, filenames in os.walk(folder):
        names = set(filenames)
        for name in filenames:
            if name.startswith(BTS_DEPTH_PREFIX):
                number = Path(name[len(BTS_DEPTH_PREFIX) :]).stem
                if any(f"{BTS_IMAGE_PREFIX}{number}{ext}" in names for ext in IMAGE_EXTENSIONS):
                    return True
        if len(Path(dirpath).relative_to(folder).parts) >= max_depth:
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return False


def bts_layout_message(kind: str, folder: Path) -> str:
    return (
        f"{kind} {folder}: this is the BTS / NYU 'sync' layout (<scene>/{BTS_IMAGE_PREFIX}<n>.jpg next to "
        f"<scene>/{BTS_DEPTH_PREFIX}<n>.png in one folder), not images/ + depth/ folders of the same stem; "
        f"use source: nyu_bts with root: {folder}"
    )


class PairedFolder(Dataset):
    """Images under ``root/images`` with a target file of the same relative stem under ``root/targets``."""

    kind = "paired_folder"
    target_extensions: tuple[str, ...] = ()

    def __init__(
        self, root: str | os.PathLike | None, size: int, images: str, targets: str, list_file: str | None = None
    ) -> None:
        base = existing_folder(root, f"{self.kind} root")
        self.root, self.size = base, check_size(size)
        self.image_root = existing_folder(base / images, f"{self.kind} images")
        self.target_root = existing_folder(base / targets, f"{self.kind} targets")
        wanted = read_list_file(base / Path(list_file).expanduser()) if list_file else None
        self.pairs: list[tuple[Path, Path]] = []
        missing = []
        for image in list_images(self.image_root, IMAGE_EXTENSIONS):
            stem = image.relative_to(self.image_root).with_suffix("").as_posix()
            if wanted is not None and stem not in wanted and Path(stem).name not in wanted:
                continue
            target = self._find_target(stem)
            if target is None:
                missing.append(stem)
            else:
                self.pairs.append((image, target))
        if not self.pairs:
            raise DataError(
                f"{self.kind} {base}: no image in '{self.image_root}' has a target of the same "
                f"stem in '{self.target_root}' (target extensions {list(self.target_extensions)})"
            )
        if missing:
            warnings.warn(
                f"{self.kind} {base}: {len(missing)} images have no target and are left out (first: {missing[:3]})",
                stacklevel=2,
            )

    def _find_target(self, stem: str) -> Path | None:
        for ext in self.target_extensions:
            candidate = self.target_root / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def read_target(self, path: Path) -> torch.Tensor:
        raise NotImplementedError

    def target_to_square(self, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    target_key = "target"

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        image_path, target_path = self.pairs[index]
        try:
            pixels, orientation = read_rgb_oriented(image_path)  # full resolution: the target is aligned to it
        except UnreadableFileError as err:
            return SkippedSample(str(image_path), str(err))
        try:
            target = orient(self.read_target(target_path), orientation)  # the image's EXIF turn (module doc)
        except UnreadableFileError as err:
            return SkippedSample(str(target_path), str(err))
        if tuple(pixels.shape[-2:]) != tuple(target.shape[-2:]):
            return SkippedSample(
                str(target_path),
                f"{self.target_key} is {tuple(target.shape)} but its image "
                f"{image_path.name} is {tuple(pixels.shape[-2:])}",
            )
        return {
            "image": image_to_square(pixels, self.size),
            self.target_key: self.target_to_square(target),
            "key": image_path.relative_to(self.image_root).as_posix(),
        }


class SegFolder(PairedFolder):
    """Images + class masks of the same stem (ADE20K/VOC style; the ``seg_folder`` data source): ``mask``
    [S,S] long, 255 = ignore; see the module doc.

    ``num_classes`` / ``class_names`` tell the probes the label space (else they use the
    largest class seen); ``reduce_zero_label`` maps ADE20K's 0 = "other" to ignore.
    """

    kind = "seg_folder"
    target_key = "mask"
    target_extensions = MASK_EXTENSIONS

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        size: int = 224,
        images: str = "images",
        masks: str = "masks",
        list_file: str | None = None,
        reduce_zero_label: bool = False,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(root, size, images, masks, list_file)
        self.reduce_zero_label = reduce_zero_label
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise DataError(f"seg_folder: {len(class_names)} class_names but num_classes={num_classes}")
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = num_classes or (len(class_names) if class_names else None)

    def map_mask(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        """The stored ids of mask file ``path`` -> class ids (255 = ignore): ``reduce_zero_label`` here.

        A hook for sources whose files hold another id space (``cityscapes`` label ids,
        ``coco_stuff27``'s fine ids; see :mod:`radiosharp.data.seg_layouts`); the
        ``num_classes`` check runs on what it returns.
        """
        if self.reduce_zero_label:
            ignore = (mask == 0) | (mask == IGNORE_INDEX)
            mask = (mask - 1).masked_fill_(ignore, IGNORE_INDEX)
        return mask

    def read_target(self, path: Path) -> torch.Tensor:
        mask = self.map_mask(read_mask(path), path)
        if self.num_classes is not None:
            bad = out_of_range_id(mask, self.num_classes, IGNORE_INDEX)
            if bad is not None:
                raise DataError(
                    f"{self.kind}: mask {path} holds class id {bad}"
                    + (" (after reduce_zero_label)" if self.reduce_zero_label else "")
                    + f", but num_classes is {self.num_classes} (valid ids 0..{self.num_classes - 1}, "
                    f"{IGNORE_INDEX} = ignore); {mask_id_fix(bad, self.num_classes, self.reduce_zero_label)}"
                )
        return mask

    def target_to_square(self, target: torch.Tensor) -> torch.Tensor:
        return mask_to_square(target, self.size)


class DepthFolder(PairedFolder):
    """Images + depth maps of the same stem (NYU style; the ``depth_folder`` data source): 16-bit PNG,
    ``.npy``, float TIFF; ``depth`` [S,S] float, metres when scaled; see the module doc.

    ``depth_scale`` multiplies the stored values (default: 1/1000 for integer files,
    1 for float files); ``depth_resize`` is ``nearest`` (default) or ``bilinear``.
    """

    kind = "depth_folder"
    target_key = "depth"
    target_extensions = DEPTH_EXTENSIONS

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        size: int = 224,
        images: str = "images",
        depth: str = "depth",
        depth_scale: float | None = None,
        depth_resize: str = "nearest",
        list_file: str | None = None,
    ) -> None:
        check_depth_resize(depth_resize, self.kind)
        try:
            super().__init__(root, size, images, depth, list_file)
        except DataError:
            base = Path(root).expanduser() if root else None
            if base is not None and base.is_dir():
                folder = base / images if (base / images).is_dir() else base
                if bts_layout_in(folder):
                    raise DataError(bts_layout_message(self.kind, folder)) from None
            raise
        if any(image.name.startswith(BTS_DEPTH_PREFIX) for image, _ in self.pairs):
            raise DataError(bts_layout_message(self.kind, self.image_root))  # depth maps read as images
        self.depth_scale, self.depth_resize = depth_scale, depth_resize

    def read_target(self, path: Path) -> torch.Tensor:
        return depth_in_units(read_depth_array(path), self.depth_scale, path)

    def target_to_square(self, target: torch.Tensor) -> torch.Tensor:
        return depth_to_square(target, self.size, self.depth_resize)


# the classes are the builders (one signature each)
build_seg_folder = DATASETS.register("seg_folder")(SegFolder)
build_depth_folder = DATASETS.register("depth_folder")(DepthFolder)

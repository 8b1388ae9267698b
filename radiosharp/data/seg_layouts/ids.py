"""Id tables: how the stored ids of a mask format become class ids, and the segmentation folder that maps them.

Shared by the layouts of :mod:`radiosharp.data.seg_layouts`; a stored id the format does not have raises a
``DataError`` naming the file, instead of being mapped to a wrong class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from radiosharp.data.errors import DataError
from radiosharp.data.paired_folders import IGNORE_INDEX, SegFolder

INVALID = -1  # in a lookup table: a stored id that the format does not have


def lookup_table(mapping: dict[int, int], size: int = 256) -> torch.Tensor:
    """long ``[size]``: stored id -> class id for the ids of ``mapping``, ``INVALID`` for the rest."""
    table = torch.full((size,), INVALID, dtype=torch.long)
    for stored, target in mapping.items():
        table[stored] = target
    return table


@dataclass(frozen=True)
class IdTable:
    """How the stored ids of one mask format become class ids (``255`` = ignore).

    ``table[stored]`` is the class id; a stored id outside the table or mapped to
    ``INVALID`` is a file of another format: ``apply`` raises a ``DataError`` naming the
    file, the ids, ``expected`` (what the format holds) and ``fix``.
    """

    table: torch.Tensor
    expected: str
    fix: str

    def apply(self, mask: torch.Tensor, path: Path, kind: str) -> torch.Tensor:
        size = self.table.numel()
        inside = (mask >= 0) & (mask < size)
        mapped = self.table[mask.clamp(0, size - 1)]
        bad = ~inside | (mapped == INVALID)
        if bool(bad.any()):
            ids = mask[bad].unique().tolist()
            shown = ", ".join(str(i) for i in ids[:5]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
            raise DataError(f"{kind}: mask {path} holds id {shown}, but {self.expected}; {self.fix}")
        return mapped


def identity_table(num_classes: int) -> dict[int, int]:
    """``0..num_classes-1`` and 255 (ignore) as they are."""
    return {**{i: i for i in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX}


class RemappedSegFolder(SegFolder):
    """A ``SegFolder`` whose mask files hold another id space, mapped by an :class:`IdTable`."""

    kind = "remapped_seg_folder"

    def __init__(
        self,
        root: str | os.PathLike | None,
        size: int,
        images: str,
        masks: str,
        list_file: str | None,
        ids: IdTable,
        class_names: list[str],
    ) -> None:
        self.ids = ids
        super().__init__(root, size, images, masks, list_file, num_classes=len(class_names), class_names=class_names)

    def map_mask(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        return self.ids.apply(mask, path, self.kind)

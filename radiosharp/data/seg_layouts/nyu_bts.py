"""NYU Depth v2 in the BTS layout: ``<scene>/rgb_<n>.jpg`` + ``<scene>/sync_depth_<n>.png`` in one folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from radiosharp.data.decode import IMAGE_EXTENSIONS
from radiosharp.data.errors import DataError, DataNotFoundError
from radiosharp.data.folders import existing_folder, list_images
from radiosharp.data.paired_folders import BTS_DEPTH_PREFIX, BTS_IMAGE_PREFIX, DEPTH_EXTENSIONS, DepthFolder
from radiosharp.data.transforms import check_depth_resize, check_size
from radiosharp.registry import DATASETS


class NyuBts(DepthFolder):
    """NYU Depth v2 in BTS's ``<scene>/rgb_<n>.jpg`` + ``<scene>/sync_depth_<n>.png`` layout (the ``nyu_bts`` data
    source); ``depth`` in metres; see the module doc.

    ``depth_scale`` / ``depth_resize`` as in ``depth_folder``; ``list_file`` in BTS's
    ``rgb_path depth_path focal`` format picks and orders the pairs.
    """

    kind = "nyu_bts"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        size: int = 224,
        depth_scale: float | None = None,
        depth_resize: str = "nearest",
        list_file: str | None = None,
    ) -> None:
        check_depth_resize(depth_resize, self.kind)
        base = existing_folder(root, "nyu_bts root")
        self.root, self.size = base, check_size(size)
        self.image_root = self.target_root = base
        self.depth_scale, self.depth_resize = depth_scale, depth_resize
        self.pairs = self._listed(base / Path(list_file).expanduser()) if list_file else self._found()

    def _found(self) -> list[tuple[Path, Path]]:
        pairs, missing = [], []
        for image in list_images(self.root, IMAGE_EXTENSIONS):
            if not image.name.startswith(BTS_IMAGE_PREFIX):
                continue
            number = image.stem[len(BTS_IMAGE_PREFIX) :]
            depth = next(
                (
                    image.with_name(f"{BTS_DEPTH_PREFIX}{number}{ext}")
                    for ext in DEPTH_EXTENSIONS
                    if image.with_name(f"{BTS_DEPTH_PREFIX}{number}{ext}").is_file()
                ),
                None,
            )
            if depth is None:
                missing.append(image.relative_to(self.root).as_posix())
            else:
                pairs.append((image, depth))
        if not pairs:
            raise DataError(
                f"nyu_bts {self.root}: no {BTS_IMAGE_PREFIX}<n> image below it has its {BTS_DEPTH_PREFIX}<n>.png "
                "in the same folder; root is the BTS 'sync' or 'official_splits/test' folder of <scene>/ folders"
            )
        if missing:
            warnings.warn(
                f"nyu_bts {self.root}: {len(missing)} images have no {BTS_DEPTH_PREFIX} file and are left out "
                f"(first: {missing[:3]})",
                stacklevel=3,
            )
        return pairs

    def _listed(self, path: Path) -> list[tuple[Path, Path]]:
        if not path.is_file():
            raise DataNotFoundError(f"nyu_bts: list_file not found: {path}")
        pairs, missing, no_depth = [], [], 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise DataError(
                    f"nyu_bts: list_file {path} line {number} is '{line.strip()}'; expected "
                    "'rgb_path depth_path focal' per line (BTS's nyu_test_files_with_gt.txt)"
                )
            if tokens[1] == "None":  # an image without ground truth in BTS's lists
                no_depth += 1
                continue
            image, depth = (self.root / token.lstrip("/") for token in tokens[:2])
            if image.is_file() and depth.is_file():
                pairs.append((image, depth))
            else:
                missing.append(tokens[0])
        if not pairs:
            raise DataError(
                f"nyu_bts {self.root}: no line of list_file {path} names an rgb and a depth file that exist below "
                f"the root (first: {missing[:1]}); root must be the folder the list's paths are relative to"
            )
        if missing or no_depth:
            warnings.warn(
                f"nyu_bts {self.root}: {len(missing) + no_depth} entries of {path.name} are left out "
                f"({len(missing)} with a missing file, first: {missing[:3]}; {no_depth} without depth)",
                stacklevel=3,
            )
        return pairs


# the class is the builder (one signature)
build_nyu_bts = DATASETS.register("nyu_bts")(NyuBts)

"""``webdataset``: tar shards of ``<key>.jpg`` (+ ``<key>.cls``) samples, the format for real runs.

``shards`` is a brace pattern (``/data/train-{000000..000127}.tar``, also ``pipe:`` or
``http(s)://`` URLs as the webdataset package reads them) or a list of them. The stream
is split by node (``RANK``/``WORLD_SIZE`` or torch.distributed), then by DataLoader
worker, so every shard is read by one process; give at least ``ranks x workers`` shards
or some processes get none (we warn). Shard order and sample shuffling are seeded by
``(seed, epoch, rank, worker)``; call :meth:`ShardStream.set_epoch` before each epoch (before
the loader starts its workers, when they are persistent).

Samples whose image does not decode are passed on as ``SkippedSample`` (dropped and
named by ``collate_skip_bad``); a shard that cannot be read (truncated tar, missing
URL) is warned about and skipped by the webdataset handler.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from radiosharp.data.decode import read_rgb
from radiosharp.data.errors import DataError, DataNotFoundError, UnreadableFileError
from radiosharp.data.skipping import SkippedSample
from radiosharp.data.transforms import check_size, image_to_square
from radiosharp.registry import DATASETS


def expand_shards(shards: str | list[str]) -> list[str]:
    """Brace-expanded shard URLs; local paths must exist (the error names the missing ones)."""
    from webdataset.shardlists import expand_urls  # braces, "::"-joined lists, $WDS_ variables

    patterns = [shards] if isinstance(shards, str) else list(shards or [])
    urls = [url for pattern in patterns for url in expand_urls(str(pattern))]
    if not urls:
        raise DataError(
            "webdataset: 'shards' is required: a brace pattern like "
            "'/data/train-{000000..000099}.tar' or a list of shard paths/URLs"
        )
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:") and u != "-"]
    missing = [u for u in local if not Path(u).expanduser().is_file()]
    if missing:
        raise DataNotFoundError(f"webdataset: {len(missing)} of {len(urls)} shards not found (first: {missing[:3]})")
    return [str(Path(u).expanduser()) if u in local else u for u in urls]


def _warn_and_continue(error: Exception) -> bool:
    warnings.warn(f"webdataset: skipping unreadable shard data: {error!r}", stacklevel=2)
    return True


def parse_label(raw: Any) -> int:
    """A class index from a ``.cls`` entry (ASCII digits) or an already decoded int."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8").strip()
    return int(raw)


class ShardStream(IterableDataset):
    """Decoded ``{"image", "key", ["label"]}`` samples streamed from tar shards (see module doc).

    Tar shards (brace pattern or list) read with the webdataset package, split by rank and worker.

    ``image_key``: ``;``-separated entry extensions, first present wins; ``label_key``:
    the integer class entry (``cls``), None for none. ``shuffle_buffer`` > 0 shuffles
    samples in a buffer of that size; ``shard_shuffle`` shuffles shard order;
    ``resampled`` draws shards with replacement forever (for step-based training);
    ``num_samples`` gives the stream a length (progress bars, statistics).
    """

    def __init__(
        self,
        shards: str | list[str] | None = None,
        size: int = 224,
        image_key: str = "jpg;png;jpeg;webp",
        label_key: str | None = "cls",
        shuffle_buffer: int = 0,
        shard_shuffle: bool = False,
        seed: int = 0,
        resampled: bool = False,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_shards(shards or [])
        self.size = check_size(size)
        self.image_keys = [k.strip().lower().lstrip(".") for k in image_key.split(";") if k.strip()]
        if not self.image_keys:
            raise DataError(f"webdataset: image_key {image_key!r} names no extension; e.g. 'jpg;png'")
        self.label_key = label_key.lstrip(".") if label_key else None
        self.shuffle_buffer, self.shard_shuffle = shuffle_buffer, shard_shuffle
        self.seed, self.resampled, self.num_samples = seed, resampled, num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("webdataset source has no length; set its num_samples option")
        return self.num_samples

    def decode(self, raw: dict[str, Any]) -> dict[str, Any] | SkippedSample:
        key = str(raw.get("__key__", "?"))
        name = f"{raw.get('__url__', '?')}:{key}"
        entries = {k.lower(): v for k, v in raw.items() if not k.startswith("__")}
        data = next((entries[k] for k in self.image_keys if k in entries), None)
        if data is None:
            return SkippedSample(name, f"no image entry among {self.image_keys}; entries: {sorted(entries)}")
        try:
            pixels = read_rgb(data, min_side=self.size)
        except UnreadableFileError as err:
            return SkippedSample(name, str(err))
        sample: dict[str, Any] = {"image": image_to_square(pixels, self.size), "key": key}
        if self.label_key and self.label_key in entries:
            try:
                sample["label"] = parse_label(entries[self.label_key])
            except (ValueError, UnicodeDecodeError) as err:
                return SkippedSample(name, f"label entry '{self.label_key}' is not an integer: {err}")
        return sample

    def __iter__(self) -> Iterator[dict[str, Any] | SkippedSample]:
        import webdataset as wds

        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if not self.resampled and len(self.urls) < world * workers:
            warnings.warn(
                f"webdataset: {len(self.urls)} shards for {world} ranks x {workers} workers; "
                "some processes read nothing",
                stacklevel=2,
            )
        epoch_seed = self.seed * 1_000_003 + self.epoch  # the same on every rank and worker
        stages: list[Any]
        if self.resampled:  # each rank/worker draws its own seeded stream of shards
            stages = [wds.ResampledShards(self.urls, seed=epoch_seed, deterministic=True)]
        else:  # one shared (shuffled) order, then disjoint slices per rank and worker
            stages = [wds.SimpleShardList(self.urls)]
            if self.shard_shuffle:
                stages.append(wds.shuffle(len(self.urls), initial=len(self.urls), seed=epoch_seed))
            stages += [wds.split_by_node, wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=_warn_and_continue))
        if self.shuffle_buffer > 0:
            stream_seed = (epoch_seed * 1009 + rank) * 101 + worker
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=stream_seed))
        stages.append(wds.map(self.decode))
        yield from wds.DataPipeline(*stages)


DATASETS.register("webdataset")(ShardStream)  # the class is the builder: one signature

"""DataLoaders over the data sources: batching that drops unreadable samples, seeded
epoch order, and an endless, resumable iterator for training loops.

Batches are dicts: tensors (``image``, ``mask``, ``depth``) are stacked, numbers
(``label``) become a tensor, and anything else (``key``) stays a list. A sample that a
source could not read (a :class:`~radiosharp.data.skipping.SkippedSample` or ``None``)
is dropped from its batch and logged; a batch whose every sample was bad is ``None``.

Resuming: for map-style sources :func:`make_loader` uses :class:`EpochBatchSampler`,
whose order in epoch ``e`` is a pure function of ``(seed, e)``. :func:`cycle` yields
``(position, batch)`` where ``position`` is where to restart to get the *next* batch;
save it with a checkpoint and pass it back as ``cycle(loader, start=position)``: the
sampler skips the consumed indices without loading any data. Iterable sources
(webdataset) have no index to skip to: ``cycle`` calls their ``set_epoch`` (a seeded
stream order per epoch) and re-reads and drops the consumed batches of the epoch,
which restores the position as long as the shards and worker count are unchanged.
A loader wrapped by ``accelerator.prepare`` no longer has our sampler; there, resume
with ``accelerator.skip_first_batches(loader, n)`` in the epoch you stopped in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from radiosharp.data.skipping import SKIP_LOG, SkipLog

Batch = dict[str, Any]


def collate_skip_bad(samples: Sequence[dict | None], log: SkipLog | None = None) -> Batch | None:
    """Stack the good samples of a batch; drop, count and warn about the bad ones.

    Keys come from the first good sample. Tensors must share a shape (every source
    crops to ``size x size``); ints/floats become a tensor; other values a list. A key
    missing from some samples is kept as a list with ``None`` holes. Returns ``None``
    when no sample of the batch was readable.
    """
    log = SKIP_LOG if log is None else log
    good = []
    for sample in samples:
        if sample:
            good.append(sample)
        else:
            log.record_sample(sample)
    if not good:
        return None
    batch: Batch = {}
    for key in good[0]:
        values = [s.get(key) for s in good]
        first = values[0]
        if any(v is None for v in values):
            batch[key] = values
        elif isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch '{key}': samples have different shapes {sorted(shapes)}; "
                                 "every sample of a source must have the same size")
            batch[key] = torch.stack(values)
        elif isinstance(first, (bool, np.bool_)):
            batch[key] = torch.tensor([bool(v) for v in values])
        elif isinstance(first, (int, np.integer)):
            batch[key] = torch.tensor([int(v) for v in values], dtype=torch.long)
        elif isinstance(first, (float, np.floating)):
            batch[key] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        else:
            batch[key] = values
    return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices whose order in epoch ``e`` depends only on ``(seed, e)``.

    Like ``DistributedSampler.set_epoch``: call :meth:`set_epoch` before each epoch.
    :meth:`skip` makes the next epoch start at a batch index, without loading data.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        if num_samples <= 0:
            raise ValueError("the data source is empty: no samples to load")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        """Start the next iteration at batch ``num_batches`` of the current epoch."""
        self.start_batch = num_batches

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order, start = self.order(self.epoch), self.start_batch
        self.start_batch = 0
        for b in range(start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def _seed_worker(worker_id: int) -> None:
    """Give numpy in each worker a seed derived from torch's per-worker seed."""
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader of dict batches that skips unreadable samples (see module doc).

    The loader's :class:`~radiosharp.data.skipping.SkipLog` is ``loader.skip_log``
    (it sees the skips collated in this process, i.e. all of them with ``num_workers=0``).
    Iterable sources (webdataset) shuffle and split themselves: ``shuffle`` must be False.
    """
    log = SkipLog()
    collate = functools.partial(collate_skip_bad, log=log)
    iterable = isinstance(dataset, IterableDataset)
    common: dict[str, Any] = dict(num_workers=num_workers, collate_fn=collate,
                                  pin_memory=torch.cuda.is_available(),
                                  # iterable sources re-start workers each epoch so they see set_epoch
                                  persistent_workers=num_workers > 0 and not iterable,
                                  worker_init_fn=_seed_worker if num_workers > 0 else None)
    if iterable:
        if shuffle:
            raise ValueError("shuffle=True is not possible for an iterable source (webdataset); "
                             "set the source's shuffle_buffer / shard_shuffle options instead")
        loader = DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, **common)
    else:
        sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
        loader = DataLoader(dataset, batch_sampler=sampler, **common)
    loader.skip_log = log
    return loader


@dataclass(frozen=True)
class LoaderPosition:
    """Where an endless walk over a loader stands: ``batch`` of ``epoch`` is the next to draw."""

    epoch: int = 0
    batch: int = 0


def cycle(loader: DataLoader, start: LoaderPosition | None = None) -> Iterator[tuple[LoaderPosition, Batch]]:
    """Endless ``(resume_position, batch)`` over ``loader``, epoch after epoch.

    ``resume_position`` is where to restart to draw the batch *after* this one, so a
    checkpoint that stores it resumes exactly (see module doc). Batches that were
    entirely unreadable (``None``) are passed over.
    """
    pos = start or LoaderPosition()
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, EpochBatchSampler) else None
    epoch, index = pos.epoch, pos.batch
    while True:
        to_drop = 0
        if sampler is not None:
            sampler.set_epoch(epoch)
            sampler.skip(index)
        else:
            to_drop = index
            if hasattr(loader.dataset, "set_epoch"):  # e.g. the webdataset source's shard order
                loader.dataset.set_epoch(epoch)
        whole_epoch, good = index == 0, 0
        for batch in loader:
            if to_drop:
                to_drop -= 1
                continue
            index += 1
            if batch is not None:
                good += 1
                yield LoaderPosition(epoch, index), batch
        if whole_epoch and good == 0:
            raise ValueError("a whole epoch of the loader gave no readable batch: the data source is "
                             "empty, smaller than one batch with drop_last, or entirely unreadable")
        epoch, index = epoch + 1, 0

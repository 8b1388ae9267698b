"""DataLoaders over the data sources: batching that drops unreadable samples, and a
sequential loader for evaluation, statistics and feature extraction.

Batches are dicts: tensors (``image``, ``mask``, ``depth``) are stacked, numbers
(``label``) become a tensor, and anything else (``key``) stays a list. A sample that a
source could not read (a :class:`~radiosharp.data.skipping.SkippedSample` or ``None``)
is dropped from its batch and logged; a batch whose every sample was bad is ``None``.

:func:`make_loader` reads a source once, in order. Training draws its batches from
:func:`radiosharp.engine.order.step_loader` instead: the one shuffled, resumable data
order (the samples of step ``s`` depend only on ``(seed, s)``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from radiosharp.data.errors import DataError
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
                raise DataError(
                    f"cannot batch '{key}': samples have different shapes {sorted(shapes)}; "
                    "every sample of a source must have the same size"
                )
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


def _seed_worker(worker_id: int) -> None:
    """Give numpy in each worker a seed derived from torch's per-worker seed."""
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of dict batches, in the source's order, that skips unreadable samples.

    The loader's :class:`~radiosharp.data.skipping.SkipLog` is ``loader.skip_log``
    (it sees the skips collated in this process, i.e. all of them with ``num_workers=0``).
    The order is sequential: ``shuffle`` must be False (for a shuffled, resumable order
    use :func:`radiosharp.engine.order.step_loader`; iterable sources such as webdataset
    shuffle themselves), and ``seed`` has no order to seed (it is accepted so that
    callers which pass ``seed=`` keep working).
    """
    iterable = isinstance(dataset, IterableDataset)
    if shuffle:
        if iterable:
            raise ValueError(
                "shuffle=True is not possible for an iterable source (webdataset); "
                "set the source's shuffle_buffer / shard_shuffle options instead"
            )
        raise ValueError(
            "make_loader reads a source in order; for a shuffled, resumable order use "
            "radiosharp.engine.order.step_loader"
        )
    if not iterable:
        if len(dataset) <= 0:
            raise DataError("the data source is empty: no samples to load")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    log = SkipLog()
    collate = functools.partial(collate_skip_bad, log=log)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        # iterable sources re-start workers each epoch so they see set_epoch
        persistent_workers=num_workers > 0 and not iterable,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
    loader.skip_log = log
    return loader

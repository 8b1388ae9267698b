"""The data order of a training run: which samples each step sees.

The samples of step ``s`` depend only on ``(seed, s)`` (:class:`StepBatchSampler`), so
a run resumed from step ``s`` draws the same batches as one that never stopped, without
touching the data it skips. Several processes split each global batch between them, so
a step under ``accelerate launch`` sees the same samples as one process with the same
global batch. Streaming sources (webdataset shards) are read epoch after epoch in their
own seeded order (:func:`stream_batches`). This is the one resumable data order; the
sequential loader of :mod:`radiosharp.data.loader` is for evaluation and statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from radiosharp.engine.signals import ignore_stop_signals

__all__ = ["StepBatchSampler", "next_readable", "step_loader", "stream_batches"]


class StepBatchSampler(Sampler[list[int]]):
    """Batches whose content is a pure function of ``(seed, step)``.

    The dataset is walked in epochs, each a fresh permutation seeded by
    ``seed + epoch``; the global batch of step ``s`` is positions
    ``[s*B, (s+1)*B)`` of that endless walk, and process ``rank`` of ``world`` takes
    every ``world``-th sample of it. ``start_step`` skips ahead without touching data.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int = 0,
        start_step: int = 0,
        num_steps: int | None = None,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the data source is empty")
        if global_batch % world != 0:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self.start, self.num_steps = start_step, num_steps
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm_cache = {epoch: torch.randperm(self.n, generator=g)}
            else:
                self._perm_cache = {epoch: torch.arange(self.n)}
        return self._perm_cache[epoch]

    def global_batch_indices(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, i = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[i]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.num_steps is None or step < self.start + self.num_steps:
            yield self.global_batch_indices(step)[self.rank :: self.world]
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return self.num_steps


def step_loader(
    dataset: Dataset,
    global_batch: int,
    seed: int,
    start_step: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    shuffle: bool = True,
) -> DataLoader | Iterator[dict[str, Any] | None]:
    """An endless DataLoader over ``dataset`` following :class:`StepBatchSampler`.

    The loader gets its own seeded generator: without one, ``iter(loader)`` draws the
    workers' base seed from the global torch RNG, which would shift every random
    number of a resumed run against the run that never stopped. A streaming source
    (an ``IterableDataset``) gives :func:`stream_batches` instead.
    """
    from radiosharp.data.loader import collate_skip_bad

    if isinstance(dataset, IterableDataset):
        return stream_batches(dataset, global_batch // world, start_step, num_workers)
    num_samples = len(dataset)  # type: ignore[arg-type]  # a map-style Dataset has a length
    sampler = StepBatchSampler(num_samples, global_batch, seed, start_step, None, rank, world, shuffle)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start_step * 7919 + rank)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        collate_fn=collate_skip_bad,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # the main process ends the run (engine.signals)
    )


def stream_batches(
    dataset: IterableDataset, local_batch: int, start_step: int, num_workers: int = 0
) -> Iterator[dict[str, Any] | None]:
    """Endless batches from a streaming source (webdataset shards), epoch after epoch.

    The source splits its shards between processes and workers itself and is seeded
    per epoch (``set_epoch``), so its order is reproducible; resuming at step ``s``
    re-reads and drops the first ``s`` batches (exact, at the price of reading them).
    """
    from radiosharp.data.loader import collate_skip_bad

    loader = DataLoader(
        dataset,
        batch_size=local_batch,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        drop_last=True,
        worker_init_fn=ignore_stop_signals,
    )
    epoch, produced = 0, 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            produced += 1
            if produced > start_step:
                yield batch
        if empty:
            raise RuntimeError(
                "the streaming data source yielded no batch in a whole epoch "
                f"(fewer than {local_batch} samples per process?)"
            )
        epoch += 1


def next_readable(batches: Iterator[dict[str, Any] | None], limit: int = 100) -> dict[str, Any]:
    """The next batch that has at least one readable sample.

    ``collate_skip_bad`` gives ``None`` for a micro-batch whose every sample was bad;
    this process then takes its share of the next one, so that every process still
    runs the same number of forward/backward passes (DDP stays in step). Such a step is
    no longer a pure function of ``(seed, step)``; the skip log says when it happens.
    """
    for _ in range(limit):
        batch = next(batches)
        if batch is not None:
            return batch
    raise RuntimeError(
        f"{limit} micro-batches in a row had no readable sample: the data source "
        "is unreadable (see the skipped-sample warnings above)"
    )

"""Unreadable samples: a marker that travels through the DataLoader, and a log of them.

A source never raises on one bad file (a truncated JPEG, a zero-byte file, text named
``.png``): its ``__getitem__`` returns a :class:`SkippedSample` naming the file and the
reason instead. The marker is falsy, like ``None``, so ``if sample:`` code treats both
alike. :func:`radiosharp.data.loader.collate_skip_bad` drops markers from a batch and
records them in a :class:`SkipLog`, which counts every skip and warns once per name,
so a run over a web-scraped folder goes on and says what it left out.

With DataLoader workers, collation (and so the log) runs in the worker processes:
each worker warns on its own stderr and keeps its own count.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass


class UnreadableImageWarning(UserWarning):
    """A sample was skipped because its file could not be read."""


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a sample whose file could not be read; falsy like ``None``."""

    key: str
    reason: str

    def __bool__(self) -> bool:
        return False


class SkipLog:
    """Counts skipped samples and warns once per name (the first time it is seen)."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    @property
    def count(self) -> int:
        """How many samples were skipped (a name skipped twice, e.g. in two epochs, counts twice)."""
        return sum(self.names.values())

    def record(self, key: str, reason: str) -> None:
        first = key not in self.names
        self.names[key] += 1
        if first:
            warnings.warn(
                f"skipped unreadable sample '{key}': {reason} ({len(self.names)} distinct unreadable so far)",
                UnreadableImageWarning,
                stacklevel=3,
            )

    def record_sample(self, sample: object) -> None:
        """Record a dropped sample: a :class:`SkippedSample` by its name, ``None`` as unnamed."""
        if isinstance(sample, SkippedSample):
            self.record(sample.key, sample.reason)
        else:
            self.record("<unnamed sample>", "the source returned None")


SKIP_LOG = SkipLog()
"""The log used when a collate call is given none (e.g. the training engine's loader)."""

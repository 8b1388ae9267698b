"""The first readable images of a data source, as one tensor (held-out scoring sets).

Used by the upsampler run's held-out fidelity and the ``fidelity`` eval task.
"""

from __future__ import annotations

from typing import Any

import torch

from radiosharp.data.errors import DataError
from radiosharp.data.loader import make_loader

__all__ = ["NoImagesError", "first_images"]


class NoImagesError(DataError):
    """A data source gave no readable image to score on."""


def first_images(dataset: Any, n: int) -> torch.Tensor:
    """The first ``n`` readable images [n,3,H,W] of a map-style or streaming (webdataset) source.

    Read in data order through the project's loader, so unreadable samples are skipped
    (and logged) for both kinds of source. Raises :class:`NoImagesError` when there are none.
    """
    images, count = [], 0
    for batch in make_loader(dataset, max(1, min(n, 16)), shuffle=False):
        if batch:
            images.append(batch["image"].float())
            count += len(images[-1])
        if count >= n:
            break
    if not images:
        raise NoImagesError("the data source gave no images")
    return torch.cat(images)[:n]

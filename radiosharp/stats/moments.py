"""Feature moments of teachers over a data source: one pass, float64 sums, all-reduced.

Images are loaded once and resized per teacher; under ``accelerate launch`` each
process takes its share of the images and the moments are summed across processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm.auto import tqdm

from radiosharp.contracts import Teacher, check_image_size
from radiosharp.images import resize
from radiosharp.phis import FeatureMoments
from radiosharp.recipe import RecipeError

__all__ = ["mean_eigenvalue", "teacher_moments", "teachers_moments"]


def _shard(dataset: Any, num_images: int, accelerator: Any) -> tuple[Any, int]:
    """This process's share of the first ``num_images`` samples, and how many it should take.

    Map-style sources: process ``rank`` takes samples ``rank, rank + world, ...`` of the
    first ``min(num_images, len(dataset))``. Iterable sources (webdataset) split their
    shards between processes themselves; each process takes its quota off its stream.
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    if isinstance(dataset, IterableDataset):
        return dataset, num_images // world + (rank < num_images % world)
    total = min(num_images, len(dataset))
    if total < 1:
        raise RecipeError("data: the data source is empty; PHI-S statistics need images")
    share = Subset(dataset, list(range(rank, total, world)))
    return share, len(share)


def _loader(dataset: Any, batch_size: int, num_workers: int = 0) -> DataLoader:
    from radiosharp.data.loader import make_loader

    return make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers, drop_last=False)


@torch.no_grad()
def teachers_moments(
    teachers: Mapping[str, Teacher],
    dataset: Any,
    num_images: int,
    batch_size: int,
    image_size: int | None = None,
    accelerator: Any = None,
    desc: str = "PHI-S stats",
    num_workers: int = 0,
) -> dict[str, FeatureMoments]:
    """Feature moments of every teacher over one pass of the first ``num_images`` images.

    Images are loaded once and resized per teacher. Teachers run in their own dtype;
    the moments accumulate in float64 and are all-reduced across processes, so every
    process returns the totals.
    """
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    sizes = {}
    for key, teacher in teachers.items():
        sizes[key] = image_size or teacher.native_size
        check_image_size(sizes[key], sizes[key], teacher.patch_size, f"teacher '{key}'")
    shard, quota = _shard(dataset, num_images, accelerator)
    moments = {key: FeatureMoments(t.embed_dim, device=device) for key, t in teachers.items()}
    models = {key: t.to(device).eval() for key, t in teachers.items()}
    is_main = accelerator is None or accelerator.is_main_process
    seen = 0
    with tqdm(total=quota, desc=desc, unit="img", disable=not is_main) as bar:
        for batch in _loader(shard, batch_size, num_workers) if quota > 0 else ():
            if seen >= quota:
                break
            if batch is None:  # every sample of the batch was unreadable
                continue
            images = batch["image"][: quota - seen].to(device, torch.float32)
            for key, teacher in models.items():
                moments[key].update(teacher(resize(images, (sizes[key], sizes[key]))).features)
            seen += images.shape[0]
            bar.update(images.shape[0])
    if accelerator is not None and accelerator.num_processes > 1:
        seen = int(accelerator.reduce(torch.tensor(seen, device=device), reduction="sum"))
    if seen < 1:
        raise RecipeError("data: no readable image came out of the data source; PHI-S statistics need images")
    for m in moments.values():
        m.all_reduce(accelerator)
        m.metadata.update({"num_images": str(seen), "num_vectors": str(m.num_vectors)})
    return moments


def teacher_moments(teacher: Teacher, dataset: Any, *args: Any, **kwargs: Any) -> FeatureMoments:
    """Feature moments of one teacher: :func:`teachers_moments` (same further arguments) for one."""
    return teachers_moments({"teacher": teacher}, dataset, *args, **kwargs)["teacher"]


def mean_eigenvalue(moments: FeatureMoments) -> float:
    """``trace(cov) / C``: the mean eigenvalue that PHI-S divides the MSE by."""
    return float(torch.diagonal(moments.covariance).mean())

"""``python -m radiosharp.stats RECIPE [dotted.key=value ...]``: PHI-S statistics per teacher.

Streams ``stats.num_images`` images of the recipe's ``data`` through every teacher
of ``teachers`` (resized to the teacher's ``native_size``, or to ``stats.image_size``)
and accumulates the feature mean and covariance in float64. Under
``accelerate launch`` each process takes every ``world``-th image and the moments
are summed across processes. Writes ``{run_dir}/phi_s/{teacher_key}.safetensors``
(``mean``, ``cov``, ``count`` + metadata), the file a recipe's
``teachers.<key>.phi_s`` points at. Every recipe problem is reported before
anything is computed or written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import IterableDataset, Subset
from tqdm.auto import tqdm

import radiosharp
from radiosharp.contracts import Teacher, check_image_size
from radiosharp.hadamard import is_hadamard_order, supported_orders_near
from radiosharp.images import resize
from radiosharp.phis import FeatureMoments
from radiosharp.recipe import Recipe, RecipeError, load_recipe


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


def _loader(dataset: Any, batch_size: int, num_workers: int = 0):
    from radiosharp.data.loader import make_loader

    return make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers, drop_last=False)


@torch.no_grad()
def teachers_moments(teachers: Mapping[str, Teacher], dataset: Any, num_images: int, batch_size: int,
                     image_size: int | None = None, accelerator: Any = None, desc: str = "PHI-S stats",
                     num_workers: int = 0) -> dict[str, FeatureMoments]:
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


def teacher_moments(teacher: Teacher, dataset: Any, num_images: int, batch_size: int,
                    image_size: int | None = None, accelerator: Any = None, desc: str = "PHI-S stats",
                    num_workers: int = 0) -> FeatureMoments:
    """Feature moments of one teacher (see :func:`teachers_moments`)."""
    return teachers_moments({"teacher": teacher}, dataset, num_images, batch_size, image_size,
                            accelerator, desc, num_workers)["teacher"]


def _check_teacher(key: str, teacher: Teacher, image_size: int | None) -> None:
    if not is_hadamard_order(teacher.embed_dim):
        near = ", ".join(str(n) for n in supported_orders_near(teacher.embed_dim))
        raise RecipeError(f"teachers.{key}: feature width {teacher.embed_dim} has no Hadamard matrix, so PHI-S "
                          f"cannot rotate it; widths near it that work: {near}")
    size = image_size or teacher.native_size
    try:
        check_image_size(size, size, teacher.patch_size, f"teacher '{key}'")
    except ValueError as err:
        where = "stats.image_size" if image_size else f"teachers.{key}"
        raise RecipeError(f"{where}: {err}") from None


def _built(where: str, builder: Any, *args: Any) -> Any:
    """Call a plug-in builder; its option errors become a RecipeError naming the section."""
    try:
        return builder(*args)
    except RecipeError:
        raise
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from None


def stats_paths(recipe: Recipe) -> dict[str, Path]:
    """Where :func:`compute_stats` writes each teacher's statistics."""
    return {key: recipe.run_dir / "phi_s" / f"{key}.safetensors" for key in recipe.teachers}


def compute_stats(recipe: Recipe, accelerator: Any = None) -> dict[str, Path]:
    """Compute and save PHI-S statistics for every teacher of ``recipe``; returns the paths.

    All teachers and the data source are built and checked before any image is
    processed, so a bad recipe fails (RecipeError) with nothing written.
    """
    if not recipe.teachers:
        raise RecipeError("teachers: the recipe has no teachers; PHI-S statistics are per teacher")
    run_dir = recipe.run_dir
    held = [m for m in ("checkpoints", "model.safetensors", "metrics.jsonl") if (run_dir / m).exists()]
    if held:
        raise RecipeError(f"{run_dir} holds a training run ({', '.join(held)}); write statistics to their "
                          f"own folder (output_dir=runs/stats) and point teachers.<key>.phi_s at them")
    teachers = {}
    for key, cfg in recipe.teachers.items():
        teachers[key] = _built(f"teachers.{key}", radiosharp.build_teacher, cfg, f"teachers.{key}")
        _check_teacher(key, teachers[key], recipe.stats.image_size)
    dataset = _built("data", radiosharp.build_dataset, recipe.data)
    if accelerator is None:
        from radiosharp.engine import plain_accelerator

        accelerator = plain_accelerator()
    moments = teachers_moments(teachers, dataset, recipe.stats.num_images, recipe.stats.batch_size,
                               recipe.stats.image_size, accelerator, num_workers=recipe.train.num_workers)
    paths = stats_paths(recipe)
    if accelerator.is_main_process:
        for key, m in moments.items():
            teacher, cfg = teachers[key], recipe.teachers[key]
            m.save(paths[key], metadata={
                "teacher_key": key,
                "family": cfg.family,
                "teacher_options": json.dumps(cfg.options, sort_keys=True, default=str),
                "embed_dim": str(teacher.embed_dim),
                "patch_size": str(teacher.patch_size),
                "image_size": str(recipe.stats.image_size or teacher.native_size),
            })
    accelerator.wait_for_everyone()
    return paths


def mean_eigenvalue(moments: FeatureMoments) -> float:
    """``trace(cov) / C``: the mean eigenvalue that PHI-S divides the MSE by."""
    return float(torch.diagonal(moments.covariance).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radiosharp.stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a YAML recipe whose teachers and data to use")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. stats.num_images=1024")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        paths = compute_stats(recipe)
    except (RecipeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        for key, path in paths.items():
            m = FeatureMoments.load(path)
            print(f"{key}: {path}  (C={m.dim}, vectors={m.num_vectors}, mean eigenvalue={mean_eigenvalue(m):.6g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PHI-S statistics of a recipe's teachers: build and check everything, then compute and save.

Writes ``{run_dir}/phi_s/{teacher_key}.safetensors`` (``mean``, ``cov``, ``count`` +
metadata), the file a recipe's ``teachers.<key>.phi_s`` points at. Every recipe problem
is a :class:`~radiosharp.recipe.RecipeError` raised before anything is computed or written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from radiosharp.builders import build_dataset, build_teacher
from radiosharp.contracts import Teacher, check_image_size
from radiosharp.hadamard import is_hadamard_order, supported_orders_near
from radiosharp.recipe import Recipe, RecipeError
from radiosharp.stats.moments import teachers_moments

__all__ = ["compute_stats", "stats_paths"]

log = logging.getLogger(__name__)


def _check_teacher(key: str, teacher: Teacher, image_size: int | None) -> None:
    if not is_hadamard_order(teacher.embed_dim):
        near = ", ".join(str(n) for n in supported_orders_near(teacher.embed_dim))
        raise RecipeError(
            f"teachers.{key}: feature width {teacher.embed_dim} has no Hadamard matrix, so PHI-S "
            f"cannot rotate it; widths near it that work: {near}"
        )
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
        raise RecipeError(
            f"{run_dir} holds a training run ({', '.join(held)}); write statistics to their "
            f"own folder (output_dir=runs/stats) and point teachers.<key>.phi_s at them"
        )
    existing = [path for path in stats_paths(recipe).values() if path.exists()]
    if existing:
        raise RecipeError(
            f"{existing[0]} already exists; statistics are never written over (delete it to compute them "
            "again, or choose another output_dir)"
        )
    teachers = {}
    for key, cfg in recipe.teachers.items():
        teachers[key] = _built(f"teachers.{key}", build_teacher, cfg, f"teachers.{key}")
        _check_teacher(key, teachers[key], recipe.stats.image_size)
    dataset = _built("data", build_dataset, recipe.data)
    if accelerator is None:
        from radiosharp.engine import plain_accelerator

        accelerator = plain_accelerator()
    moments = teachers_moments(
        teachers,
        dataset,
        recipe.stats.num_images,
        recipe.stats.batch_size,
        recipe.stats.image_size,
        accelerator,
        num_workers=recipe.train.num_workers,
    )
    paths = stats_paths(recipe)
    if accelerator.is_main_process:
        for key, m in moments.items():
            teacher, cfg = teachers[key], recipe.teachers[key]
            m.save(
                paths[key],
                metadata={
                    "teacher_key": key,
                    "family": cfg.family,
                    "teacher_options": json.dumps(cfg.options, sort_keys=True, default=str),
                    "embed_dim": str(teacher.embed_dim),
                    "patch_size": str(teacher.patch_size),
                    "image_size": str(recipe.stats.image_size or teacher.native_size),
                },
            )
            log.info("PHI-S statistics of teachers.%s -> %s", key, paths[key])
    accelerator.wait_for_everyone()
    return paths

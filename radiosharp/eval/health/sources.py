"""What eval health runs on: the images at every size, and the teachers the run records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.data.errors import one_line
from radiosharp.eval.settings import EvalError
from radiosharp.images import resize

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 4
DATA_SOURCES = ("photos", "synthetic")

ImageSource = Callable[[int], torch.Tensor]


def image_source(data: str = "photos", count: int = DEFAULT_IMAGES, seed: int = 0) -> ImageSource:
    """``size -> float [N,3,size,size]`` in [0,1], the same ``count`` images at every size.

    ``photos``: the held-out photographs first, then the training ones, each decoded from
    the original at ``size`` (centred square). ``synthetic``: seeded benchmark scenes
    rendered once at the largest size asked so far and resized down.
    """
    if data not in DATA_SOURCES:
        raise EvalError(f"health: data '{data}' is not valid; valid: {', '.join(DATA_SOURCES)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise EvalError(f"health: --images must be a positive integer, got {count!r}")
    cache: dict[int, torch.Tensor] = {}
    if data == "photos":
        from radiosharp.data.photos import HELDOUT, TRAIN, Photos

        names = list(HELDOUT + TRAIN)
        if count > len(names):
            raise EvalError(f"health: --images {count}: the packaged photos are {len(names)}")

        def photos(size: int) -> torch.Tensor:
            if size not in cache:
                dataset = Photos(size=size, names=names[:count])
                cache[size] = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
            return cache[size]

        return photos

    from radiosharp.data.synthetic import SyntheticScenes

    def synthetic(size: int) -> torch.Tensor:
        if size not in cache:
            largest = max([size, *cache])
            if largest not in cache:
                dataset = SyntheticScenes(num_images=count, size=largest, seed=seed)
                cache[largest] = torch.stack([dataset[i]["image"].float() for i in range(count)])
            cache[size] = resize(cache[largest], (size, size)).clamp(0.0, 1.0)
        return cache[size]

    return synthetic


def _recipe_teachers(run_dir: str | Path | None) -> Mapping[str, Any]:
    """The ``teachers:`` mapping of ``RUN/recipe.yaml`` ({} when there is none, it is unreadable or not a mapping)."""
    recipe = Path(run_dir) / "recipe.yaml" if run_dir is not None else None
    if recipe is None or not recipe.is_file():
        return {}
    import yaml

    try:
        teachers = (yaml.safe_load(recipe.read_text()) or {}).get("teachers") or {}
    except (yaml.YAMLError, AttributeError):
        return {}
    return teachers if isinstance(teachers, Mapping) else {}


def recorded_teacher_configs(student: nn.Module, run_dir: str | Path | None) -> tuple[dict[str, dict], str]:
    """``{teacher: build config}`` the run records, and where they came from.

    First the export's ``teacher_configs`` (``model.json``), else the ``teachers:`` of
    ``RUN/recipe.yaml`` (training-only keys dropped). Empty when neither has them.
    """
    from radiosharp.student_io import teacher_build_config

    stored = getattr(student, "teacher_configs", None) or {}
    if stored:
        return {name: dict(cfg) for name, cfg in stored.items()}, "model.json teacher_configs"
    out = {}
    for name, cfg in _recipe_teachers(run_dir).items():
        cfg = dict(cfg or {})
        cfg.setdefault("family", name)  # the recipe's rule: a family defaults to its key
        try:
            out[name] = teacher_build_config(cfg, f"recipe.yaml teachers.{name}")
        except ValueError:
            continue
    if out:
        return out, "recipe.yaml teachers"
    return {}, "none"


def build_recorded_teachers(
    configs: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The teachers ``names`` built from ``configs``; the others get a one-line reason."""
    from radiosharp.builders import build_teacher

    built, skipped = {}, {}
    for name in names:
        if name not in configs:
            skipped[name] = "no recorded teacher config"
            continue
        try:
            built[name] = build_teacher(dict(configs[name]), f"teacher '{name}'")
        except Exception as err:  # noqa: BLE001 - any failure (offline weights, missing package) skips (a) only
            skipped[name] = f"cannot build it from {dict(configs[name])}: {one_line(err)}"
            log.warning("health: teacher '%s' %s", name, skipped[name])
    return built, skipped


def teacher_recipe_upsamplers(run_dir: str | Path | None) -> dict[str, Any]:
    """``{teacher: its recipe upsampler}`` from ``RUN/recipe.yaml`` (tile-trained students have one)."""
    teachers = _recipe_teachers(run_dir)
    return {n: c["upsampler"] for n, c in teachers.items() if isinstance(c, Mapping) and c.get("upsampler")}

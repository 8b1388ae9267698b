"""``fidelity``: multi-view fidelity, TV, CRF and MMD of an upsampled teacher.

The multi-view machinery (jittered views, attention downsampler) lives in
``radiosharp.multiview``; this task calls ``radiosharp.multiview.fidelity_eval(
up_teacher, images, **options)`` — which must return a mapping with any of
``fidelity``, ``tv``, ``crf``, ``mmd`` — on ``num_images`` images of ``data``, and skips
with a reason when the featurizer is not an upsampled teacher or that function does
not exist yet.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from radiosharp.eval.features import make_eval_loader
from radiosharp.eval.task import EvalContext, EvalTask, TaskSkipped, over_seeds
from radiosharp.registry import TASKS

DIRECTIONS = {"fidelity": True, "tv": False, "crf": False, "mmd": False}


class FidelityTask(EvalTask):
    name = "fidelity"
    metrics = DIRECTIONS

    def __init__(self, data: dict[str, Any] | None, num_images: int, seeds: int, options: dict[str, Any]) -> None:
        self.data, self.num_images, self.seeds, self.options = data, num_images, seeds, options

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        up = ctx.featurizer
        if getattr(up, "upsampler", None) is None or getattr(up, "teacher", None) is None:
            raise TaskSkipped("fidelity: the featurizer is not an upsampled teacher (run kind "
                              f"'{ctx.run_kind}')")
        try:
            from radiosharp.multiview import fidelity_eval
        except ImportError:
            raise TaskSkipped("fidelity: radiosharp.multiview.fidelity_eval is not available") from None
        data = self.data or ctx.default_val_data or ctx.default_data
        images = _first_images(ctx.features.dataset(data), self.num_images)
        accepts = inspect.signature(fidelity_eval).parameters

        def one_seed(seed: int) -> dict[str, float]:
            kwargs = dict(self.options)
            if "generator" in accepts:
                kwargs["generator"] = torch.Generator().manual_seed(seed)
            elif "seed" in accepts:
                kwargs["seed"] = seed
            with torch.no_grad():
                out = fidelity_eval(up, images.to(ctx.device), **kwargs)
            return {k: float(v) for k, v in out.items() if k in DIRECTIONS}

        return over_seeds(self.seeds, one_seed)


def _first_images(dataset: Any, n: int) -> torch.Tensor:
    images, count = [], 0
    for batch in make_eval_loader(dataset, min(n, 16)):
        if batch:
            images.append(batch["image"].float())
            count += len(images[-1])
        if count >= n:
            break
    if not images:
        raise TaskSkipped("fidelity: the data yielded no images")
    return torch.cat(images)[:n]


@TASKS.register("fidelity")
def build_fidelity(data: dict[str, Any] | None = None, num_images: int = 16, seeds: int = 3,
                   options: dict[str, Any] | None = None) -> FidelityTask:
    """Upsampler quality on ``num_images`` held-out images; ``options`` go to ``fidelity_eval``."""
    return FidelityTask(data, num_images, seeds, dict(options or {}))

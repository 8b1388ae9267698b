"""``fidelity``: multi-view fidelity, TV, CRF and MMD of an upsampled teacher.

The multi-view machinery (jittered views, attention downsampler) lives in
``radiosharp.multiview``; this task calls ``radiosharp.multiview.fidelity_eval(
up_teacher, images, **options)`` — which must return a mapping with any of
``fidelity``, ``tv``, ``crf``, ``mmd`` — on ``num_images`` images of ``data``, with views
seeded per seed, and skips with a reason when the featurizer is not an upsampled
teacher or the data gives no images.
"""

from __future__ import annotations

from typing import Any

import torch

from radiosharp import multiview
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
            raise TaskSkipped(f"fidelity: the featurizer is not an upsampled teacher (run kind '{ctx.run_kind}')")
        data = self.data or ctx.default_val_data or ctx.default_data
        try:
            images = multiview.first_images(ctx.features.dataset(data), self.num_images)
        except multiview.NoImagesError:
            raise TaskSkipped("fidelity: the data yielded no images") from None

        def one_seed(seed: int) -> dict[str, float]:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                out = multiview.fidelity_eval(up, images.to(ctx.device), generator=generator, **self.options)
            return {k: float(v) for k, v in out.items() if k in DIRECTIONS}

        return over_seeds(self.seeds, one_seed)


@TASKS.register("fidelity")
def build_fidelity(
    data: dict[str, Any] | None = None, num_images: int = 16, seeds: int = 3, options: dict[str, Any] | None = None
) -> FidelityTask:
    """Upsampler quality on ``num_images`` held-out images; ``options`` go to ``fidelity_eval``."""
    return FidelityTask(data, num_images, seeds, dict(options or {}))

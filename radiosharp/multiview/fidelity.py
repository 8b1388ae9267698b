"""Upsampler quality from multi-view passes: fidelity, TV, CRF and MMD.

:func:`quality_metrics` scores one :func:`~radiosharp.multiview.loss.consistency_step`;
:func:`fidelity_eval` scores an upsampled teacher on held-out images with seeded views
(what ``radiosharp.eval``'s ``fidelity`` task and the upsampler run's ``heldout.json``
report).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from radiosharp.images import resize
from radiosharp.multiview.loss import consistency_step
from radiosharp.multiview.views import ViewConfig

__all__ = ["fidelity_eval", "quality_metrics"]

log = logging.getLogger(__name__)


def _sample_tokens(x: torch.Tensor, limit: int = 1024, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` seeded random ``[C]`` tokens of an NCHW map (MMD is quadratic in them)."""
    tokens = x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1]).float()
    if len(tokens) > limit:
        g = torch.Generator(device="cpu").manual_seed(seed)
        tokens = tokens[torch.randperm(len(tokens), generator=g)[:limit].to(tokens.device)]
    return tokens


@torch.no_grad()
def quality_metrics(extra: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fidelity, TV, CRF and MMD (low-res vs hi-res tokens) of one :func:`consistency_step`."""
    from radiosharp.eval import metrics as M

    return {
        "fidelity": float(M.fidelity(extra["target"], extra["pred"], extra["mask"])),
        "tv": float(M.total_variation(extra["hires"].float())),
        "crf": float(M.crf_loss(extra["hires"].float(), extra["base"])),
        "mmd": float(M.mmd_rbf(_sample_tokens(extra["lowres"]), _sample_tokens(extra["hires"]))),
    }


@torch.no_grad()
def fidelity_eval(
    up: Any,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    views: ViewConfig | Mapping[str, Any] | None = None,
    downsampler: Callable[..., torch.Tensor] | None = None,
    batch_size: int = 4,
) -> dict[str, float]:
    """Multi-view metrics of an upsampled teacher over ``images`` [N,3,H,W].

    ``fidelity`` is pooled over all images (one ratio of sums, not a mean of ratios);
    ``loss``, ``tv``, ``crf`` and ``mmd`` are image-weighted means of the per-batch
    values. ``generator`` seeds the views, so upsamplers scored with the same seed see
    the same views. ``downsampler``: the run's trained attention downsampler (called
    as ``downsampler(features, grid)``); by default a fixed antialiased bilinear
    resize, the same for every upsampler. The model is put in eval mode for the call.
    """
    from radiosharp.eval import metrics as M

    cfg = views if isinstance(views, ViewConfig) else ViewConfig.model_validate(dict(views or {}))
    down = downsampler if downsampler is not None else resize
    modules = [m for m in (up, downsampler) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    n = len(images)
    if n == 0:
        raise ValueError("fidelity_eval: no images")
    log.debug("fidelity_eval: %d images, %d views each, batches of %d", n, cfg.num_views, batch_size)
    sums: dict[str, float] = {}
    preds, targets, masks = [], [], []
    try:
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size]
            loss, extra = consistency_step(up, batch, cfg, down, generator)
            weight = len(batch) / n
            for key, value in {"loss": float(loss), **quality_metrics(extra)}.items():
                if key != "fidelity":
                    sums[key] = sums.get(key, 0.0) + weight * value
            preds.append(extra["pred"].float().cpu())
            targets.append(extra["target"].float().cpu())
            masks.append(extra["mask"].cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    sums["fidelity"] = float(M.fidelity(torch.cat(targets), torch.cat(preds), torch.cat(masks)))
    return sums

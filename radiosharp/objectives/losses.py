"""Regression terms every upsampler objective is built from: masked MSE and masked cosine.

``pred`` and ``target`` are ``[N,C,h,w]`` feature maps (in the teacher's PHI-S space during
training); ``mask`` ``[N,1,h,w]`` is 1 on the cells that count. Both terms are means over
the counted cells, so their weights (``mse``, ``cosine`` in a recipe's ``objective``) mean
the same thing whatever the map size.
"""

from __future__ import annotations

import torch

__all__ = ["masked_cosine", "masked_mse", "regression_loss"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over channels and valid cells of (pred - target)^2."""
    err = (pred - target).pow(2).mean(1, keepdim=True)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def masked_cosine(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid cells of ``1 - cos(pred, target)`` (cosine over channels)."""
    err = 1 - torch.nn.functional.cosine_similarity(pred, target, dim=1, eps=1e-6).unsqueeze(1)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, mse: float = 1.0, cosine: float = 0.0
) -> torch.Tensor:
    """``mse * masked_mse + cosine * masked_cosine`` (a term with weight 0 is not computed)."""
    if mask is None:
        mask = torch.ones_like(pred[:, :1])
    loss = pred.new_zeros(()).float()
    if mse:
        loss = loss + mse * masked_mse(pred.float(), target.float(), mask)
    if cosine:
        loss = loss + cosine * masked_cosine(pred.float(), target.float(), mask)
    return loss

"""Metric functions shared by the eval probes and the upsampler training loop.

Upsampler quality (FeatSharp appendix B, all on NCHW feature tensors):

- ``fidelity(target, prediction)``: multi-view fidelity, ``MSE(Y, mean Y) / MSE(X, Y)``
  with Y the teacher's own features of a view and X the upsampled-warped-downsampled
  prediction. It reads as "how many times smaller the error is than the target's
  spread": 1 means no better than predicting the per-channel mean, higher is better.
- ``total_variation(x)``: mean squared difference between neighbouring cells (FeatUp's
  normalisation: summed over both directions, divided by B*C*H*W). Lower is smoother.
- ``crf_loss(features, image)``: a sampled dense-CRF energy: random pixel pairs weigh
  their feature difference by how alike they look (colour) and how close they are, so
  features that change where the image does not are penalised. Lower is better.
- ``mmd_rbf(x, y)``: unbiased squared maximum mean discrepancy with an RBF kernel whose
  width is the median heuristic; x = low-res tokens, y = hi-res tokens (the counts may
  differ). ~0 when both are samples of one distribution.

Probe metrics: ``top1_accuracy``, ``confusion_matrix`` / ``mean_iou``,
``small_segment_pixels`` (what "small objects" means, see there), ``depth_errors`` and
``normal_errors`` (angular error of surface normals, Probe3D's metrics).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- upsampler quality


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """[N,C,...] -> [N*..., C]; [N] -> [N,1]."""
    if x.ndim == 1:
        return x.reshape(-1, 1)
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def fidelity(target: torch.Tensor, prediction: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-view fidelity ``MSE(Y, mean Y) / MSE(X, Y)`` with Y = ``target``, X = ``prediction``.

    Both are ``[N,C,H,W]`` (or ``[N,C]``; dim 1 is the channel); ``mean Y`` is the
    per-channel mean over every other dimension. ``mask`` ([N,1,H,W] or broadcastable
    to the target, 1 = valid) restricts both averages to valid cells (warped views have
    empty borders). Returns a 0-d tensor; ``inf`` when the prediction is exact.
    """
    if target.shape != prediction.shape:
        raise ValueError(
            f"fidelity: target {tuple(target.shape)} and prediction {tuple(prediction.shape)} must have the same shape"
        )
    y, x = _channels_last(target.double()), _channels_last(prediction.double())
    if mask is None:
        w = torch.ones_like(y)
    else:
        w = _channels_last(mask.to(target.device).double().expand_as(target))
    count = w.sum(0, keepdim=True).clamp_min(1e-12)
    mean_y = (y * w).sum(0, keepdim=True) / count
    spread = ((y - mean_y).pow(2) * w).sum() / w.sum().clamp_min(1e-12)
    error = ((x - y).pow(2) * w).sum() / w.sum().clamp_min(1e-12)
    if error == 0:
        return torch.tensor(math.inf, dtype=target.dtype)
    return (spread / error).to(target.dtype)


def total_variation(features: torch.Tensor) -> torch.Tensor:
    """Mean squared neighbour difference of ``[B,C,H,W]`` features (0 for a constant map)."""
    if features.ndim != 4:
        raise ValueError(f"total_variation: expected [B,C,H,W], got {tuple(features.shape)}")
    dy = (features[:, :, 1:, :] - features[:, :, :-1, :]).pow(2).sum()
    dx = (features[:, :, :, 1:] - features[:, :, :, :-1]).pow(2).sum()
    return (dy + dx) / features.numel()


def crf_loss(
    features: torch.Tensor,
    image: torch.Tensor,
    num_pairs: int = 1000,
    pos_sigma: float = 0.1,
    color_sigma: float = 0.15,
    smooth_sigma: float = 0.005,
    appearance_weight: float = 10.0,
    smoothness_weight: float = 3.0,
    seed: int = 0,
) -> torch.Tensor:
    """Sampled dense-CRF energy of ``features`` [B,C,H,W] under the guidance ``image`` [B,3,H',W'].

    For ``num_pairs`` random pixel pairs (i, j) per image (seeded, so the metric is
    repeatable), the pairwise weight is the dense-CRF kernel
    ``w_a * exp(-|p_i-p_j|^2 / 2 s_pos^2 - |I_i-I_j|^2 / 2 s_col^2) + w_s * exp(-|p_i-p_j|^2 / 2 s_sm^2)``
    with positions in [0,1] and RGB in [0,1] (defaults: FeatUp's CRF settings); the
    energy is the mean of weight * (channel-mean squared feature difference). The image
    is resized to the feature grid first.
    """
    if features.ndim != 4 or image.ndim != 4:
        raise ValueError(
            f"crf_loss: expected features [B,C,H,W] and image [B,3,H,W], got "
            f"{tuple(features.shape)} and {tuple(image.shape)}"
        )
    B, _, H, W = features.shape
    guide = F.interpolate(
        image.to(features.dtype), size=(H, W), mode="bilinear", align_corners=False, antialias=image.shape[-1] > W
    )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, H * W, (2, B, num_pairs), generator=gen).to(features.device)
    ys = (torch.arange(H * W, device=features.device) // W).to(features.dtype) / max(H, W)
    xs = (torch.arange(H * W, device=features.device) % W).to(features.dtype) / max(H, W)
    f = features.flatten(2)  # [B,C,HW]
    g = guide.flatten(2)

    def pick(t: torch.Tensor, which: int) -> torch.Tensor:
        return torch.gather(t, 2, idx[which][:, None, :].expand(-1, t.shape[1], -1))

    dpos = (ys[idx[0]] - ys[idx[1]]).pow(2) + (xs[idx[0]] - xs[idx[1]]).pow(2)  # [B,P]
    dcol = (pick(g, 0) - pick(g, 1)).pow(2).sum(1)
    kernel = appearance_weight * torch.exp(
        -dpos / (2 * pos_sigma**2) - dcol / (2 * color_sigma**2)
    ) + smoothness_weight * torch.exp(-dpos / (2 * smooth_sigma**2))
    dfeat = (pick(f, 0) - pick(f, 1)).pow(2).mean(1)
    return (kernel * dfeat).mean()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """Unbiased squared MMD (Gretton et al. 2012, eq. 3) between samples ``x`` [m,D] and ``y`` [n,D].

    NCHW maps are taken as sets of ``[C]`` tokens. Kernel ``k(a,b) = exp(-|a-b|^2 / gamma)``
    with ``gamma`` = the median squared distance between distinct x samples (the
    median heuristic, as in FeatSharp appendix B.2) unless given. Cost is O((m+n)^2):
    subsample large maps first. Can be slightly negative (unbiased estimator).
    """
    x, y = _channels_last(x).double(), _channels_last(y).double()
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd_rbf: need >= 2 samples of equal width, got {tuple(x.shape)} and {tuple(y.shape)}")
    dxx, dyy, dxy = torch.cdist(x, x).pow(2), torch.cdist(y, y).pow(2), torch.cdist(x, y).pow(2)
    if gamma is None:
        off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        gamma = float(dxx[off].median())
        if gamma <= 0:
            pooled = torch.cat([dxx[off], dyy.flatten(), dxy.flatten()])
            gamma = float(pooled.max()) or 1.0
    m, n = len(x), len(y)
    kxx, kyy, kxy = torch.exp(-dxx / gamma), torch.exp(-dyy / gamma), torch.exp(-dxy / gamma)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return (term_x + term_y - 2 * kxy.mean()).float()


# ----------------------------------------------------------------------------- probe metrics


def top1_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions`` equal to ``labels``."""
    if len(labels) == 0:
        raise ValueError("top1_accuracy: no samples")
    return float((predictions.view(-1) == labels.view(-1)).double().mean())


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[K,K]`` counts (rows = ground truth, columns = prediction) over non-ignored pixels.

    ``where`` (bool, same shape) restricts the count to a pixel subset.
    """
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    if where is not None:
        valid &= where
    t, p = target[valid].long(), pred[valid].long().clamp(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU over classes with a non-empty union, per-class IoU with NaN for empty ones)."""
    conf = confusion.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    return (float(iou[present].mean()) if present.any() else float("nan")), iou


def small_segment_pixels(
    mask: torch.Tensor, max_area: float = 0.01, ignore_index: int = 255, connectivity: int = 2
) -> torch.Tensor:
    """Pixels of small ground-truth segments: bool ``[...,H,W]`` like ``mask``.

    A segment is one connected component (8-connectivity by default) of one class in
    one image's mask; it is *small* when its area is below ``max_area`` of the image
    (default 1 %). "mIoU (small)" is the per-class IoU computed only over these pixels:
    a pixel of a small segment counts as a true positive, a miss of its class, or a
    false positive of the predicted class. Ignored pixels are never small.
    """
    from skimage.measure import label as connected_components

    arr = mask.cpu().numpy()
    flat = arr.reshape(-1, *arr.shape[-2:])
    out = np.zeros(flat.shape, dtype=bool)
    limit = max_area * flat.shape[-1] * flat.shape[-2]
    for i, m in enumerate(flat):
        # one labelling per image: neighbours join only when they hold the same class, so each
        # component is one segment of one class; ignored pixels are the background (label 0)
        comps, count = connected_components(m, background=ignore_index, return_num=True, connectivity=connectivity)
        if count == 0:
            continue
        areas = np.bincount(comps.ravel(), minlength=count + 1)
        small = np.flatnonzero(areas < limit)
        small = small[small > 0]
        if len(small):
            out[i] = np.isin(comps, small)
    return torch.from_numpy(out.reshape(arr.shape)).to(mask.device)


def depth_errors(pred: torch.Tensor, target: torch.Tensor, min_depth: float = 1e-3) -> dict[str, float]:
    """The Probe3D / Eigen depth metrics over valid pixels: ``rmse`` and ``absrel``
    (mean ``|p - g| / g``), lower is better; ``delta1`` / ``delta2`` / ``delta3``, the fractions
    with ``max(p/g, g/p) < 1.25 ** k``, higher is better.

    Valid = finite ground truth above ``min_depth``; predictions are clamped to
    ``min_depth`` so the ratio is defined.
    """
    valid = torch.isfinite(target) & (target > min_depth)
    if not valid.any():
        raise ValueError("depth_errors: no valid ground-truth depth pixels")
    p, g = pred[valid].double().clamp_min(min_depth), target[valid].double()
    ratio = torch.maximum(p / g, g / p)
    return {
        "rmse": float((p - g).pow(2).mean().sqrt()),
        "absrel": float(((p - g).abs() / g).mean()),
        **{f"delta{k}": float((ratio < 1.25**k).double().mean()) for k in (1, 2, 3)},
    }


NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


def angular_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Angle in degrees between ``pred`` and ``target`` normals ``[N,3,H,W]`` at the valid pixels (a flat vector).

    Both are normalised to unit length first (a zero prediction is 90 degrees from everything);
    ``valid`` ([N,H,W] bool) keeps pixels whose target is a finite, non-zero vector as well.
    """
    if pred.shape != target.shape or pred.ndim < 2 or pred.shape[1] != 3:
        raise ValueError(
            f"angular_errors: expected two [N,3,...] normal maps, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    p, t = pred.double(), target.double()
    ok = torch.isfinite(t).all(1) & (t.norm(dim=1) > 0) & torch.isfinite(p).all(1)
    if valid is not None:
        ok &= valid.to(ok.device).bool()
    cos = (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum(1)[ok]
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def normal_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """Surface-normal metrics over the valid pixels (see ``angular_errors``), as Probe3D reports them.

    ``angular_rmse`` = sqrt(mean of squared angles) and ``angular_mean`` (degrees, lower is
    better); ``within_11_25`` / ``within_22_5`` / ``within_30`` = percent (0..100) of pixels whose
    angle is below 11.25 / 22.5 / 30 degrees (higher is better).
    """
    angles = angular_errors(pred, target, valid)
    if angles.numel() == 0:
        raise ValueError("normal_errors: no valid ground-truth normal pixels")
    out = {"angular_rmse": float(angles.pow(2).mean().sqrt()), "angular_mean": float(angles.mean())}
    for limit in NORMAL_THRESHOLDS:
        out[f"within_{limit:g}".replace(".", "_")] = float(100 * (angles < limit).double().mean())
    return out


PCK_ALPHAS = (0.05, 0.1, 0.15)


def pck(
    pred: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor | float,
    alphas: tuple[float, ...] = PCK_ALPHAS,
    groups: torch.Tensor | None = None,
) -> dict[str, float]:
    """Percentage of correct keypoints: ``pck@<alpha>`` = fraction (0..1) of keypoints whose predicted
    point lies within ``alpha * scale`` of the ground truth (Euclidean, ``<=`` counts as correct).

    ``pred`` / ``target`` are ``[K,2]`` points (any one pixel convention, the same for both);
    ``scale`` the per-keypoint length ``[K]`` (or one number) that alpha multiplies: SPair's
    ``max(h, w)`` of the target object's box, or the image side. Without ``groups`` every
    keypoint counts once (SPair / DIFT "per point" PCK); with ``groups`` ([K] ids, e.g. the
    pair of each keypoint) the PCK of each group is averaged ("per image" PCK).
    """
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[-1] != 2:
        raise ValueError(f"pck: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [K,2]")
    if pred.shape[0] == 0:
        raise ValueError("pck: no keypoints")
    dist = (pred.double() - target.double()).norm(dim=1)
    limit = torch.as_tensor(scale, dtype=torch.float64, device=dist.device).expand_as(dist)
    out = {}
    for alpha in alphas:
        hit = (dist <= alpha * limit).double()
        if groups is None:
            value = hit.mean()
        else:
            _, inverse = torch.unique(groups.to(dist.device), return_inverse=True)
            count = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64, device=dist.device)
            per = count.clone().index_add_(0, inverse, hit) / count.index_add_(0, inverse, torch.ones_like(hit))
            value = per.mean()
        out[f"pck@{alpha:g}"] = float(value)
    return out

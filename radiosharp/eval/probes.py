"""Probes on frozen, cached features: weighted k-NN and linear dense probes.

Everything here works on tensors (no featurizer, no data source), so the tests can
feed features with a known answer.

Linear dense probes standardise each feature channel with the training set's mean and
std (so one learning rate suits every featurizer), apply a 1x1 convolution, upsample
the output bilinearly to the target resolution and train with AdamW on random
minibatches of cached images, seeded (init and batch order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def knn_predict(
    train_vectors: torch.Tensor,
    train_labels: torch.Tensor,
    query_vectors: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN labels for ``query_vectors`` (DINO's kNN eval).

    Vectors are L2-normalised; the k most cosine-similar training vectors vote for
    their label with weight ``exp(similarity / temperature)``; the class with the
    largest summed weight wins.
    """
    if len(train_vectors) == 0:
        raise ValueError("knn_predict: no training vectors")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_vectors))
    train = F.normalize(train_vectors.float(), dim=1)
    labels = train_labels.long()
    out = []
    for start in range(0, len(query_vectors), chunk):
        query = F.normalize(query_vectors[start : start + chunk].float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(query), num_classes).scatter_add_(1, labels[idx], weights)
        out.append(votes.argmax(1))
    return torch.cat(out)


class DenseLinearProbe(nn.Module):
    """Standardise channels, 1x1 conv, bilinear upsample to the target size."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, out_channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1).float())
        self.register_buffer("std", std.view(1, -1, 1, 1).float().clamp_min(1e-6))
        self.head = nn.Conv2d(len(mean), out_channels, 1)

    def lowres(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features.float() - self.mean) / self.std)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.lowres(features)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def at_pixels(self, features: torch.Tensor, size: tuple[int, int], pixels: torch.Tensor) -> torch.Tensor:
        """``forward(features, size)`` read at integer ``pixels`` [b,P,2] (row, col) only: [b,out,1,P].

        Equal to the full upsampled map at those pixels (``grid_sample`` at pixel centres,
        border clamping = ``F.interpolate``'s edge rule), at a fraction of the cost.
        """
        H, W = size
        gy = (pixels[..., 0].float() + 0.5) / H * 2 - 1
        gx = (pixels[..., 1].float() + 0.5) / W * 2 - 1
        grid = torch.stack([gx, gy], -1)[:, None]  # [b,1,P,2]
        return F.grid_sample(self.lowres(features), grid, mode="bilinear", padding_mode="border", align_corners=False)


def channel_stats(features: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over images and positions of ``[N,D,h,w]`` (float64 sums)."""
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(features), chunk):
        x = features[start : start + chunk].double()
        total += x.sum((0, 2, 3))
        squares += x.pow(2).sum((0, 2, 3))
    count = features.numel() / features.shape[1]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float(), std.float()


def _fits_on(device: str | torch.device, *tensors: torch.Tensor) -> bool:
    """Whether ``tensors`` fit in half the free memory of a CUDA ``device`` (False for the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < free // 2


def fit_dense_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    out_channels: int,
    loss_fn,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    pixels_per_image: int | None = 1024,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DenseLinearProbe:
    """Train a ``DenseLinearProbe`` on ``features`` [N,D,h,w] against ``targets`` [N,S,S].

    ``loss_fn(output [b,out,...], targets [b,...]) -> scalar``. Each step draws
    ``batch_size`` images and, when the target has more pixels than
    ``pixels_per_image``, that many random pixels of each: the loss is then an unbiased
    estimate of the full-resolution loss at a fraction of the cost (the upsampled
    output is read only where it is scored). Seeded: the same seed gives the same probe.
    ``stats``: ``channel_stats(features)`` when the caller has them (``FeatureSet.dense_stats``),
    so seeds and tasks on the same features compute them once.
    """
    if len(features) != len(targets):
        raise ValueError(f"fit_dense_probe: {len(features)} feature maps but {len(targets)} targets")
    gen = torch.Generator().manual_seed(seed)
    mean, std = stats if stats is not None else channel_stats(features)
    probe = DenseLinearProbe(mean, std, out_channels)
    with torch.no_grad():
        probe.head.weight.copy_(torch.randn(probe.head.weight.shape, generator=gen) * 0.01)
        probe.head.bias.zero_()
    probe.to(device)
    if _fits_on(device, features, targets):  # one copy to the GPU instead of one per step
        features, targets = features.to(device), targets.to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    size = tuple(targets.shape[-2:])
    batch_size = min(batch_size, len(features))
    sample = pixels_per_image is not None and pixels_per_image < size[0] * size[1]
    for _ in range(steps):
        # random draws stay on the CPU generator, so a seed gives the same probe on any device
        idx = torch.randperm(len(features), generator=gen)[:batch_size]
        x = features[idx.to(features.device)].to(device)
        y = targets[idx.to(targets.device)]
        if sample:
            flat = torch.randint(0, size[0] * size[1], (len(idx), pixels_per_image), generator=gen)
            pixels = torch.stack([flat // size[1], flat % size[1]], -1)
            y = y.flatten(1).gather(1, flat.to(y.device))[:, None].to(device)  # [b,1,P]
            out = probe.at_pixels(x, size, pixels.to(device))
        else:
            y, out = y.to(device), probe(x, size)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


@torch.no_grad()
def predict_dense(
    probe: DenseLinearProbe,
    features: torch.Tensor,
    size: tuple[int, int],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Probe outputs ``[N,out,S,S]`` for cached features, in batches, gathered on the CPU.

    ``reduce`` maps each batch's outputs first (e.g. logits to classes), so the full
    outputs of the whole set (``N x classes x S x S``) never pile up.
    """
    outs = []
    for start in range(0, len(features), batch_size):
        out = probe(features[start : start + batch_size].to(device), size)
        outs.append((out if reduce is None else reduce(out)).cpu())
    return torch.cat(outs)


def fit_segmentation_probe(
    features: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int = 255, **kwargs
) -> DenseLinearProbe:
    """Linear segmentation probe: cross-entropy at the mask resolution, ``ignore_index`` ignored."""

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)

    return fit_dense_probe(features, masks, num_classes, loss_fn, **kwargs)


def predict_segmentation(
    probe: DenseLinearProbe, features: torch.Tensor, size: tuple[int, int], **kwargs
) -> torch.Tensor:
    """Class per pixel ``[N,S,S]`` (argmax of the upsampled logits); ``kwargs`` as :func:`predict_dense`'s."""
    return predict_dense(probe, features, size, reduce=lambda logits: logits.argmax(1), **kwargs)


class DepthProbe(nn.Module):
    """A dense linear probe predicting standardised depth, mapped back to metres (or units)."""

    def __init__(self, probe: DenseLinearProbe, depth_mean: float, depth_std: float, min_depth: float) -> None:
        super().__init__()
        self.probe, self.depth_mean, self.depth_std, self.min_depth = probe, depth_mean, depth_std, min_depth

    @torch.no_grad()
    def predict(
        self, features: torch.Tensor, size: tuple[int, int], batch_size: int = 16, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        out = predict_dense(self.probe, features, size, batch_size, device, reduce=lambda o: o[:, 0])
        return (out * self.depth_std + self.depth_mean).clamp_min(self.min_depth)


def fit_depth_probe(features: torch.Tensor, depth: torch.Tensor, min_depth: float = 1e-3, **kwargs) -> DepthProbe:
    """Linear depth probe: MSE on depth standardised by the training set, valid pixels only.

    Valid = finite depth above ``min_depth``; predictions are mapped back and clamped
    to ``min_depth`` so ratio metrics are defined.
    """
    valid = torch.isfinite(depth) & (depth > min_depth)
    if not valid.any():
        raise ValueError("fit_depth_probe: no valid depth pixels")
    mean, std = float(depth[valid].mean()), float(depth[valid].std().clamp_min(1e-6))

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(target) & (target > min_depth)
        t = (torch.nan_to_num(target) - mean) / std
        err = (out[:, 0] - t).pow(2)
        return (err * ok).sum() / ok.sum().clamp_min(1)

    probe = fit_dense_probe(features, depth, 1, loss_fn, **kwargs)
    return DepthProbe(probe, mean, std, min_depth)


def bin_centres(depth: torch.Tensor, bins: int, min_depth: float) -> torch.Tensor:
    """``bins`` depth values spaced evenly between the smallest and largest valid depth of ``depth``."""
    valid = depth[torch.isfinite(depth) & (depth > min_depth)]
    if valid.numel() == 0:
        raise ValueError("bin_centres: no valid depth pixels")
    lo, hi = float(valid.min()), float(valid.max())
    if hi - lo < 1e-6:
        hi = lo + 1e-3
    return torch.linspace(lo, hi, bins, dtype=torch.float32)


def expected_depth(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``sum_k softmax(logits)_k * centre_k`` over the channel axis: ``[b,K,...] -> [b,...]``."""
    shape = (1, -1) + (1,) * (logits.ndim - 2)
    return (logits.softmax(1) * centres.to(logits.device).view(shape)).sum(1)


def silog_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, variance_focus: float = 0.85
) -> torch.Tensor:
    """The scale-invariant log loss of Eigen et al. 2014 as BTS / Probe3D use it:
    ``sqrt(mean(d^2) - variance_focus * mean(d)^2)``, ``d = log p - log g`` on valid pixels."""
    count = valid.sum().clamp_min(1)
    d = (torch.log(pred.clamp_min(1e-6)) - torch.log(torch.nan_to_num(target, nan=1.0).clamp_min(1e-6))) * valid
    mean_sq, mean = d.pow(2).sum() / count, d.sum() / count
    return (mean_sq - variance_focus * mean.pow(2)).clamp_min(1e-12).sqrt()


class BinnedDepthProbe(nn.Module):
    """Probe3D's depth head: a dense linear probe to ``K`` depth-bin logits; the depth is the
    softmax-weighted mean of the bin centres (AdaBins-style, with fixed bins)."""

    def __init__(self, probe: DenseLinearProbe, centres: torch.Tensor, min_depth: float) -> None:
        super().__init__()
        self.probe, self.min_depth = probe, min_depth
        self.register_buffer("centres", centres)

    @torch.no_grad()
    def predict(
        self, features: torch.Tensor, size: tuple[int, int], batch_size: int = 16, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        out = predict_dense(
            self.probe, features, size, batch_size, device, reduce=lambda o: expected_depth(o, self.centres)
        )
        return out.clamp_min(self.min_depth)


def fit_binned_depth_probe(
    features: torch.Tensor, depth: torch.Tensor, min_depth: float = 1e-3, bins: int = 256, **kwargs
) -> BinnedDepthProbe:
    """Binned depth probe (Probe3D): ``bins`` fixed bins spanning the training depths, trained
    with the scale-invariant log loss on the expected depth, valid pixels only."""
    if bins < 2:
        raise ValueError(f"fit_binned_depth_probe: bins must be >= 2, got {bins}")
    centres = bin_centres(depth, bins, min_depth)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(target) & (target > min_depth)
        return silog_loss(expected_depth(out, centres), target, ok)

    probe = fit_dense_probe(features, depth, bins, loss_fn, **kwargs)
    return BinnedDepthProbe(probe, centres, min_depth)

"""``featup``: FeatUp's joint bilateral upsampler (JBU), one stage per prime factor.

One stage lifts features ``[B,C,h,w]`` to ``[B,C,f*h,f*w]``: the features are
bilinearly upsampled to the output grid, then each output pixel ``i`` takes a
weighted mean of the upsampled features over a ``k x k`` window, with weights

    range:   softmax_j( h(G_i) . h(G_j) / sigma_range^2 )   h = per-pixel MLP on RGB
    spatial: exp( -|i - j|^2 / (2 sigma_spatial^2) )       offsets scaled to [-1, 1]
    weight = range * spatial, renormalized over the window

where ``G`` is the image area-pooled to the output grid. ``1/sigma_range^2`` and
``sigma_spatial`` are learned. A stack runs one stage per prime factor of ``u`` in
descending order (14 -> 7x then 2x; 4 -> 2x, 2x; 1 -> identity), as FeatSharp does.

Defaults follow FeatUp / NVlabs FeatSharp: radius 3 (a 7x7 window), key_dim 32,
``h`` = conv1x1(3->32), GELU, conv1x1(32->32), temperature ``exp(t)`` with ``t = 0``
(so sigma_range = 1) clamped to [1e-4, 1e4], ``sigma_spatial = 1``. Departures,
on purpose: out-of-image window taps are masked (FeatUp reflect-pads), which keeps
the filter exact and valid for maps smaller than the window; FeatUp's extra
"fixup" MLP on the kernel and final 1x1 residual are left out (FeatSharp's JBU
drops them too); guidance is ImageNet-standardized RGB. The filter runs on the
memory-lean kernel of ``upsamplers._kernels`` (its gradient reaches all k*k taps,
unlike FeatUp's CUDA kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler, prime_factors
from upsamplers._kernels import neighborhood_attention, window_offsets


def joint_bilateral_filter(
    features: Tensor, range_queries: Tensor, range_keys: Tensor, spatial_logits: Tensor, kernel_size: int
) -> Tensor:
    """``out_i = sum_j softmax_j(q_i . k_j + spatial_j) f_j`` over a ``k x k`` window.

    features ``[B,C,H,W]`` (already on the output grid); range queries/keys
    ``[B,D,H,W]`` (queries carry the ``1/sigma_range^2`` factor); spatial_logits
    ``[1, k*k]`` = log of the spatial kernel. Equal to "range softmax times spatial
    kernel, renormalized" because the range softmax's normalizer cancels.
    """
    out = neighborhood_attention(
        range_queries.unsqueeze(1), range_keys.unsqueeze(1), features.unsqueeze(1), kernel_size, bias=spatial_logits
    )
    return out.squeeze(1)


class JointBilateralUpsampler(nn.Module):
    """One JBU stage with an integer factor ``f`` (see the module docstring)."""

    def __init__(self, factor: int, kernel_size: int = 7, key_dim: int = 32, guidance_dim: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"JBU kernel_size must be odd (e.g. 3, 5, 7), got {kernel_size}")
        self.factor = factor
        self.kernel_size = kernel_size
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Conv2d(key_dim, key_dim, 1))
        # Shape [1], not []: DeepSpeed cannot broadcast 0-dim bf16 parameters.
        self.log_range_temperature = nn.Parameter(torch.zeros(1))  # log(1 / sigma_range^2)
        self.sigma_spatial = nn.Parameter(torch.ones(1))
        self.radius = max(kernel_size // 2, 1)
        dist_sq = torch.tensor([float(dy * dy + dx * dx) for dy, dx in window_offsets(kernel_size)])
        self.register_buffer("offset_dist_sq", dist_sq.view(1, -1), persistent=False)  # exact integers
        self.register_buffer("guidance_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("guidance_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name in ("log_range_temperature", "sigma_spatial"):  # exports before 0.2 stored them 0-dim
            value = state_dict.get(prefix + name)
            if value is not None and value.dim() == 0:
                state_dict[prefix + name] = value.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def range_temperature(self) -> Tensor:
        """``1 / sigma_range^2`` (clamped as FeatUp does)."""
        return self.log_range_temperature.exp().clamp(1e-4, 1e4)

    def spatial_logits(self) -> Tensor:
        """``[1, k*k]`` log of the spatial Gaussian: ``-|offset|^2 / (2 sigma_spatial^2)``."""
        return -(self.offset_dist_sq / self.radius**2) / (2 * self.sigma_spatial**2)

    def guidance(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """The image area-pooled to the output grid, standardized; ``[B,3,H,W]``."""
        pooled = F.adaptive_avg_pool2d(images, size)
        guidance = (pooled - self.guidance_mean.to(pooled.dtype)) / self.guidance_std.to(pooled.dtype)
        return guidance.to(self.log_range_temperature.dtype)  # the weights' dtype (bf16 after .to(bf16))

    def forward(self, features: Tensor, images: Tensor) -> Tensor:
        size = (features.shape[-2] * self.factor, features.shape[-1] * self.factor)
        keys = self.range_proj(self.guidance(images, size))
        upsampled = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return joint_bilateral_filter(
            upsampled, keys * self.range_temperature, keys, self.spatial_logits(), self.kernel_size
        )

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel_size={self.kernel_size}"


class JBUStack(nn.Module):
    """One :class:`JointBilateralUpsampler` per prime factor of ``factor``, largest first."""

    def __init__(self, factor: int, kernel_size: int = 7, key_dim: int = 32) -> None:
        super().__init__()
        self.factor = factor
        self.stages = nn.ModuleList(JointBilateralUpsampler(f, kernel_size, key_dim) for f in prime_factors(factor))

    def forward(self, features: Tensor, images: Tensor) -> Tensor:
        for stage in self.stages:
            features = stage(features, images)
        return features


class FeatUpUpsampler(Upsampler):
    """The JBU stack behind the upsampler interface (the ``featup`` registry entry)."""

    trainable = True

    def __init__(self, factor: int, dim: int, patch_size: int, kernel_size: int = 7, key_dim: int = 32) -> None:
        super().__init__(factor, dim, patch_size)
        self.jbu = JBUStack(factor, kernel_size, key_dim)

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        return self.jbu(lowres, images)


@UPSAMPLERS.register("featup")
def build_featup(
    factor: int = 2, dim: int = 0, patch_size: int = 14, kernel_size: int = 7, key_dim: int = 32
) -> FeatUpUpsampler:
    if key_dim < 1:
        raise ValueError(f"featup: key_dim must be >= 1, got {key_dim}")
    return FeatUpUpsampler(factor, dim, patch_size, kernel_size, key_dim)

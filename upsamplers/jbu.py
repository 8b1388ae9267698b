"""``featup``: FeatUp's joint bilateral upsampler (JBU), one stage per prime factor.

One stage lifts features ``[B,C,h,w]`` to ``[B,C,f*h,f*w]``: the features are
upsampled to the output grid (bilinearly by default), then each output pixel ``i``
takes a weighted mean of the upsampled features over a ``k x k`` window, with weights

    range:   softmax_j( h(G_i) . h(G_j) / sigma_range^2 )   h = per-pixel MLP on RGB
    spatial: exp( -|i - j|^2 / (2 sigma_spatial^2) )       offsets scaled to [-1, 1]
    weight = range * spatial, renormalized over the window

where ``G`` is the image area-pooled to the output grid. ``1/sigma_range^2`` and
``sigma_spatial`` are learned. A stack runs one stage per prime factor of ``u``, by
default in descending order (14 -> 7x then 2x; 4 -> 2x, 2x; 1 -> identity);
NVlabs FeatSharp's stack runs them ascending (14 -> 2x then 7x), see ``factor_order``.

Defaults follow FeatUp / NVlabs FeatSharp: radius 3 (a 7x7 window), key_dim 32,
``h`` = conv1x1(3->32), GELU, conv1x1(32->32), temperature ``exp(t)`` with ``t = 0``
(so sigma_range = 1) clamped to [1e-4, 1e4], ``sigma_spatial = 1``; guidance is
ImageNet-standardized RGB (what FeatUp's released models see). Departures from the
reference code, each with the option that restores it:

- pre-upsampling is bilinear, as NVlabs FeatSharp's ``JBULevel``; FeatUp as released
  (``featup/upsamplers.py``, ``JBULearnedRange``) upsamples bicubically:
  ``pre_upsample: bicubic``.
- out-of-image window taps are masked (zero weight, the softmax renormalizes over
  the taps that exist), which keeps the filter exact and valid for maps smaller than
  the window; FeatUp and NVlabs reflect-pad the range keys and the upsampled features
  by the radius and filter the padded map: ``border: reflect`` (every stage's output
  grid must then be larger than the radius). In the interior the two agree exactly.
- FeatUp's "fixup" is left out (NVlabs' JBU drops it too): per stage, a 1x1 conv net
  ``conv(k*k+3 -> k*k), GELU, Dropout2d(0.1), conv(k*k -> k*k)`` on the normalized
  window weights concatenated with the guidance, added as ``weights += 0.1 * net``
  (not renormalized), and after the last stage a residual
  ``out = x + 0.1 * conv1x1(Dropout2d(0.2)(x))`` on the features (which needs ``dim``):
  ``fixup: true`` (PyTorch's default init, as FeatUp). With ``border: mask`` the fixup's
  weights on out-of-image taps multiply zeros.
- stages run largest factor first; NVlabs FeatSharp runs the smallest first:
  ``factor_order: ascending`` (FeatUp's stack is four 2x stages, so order is moot).

Not represented: FeatUp's ``Dropout2d(0.1)`` inside the range MLP (training only),
FeatUp's 1e-7 clamp of the renormalizer (only reached for ``sigma_spatial`` below ~0.25),
and NVlabs' ``range_alpha``/``spatial_alpha`` scales (they cancel in the renormalization).
The filter runs on the memory-lean kernel of ``upsamplers._kernels`` (its gradient
reaches all k*k taps, unlike FeatUp's CUDA kernel); with ``fixup`` the k*k window
weights of each pixel are materialized, as in FeatUp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Featurize, Upsampler, UpsampleSpec, prime_factors
from upsamplers._kernels import neighborhood_attention, window_offsets

PRE_UPSAMPLE = ("bilinear", "bicubic")
BORDERS = ("mask", "reflect")
FACTOR_ORDERS = ("descending", "ascending")
FIXUP_SCALE = 0.1  # FeatUp's weight on both fixup terms


@dataclass(frozen=True)
class JBUOptions:
    """The options of a JBU stack (an option group, :mod:`radiosharp.option_groups`): each stage's
    window side ``kernel_size`` (odd) and range-key width ``key_dim``, and ``pre_upsample`` /
    ``fixup`` / ``border`` / ``factor_order``, which restore the reference codes' choices (module
    docstring): FeatUp = bicubic, true, reflect; NVlabs FeatSharp = reflect, ascending."""

    kernel_size: int = 7
    key_dim: int = 32
    pre_upsample: str = "bilinear"
    fixup: bool = False
    border: str = "mask"
    factor_order: str = "descending"

    def check(self) -> None:
        """One-line errors for an option out of range, before any stage is built (a stack of factor 1
        builds none, so the choices a stage checks are checked here too)."""
        if self.key_dim < 1:
            raise ValueError(f"featup: key_dim must be >= 1, got {self.key_dim}")
        check_choice("pre_upsample", self.pre_upsample, PRE_UPSAMPLE)
        check_choice("border", self.border, BORDERS)
        check_choice("factor_order", self.factor_order, FACTOR_ORDERS)
        if not isinstance(self.fixup, bool):
            raise ValueError(f"featup: fixup must be true or false; got {self.fixup!r}")


def check_choice(option: str, value: object, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else a one-line ValueError naming the choices."""
    if value not in valid:
        raise ValueError(f"featup: {option} must be one of {', '.join(valid)}; got {value!r}")
    return str(value)


def stage_factors(factor: int, order: str = "descending") -> list[int]:
    """The stack's per-stage factors: the prime factors of ``factor`` in ``order``."""
    factors = prime_factors(factor)
    return factors if check_choice("factor_order", order, FACTOR_ORDERS) == "descending" else factors[::-1]


def joint_bilateral_filter(
    features: Tensor,
    range_queries: Tensor,
    range_keys: Tensor,
    spatial_logits: Tensor,
    kernel_size: int,
    backend: str = "reference",
) -> Tensor:
    """``out_i = sum_j softmax_j(q_i . k_j + spatial_j) f_j`` over a ``k x k`` window.

    features ``[B,C,H,W]`` (already on the output grid); range queries/keys
    ``[B,D,H,W]`` (queries carry the ``1/sigma_range^2`` factor); spatial_logits
    ``[1, k*k]`` = log of the spatial kernel. Equal to "range softmax times spatial
    kernel, renormalized" because the range softmax's normalizer cancels. ``backend``: the kernel of
    :func:`upsamplers._kernels.neighborhood_attention` (the pure-PyTorch reference by default).
    """
    out = neighborhood_attention(
        range_queries.unsqueeze(1),
        range_keys.unsqueeze(1),
        features.unsqueeze(1),
        kernel_size,
        bias=spatial_logits,
        backend=backend,
    )
    return out.squeeze(1)


def _check_reflect(size: tuple[int, int], r: int) -> None:
    if r and min(size) <= r:
        raise ValueError(
            f"featup: border=reflect needs every stage's output grid larger than the window radius {r}, "
            f"got {size[0]}x{size[1]}; use border=mask or larger inputs"
        )


def _pad(x: Tensor, r: int, border: str) -> Tensor:
    """``x`` [B,C,H,W] padded by ``r``: zeros (``mask``; the taps there get zero weight) or reflected."""
    if not r:
        return x
    return F.pad(x, (r, r, r, r), mode="reflect" if border == "reflect" else "constant")


def window_weights(queries: Tensor, keys: Tensor, spatial_logits: Tensor, kernel_size: int, border: str) -> Tensor:
    """``[B,k*k,H,W]``: the normalized JBU window weights, materialized (the fixup reads them).

    Row-major offsets (see :func:`~upsamplers._kernels.window_offsets`); with ``mask``
    out-of-image taps get weight 0, with ``reflect`` the keys are reflect-padded.
    """
    r, (h, w) = kernel_size // 2, queries.shape[-2:]
    k_pad = _pad(keys, r, border)
    inside = _pad(torch.ones(1, 1, h, w, dtype=torch.bool, device=keys.device), r, "mask")
    logits = []
    for dy, dx in window_offsets(kernel_size):
        window = (..., slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
        logits.append((queries * k_pad[window]).sum(1, keepdim=True))
        if border == "mask" and (dy or dx):
            logits[-1] = logits[-1].masked_fill(~inside[window], float("-inf"))
    return (torch.cat(logits, dim=1) + spatial_logits.view(1, -1, 1, 1)).softmax(dim=1)


def apply_window_weights(features: Tensor, weights: Tensor, kernel_size: int, border: str) -> Tensor:
    """``out_i = sum_o weights[o]_i * f_{i+o}`` (FeatUp's AdaptiveConv) on zero- or reflect-padded features."""
    r, (h, w) = kernel_size // 2, features.shape[-2:]
    f_pad = _pad(features, r, border)
    out = None
    for o, (dy, dx) in enumerate(window_offsets(kernel_size)):
        term = weights[:, o : o + 1] * f_pad[..., r + dy : r + dy + h, r + dx : r + dx + w]
        out = term if out is None else out + term
    assert out is not None
    return out


class JointBilateralUpsampler(nn.Module):
    """One JBU stage with an integer factor ``f`` (see the module docstring for the options)."""

    def __init__(
        self,
        factor: int,
        kernel_size: int = 7,
        key_dim: int = 32,
        guidance_dim: int = 3,
        pre_upsample: str = "bilinear",
        fixup: bool = False,
        border: str = "mask",
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"JBU kernel_size must be odd (e.g. 3, 5, 7), got {kernel_size}")
        self.factor = factor
        self.kernel_size = kernel_size
        self.pre_upsample = check_choice("pre_upsample", pre_upsample, PRE_UPSAMPLE)
        self.border = check_choice("border", border, BORDERS)
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Conv2d(key_dim, key_dim, 1))
        # Shape [1], not []: DeepSpeed cannot broadcast 0-dim bf16 parameters.
        self.log_range_temperature = nn.Parameter(torch.zeros(1))  # log(1 / sigma_range^2)
        self.sigma_spatial = nn.Parameter(torch.ones(1))
        taps = kernel_size * kernel_size
        # FeatUp's layout (indices 0 and 3), so its weights map one to one
        self.fixup_proj = (
            nn.Sequential(
                nn.Conv2d(taps + guidance_dim, taps, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1)
            )
            if fixup
            else None
        )
        self.radius = max(kernel_size // 2, 1)
        # the kernel of the filter (upsamplers._kernels.BACKENDS); set on the module, not a recipe option.
        # auto: the Triton kernels on CUDA, the pure-PyTorch reference elsewhere (bit-identical on CPU)
        self.attention_backend = "auto"
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
        guidance = self.guidance(images, size)
        keys = self.range_proj(guidance)
        upsampled = F.interpolate(features, size=size, mode=self.pre_upsample, align_corners=False)
        r = self.kernel_size // 2
        if self.border == "reflect":
            _check_reflect(size, r)
        if self.fixup_proj is not None:
            weights = window_weights(
                keys * self.range_temperature, keys, self.spatial_logits(), self.kernel_size, self.border
            )
            weights = weights + FIXUP_SCALE * self.fixup_proj(torch.cat([weights, guidance], dim=1))
            return apply_window_weights(upsampled, weights, self.kernel_size, self.border)
        reflect = self.border == "reflect"
        if reflect:
            # filter the reflect-padded maps, then crop; inside the crop no window leaves the padded
            # map, so the kernel's masking never acts there
            keys, upsampled = _pad(keys, r, "reflect"), _pad(upsampled, r, "reflect")
        out = joint_bilateral_filter(
            upsampled,
            keys * self.range_temperature,
            keys,
            self.spatial_logits(),
            self.kernel_size,
            self.attention_backend,
        )
        return out[..., r : r + size[0], r : r + size[1]] if reflect else out

    def extra_repr(self) -> str:
        extra = "" if self.pre_upsample == "bilinear" else f", pre_upsample={self.pre_upsample}"
        extra += "" if self.border == "mask" else f", border={self.border}"
        return f"factor={self.factor}, kernel_size={self.kernel_size}{extra}"


class JBUStack(nn.Module):
    """One :class:`JointBilateralUpsampler` per prime factor of ``factor`` (``options.factor_order``), then
    FeatUp's final residual when ``options.fixup`` (which needs the feature width ``dim``)."""

    def __init__(self, factor: int, options: JBUOptions = JBUOptions(), dim: int = 0) -> None:
        super().__init__()
        options.check()
        self.factor = factor
        self.factor_order = options.factor_order
        if options.fixup and dim < 1:
            raise ValueError(
                "featup: fixup=true needs the feature width dim >= 1 (its final 1x1 residual is dim x dim)"
            )
        stage = dict(pre_upsample=options.pre_upsample, fixup=options.fixup, border=options.border)
        self.stages = nn.ModuleList(
            JointBilateralUpsampler(f, options.kernel_size, options.key_dim, **stage)
            for f in stage_factors(factor, options.factor_order)
        )
        # FeatUp's layout (Dropout2d, Conv2d): the conv is `fixup_proj.1`
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, 1)) if options.fixup else None
        self.checkpoint_activations = False  # checkpoint_activations option: see FeatUpUpsampler

    def forward(self, features: Tensor, images: Tensor) -> Tensor:
        for stage in self.stages:
            if self.checkpoint_activations and torch.is_grad_enabled():
                # recomputed in backward (same RNG state for the fixup's dropout): keeps one map per stage
                features = torch.utils.checkpoint.checkpoint(stage, features, images, use_reentrant=False)
            else:
                features = stage(features, images)
        if self.fixup_proj is not None:
            features = features + FIXUP_SCALE * self.fixup_proj(features)
        return features


class FeatUpUpsampler(Upsampler):
    """FeatUp's JBU stack behind the upsampler interface (the ``featup`` registry entry): the
    :class:`JBUOptions` (FeatUp = ``pre_upsample: bicubic``, ``fixup: true``, ``border: reflect``;
    NVlabs FeatSharp = ``border: reflect``, ``factor_order: ascending``).

    ``checkpoint_activations``: under autograd each stage runs under ``torch.utils.checkpoint``
    (its activations are recomputed in backward; the same loss and gradients, less memory).
    """

    trainable = True

    def __init__(
        self, spec: UpsampleSpec = UpsampleSpec(), jbu: JBUOptions = JBUOptions(), checkpoint_activations: bool = False
    ) -> None:
        if not isinstance(checkpoint_activations, bool):
            raise ValueError(f"featup: checkpoint_activations must be true or false; got {checkpoint_activations!r}")
        super().__init__(spec)
        self.jbu = JBUStack(spec.factor, jbu, spec.dim)
        self.jbu.checkpoint_activations = checkpoint_activations

    def forward(
        self, images: Tensor, lowres: Tensor, featurize: Featurize, tile_features: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(images, lowres)
        return self.jbu(lowres, images)


# the class is the builder (one signature); the registry records its options as build_config
build_featup = UPSAMPLERS.register("featup")(FeatUpUpsampler)

"""FeatUp's released JBU upsampler -> radiosharp ``featup``.

Reference: github mhamilton723/FeatUp, ``featup/upsamplers.py`` (``JBUStack`` of four
``JBULearnedRange`` 2x stages ``up1..up4`` plus a final ``fixup_proj``); its released
checkpoints (``hubconf.py``) are Lightning checkpoints whose ``state_dict`` holds the
stack under ``upsampler.`` next to the featurizer (``model.``, with FeatUp's
``ChannelNorm`` at ``model.1.norm``), the ``downsampler.`` and the ``scale_net.``; only
the stack converts. Per stage (keys relative to ``upK.``)::

    range_temp []                      -> jbu.stages.{K-1}.log_range_temperature [1]
    sigma_spatial []                   -> jbu.stages.{K-1}.sigma_spatial [1]
    range_proj.0 (conv 3->32)          -> jbu.stages.{K-1}.range_proj.0
    range_proj.3 (conv 32->32; .2 is Dropout2d) -> jbu.stages.{K-1}.range_proj.2
    fixup_proj.0 / .3 (k*k+3 -> k*k -> k*k)     -> jbu.stages.{K-1}.fixup_proj.0 / .3
    fixup_proj.1 (stack, conv C->C; .0 is Dropout2d) -> jbu.fixup_proj.1

and the upsampler is ``featup`` with ``pre_upsample=bicubic, fixup=true, border=reflect``
at factor ``2^stages`` (16 for the released stack).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.convert._common import (
    ConversionError,
    Converted,
    fold_guidance,
    is_default_guidance,
    module_keys,
    scalar,
    unconverted_note,
)

MARKER = re.compile(r"up1\.range_temp$")
# FeatUp's featurizers/util.py: model_type -> patch size
FEATUP_PATCH_SIZES = {
    "vit": 16, "dino16": 16, "dino8": 8, "dinov2": 14, "clip": 16, "maskclip": 16,
    "mae": 16, "mocov3": 16, "msn": 16, "midas": 16, "resnet50": 1, "deeplab": 1,
}  # fmt: skip


def _patch_size(ckpt: Mapping[str, Any], patch_size: int | None, notes: list[str]) -> int:
    if patch_size is not None:
        return int(patch_size)
    hyper = ckpt.get("hyper_parameters")
    model_type = hyper.get("model_type") if isinstance(hyper, Mapping) else None
    if isinstance(model_type, str) and model_type.lower() in FEATUP_PATCH_SIZES:
        notes.append(f"patch size {FEATUP_PATCH_SIZES[model_type.lower()]} from the checkpoint's model_type")
        return FEATUP_PATCH_SIZES[model_type.lower()]
    notes.append("patch size unknown: 14 assumed (pass --patch-size)")
    return 14


def convert_featup_jbu(
    ckpt: Mapping[str, Any],
    patch_size: int | None = None,
    guidance_mean: Sequence[float] = IMAGENET_MEAN,
    guidance_std: Sequence[float] = IMAGENET_STD,
    source: str = "featup-jbu",
) -> Converted:
    """A FeatUp ``JBUStack`` checkpoint (or state dict) as a radiosharp ``featup`` upsampler.

    ``guidance_mean``/``guidance_std``: how the reference whitened its guidance image
    (FeatUp: ImageNet, radiosharp's own); anything else is folded into the convs that read it.
    """
    state, prefix, keys = module_keys(ckpt, MARKER, "FeatUp JBU stack")
    numbers = sorted({int(m.group(1)) for k in keys.left if (m := re.match(r"up(\d+)\.", k))})
    if numbers != list(range(1, len(numbers) + 1)):
        raise ConversionError(f"FeatUp JBU stack: stages {numbers} are not up1..upN")
    if not keys.has("fixup_proj.1.weight"):
        raise ConversionError(
            f"FeatUp JBU stack: no final '{prefix}fixup_proj.1.weight' (FeatUp's JBUStack has one; "
            "an NVlabs FeatSharp jbu_stack converts with kind featsharp)"
        )
    out: dict[str, Any] = {}
    kernel_size = key_dim = None
    for n in numbers:
        up, ours = f"up{n}.", f"jbu.stages.{n - 1}."
        w0 = keys.pop(up + "range_proj.0.weight")
        if w0.ndim != 4 or w0.shape[1] != 3 or w0.shape[2:] != (1, 1):
            raise ConversionError(
                f"FeatUp JBU stack: {up}range_proj.0 takes {tuple(w0.shape)[1:]} guidance; featup takes RGB (3, 1, 1)"
            )
        kd = w0.shape[0]
        f0 = keys.pop(up + "fixup_proj.0.weight")
        taps = f0.shape[0]
        k = math.isqrt(taps)
        if k * k != taps or k % 2 == 0 or tuple(f0.shape) != (taps, taps + 3, 1, 1):
            raise ConversionError(
                f"FeatUp JBU stack: {up}fixup_proj.0 has shape {tuple(f0.shape)}, not an odd k x k window"
            )
        if (kernel_size, key_dim) not in ((None, None), (k, kd)):
            raise ConversionError(
                f"FeatUp JBU stack: {up} has window {k} / key_dim {kd} but up1 has {kernel_size} / {key_dim}; "
                "featup uses one window and key_dim for all stages"
            )
        kernel_size, key_dim = k, kd
        out[ours + "log_range_temperature"] = scalar(keys.pop(up + "range_temp"))
        out[ours + "sigma_spatial"] = scalar(keys.pop(up + "sigma_spatial"))
        w0, b0 = fold_guidance(w0, keys.pop(up + "range_proj.0.bias", (kd,)), guidance_mean, guidance_std)
        out[ours + "range_proj.0.weight"], out[ours + "range_proj.0.bias"] = w0, b0
        out[ours + "range_proj.2.weight"] = keys.pop(up + "range_proj.3.weight", (kd, kd, 1, 1))
        out[ours + "range_proj.2.bias"] = keys.pop(up + "range_proj.3.bias", (kd,))
        f0, fb0 = fold_guidance(f0, keys.pop(up + "fixup_proj.0.bias", (taps,)), guidance_mean, guidance_std, taps)
        out[ours + "fixup_proj.0.weight"], out[ours + "fixup_proj.0.bias"] = f0, fb0
        out[ours + "fixup_proj.3.weight"] = keys.pop(up + "fixup_proj.3.weight", (taps, taps, 1, 1))
        out[ours + "fixup_proj.3.bias"] = keys.pop(up + "fixup_proj.3.bias", (taps,))
    final = keys.pop("fixup_proj.1.weight")
    dim = final.shape[0]
    if tuple(final.shape) != (dim, dim, 1, 1):
        raise ConversionError(
            f"FeatUp JBU stack: fixup_proj.1.weight has shape {tuple(final.shape)}, not C x C x 1 x 1"
        )
    out["jbu.fixup_proj.1.weight"] = final
    out["jbu.fixup_proj.1.bias"] = keys.pop("fixup_proj.1.bias", (dim,))
    keys.finish()
    notes = unconverted_note(state, prefix)
    if not is_default_guidance(guidance_mean, guidance_std):
        notes.append("guidance whitening folded into range_proj.0 and fixup_proj.0")
    options = {
        "name": "featup",
        "kernel_size": kernel_size,
        "key_dim": key_dim,
        "pre_upsample": "bicubic",
        "fixup": True,
        "border": "reflect",
        "factor_order": "descending",
    }
    where = f"FeatUp JBUStack at '{prefix}', {len(numbers)} x 2x stages"
    return Converted(
        options, 2 ** len(numbers), dim, _patch_size(ckpt, patch_size, notes), out, f"{source} ({where})", notes
    )

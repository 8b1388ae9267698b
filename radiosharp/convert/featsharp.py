"""NVlabs FeatSharp checkpoints -> radiosharp ``featsharp`` (or ``featup`` for their ``jbu_stack``).

Reference: github NVlabs/FeatSharp. ``featsharp/train.py`` saves ``{"model_state": ...,
"upsample_args": {"type", "factor", "normalizer"}, "train_config": ...}``; the upsampler
is under ``upsampler.`` (``module.`` after it under DDP), next to the PHI-S
``normalizer.``, the ``bias_buffer.`` and ``cond_bias_transform.``, which are not part of
the upsampler and are not converted. ``upsample_args.type`` is parsed as in
``featsharp/upsamplers.py``: ``featsharp[.no-ln][.wnd-N][.inputs-a-b]...`` builds
``FeatSharp`` (``featsharp/upsampler_modules/featsharp.py``): one ``AttentionLevel``
``ups.0`` holding

- ``jbu.ups.{j}``: ``JBUStack`` levels (``featsharp/upsampler_modules/featup.py``,
  ``JBULevel``), prime factors ascending, bilinear pre-upsampling, reflect padding, no
  fixup: ``range_temp``, ``sigma_spatial``, ``range_proj.{0,2}``, plus ``range_alpha`` /
  ``spatial_alpha`` that cancel in the kernel's renormalization (dropped) ->
  ``base.jbu.stages.{j}`` of a ``featup`` base with ``border=reflect,
  factor_order=ascending``;
- ``tile_pos`` [1,C,u,u] -> ``tile_pos`` (same tile order);
- ``block``: DINOv2's ``Block`` with 16 heads of ``AlibiAttention`` (``qkv`` without bias,
  rows packed ``[q|k|v][head][dim]`` like ours but with the head dim padded to a power of
  two; fixed ALiBi slopes ``1/2^((h+2)//2)``, even heads along rows, odd along columns;
  scale ``(width/16)^-0.5``) and a ``SwiGLUFFNFused`` whose ``w12`` packs ``[x1, x2]``
  with ``silu(x1) * x2`` (our ``w_in`` order) and hidden width
  ``(int(int(4 * width) * 2/3) + 7) // 8 * 8`` (``Block`` passes ``hidden_features =
  4 * width``, overriding the partial's ``4 * C``: about twice radiosharp's default);
  LayerScale ``ls1``/``ls2``; the residual keeps the first input buffer's C channels.

A ``jbu_stack`` type (``JBUStack`` alone, under ``upsampler.inner.`` of the
``HiResWrapper``) converts to ``featup`` with ``border=reflect, factor_order=ascending``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.convert._common import (
    ConversionError,
    Converted,
    KeyReader,
    find_prefix,
    fold_guidance,
    is_default_guidance,
    module_keys,
    reject_parametrizations,
    scalar,
    tensors_of,
    unconverted_note,
)
from radiosharp.factors import prime_factors

NUM_HEADS = 16  # AttentionLevel builds its Block with 16 heads
DEFAULT_WINDOW = 7  # _AF_DEFAULT_WND_SIZE
JBU_KERNEL_SIZE = 7  # JBULevel(radius=3); not recorded in the weights
INPUT_NAMES = {"jbu": "base", "bilinear": "base", "tiles": "tiles"}
UNSUPPORTED_FLAGS = {
    "xpos-qk": "xPos q/k embeddings",
    "rope-qk": "RoPE q/k embeddings",
    "no-attn": "a block without attention",
    "no-ffn": "a block without MLP",
    "prog": "progressive levels",
}


def nvlabs_jbu_options(key_dim: int) -> dict[str, Any]:
    """The ``featup`` options that reproduce NVlabs' ``JBULevel`` stack (bilinear, reflect, ascending)."""
    return {
        "name": "featup",
        "kernel_size": JBU_KERNEL_SIZE,
        "key_dim": key_dim,
        "pre_upsample": "bilinear",
        "fixup": False,
        "border": "reflect",
        "factor_order": "ascending",
    }


def nvlabs_alibi_slopes(num_heads: int) -> Tensor:
    """NVlabs' fixed slopes in radiosharp's ``[heads, (row, column)]`` layout."""
    slopes = torch.zeros(num_heads, 2)
    for h in range(num_heads):
        slopes[h, h % 2] = 1.0 / 2 ** ((h + 2) // 2)
    return slopes


def nvlabs_mlp_hidden(width: int) -> int:
    return (int(int(width * 4.0) * 2 / 3) + 7) // 8 * 8


def parse_type(ups_type: str) -> dict[str, Any]:
    """``upsample_args.type`` -> ``{"kind": featsharp|jbu_stack, "layer_norm", "window_size", "inputs"}``."""
    parts = ups_type.split(".")
    if parts[0] == "jbu_stack" and len(parts) == 1:
        return {"kind": "jbu_stack"}
    if parts[0] != "featsharp":
        raise ConversionError(f"upsampler type '{ups_type}': only featsharp[...] and jbu_stack convert")
    spec: dict[str, Any] = {"kind": "featsharp", "layer_norm": True, "window_size": DEFAULT_WINDOW}
    spec["inputs"] = ["jbu", "tiles"]
    for arg in parts[1:]:
        if arg in UNSUPPORTED_FLAGS:
            raise ConversionError(
                f"upsampler type '{ups_type}': {UNSUPPORTED_FLAGS[arg]} ({arg}) has no featsharp option"
            )
        if arg == "no-ln":
            spec["layer_norm"] = False
        elif arg == "no-proj":
            pass  # allow_proj: accepted and unused by the reference
        elif arg.startswith("wnd-"):
            spec["window_size"] = int(arg.split("-")[1])
        elif arg.startswith("inputs-"):
            spec["inputs"] = arg.split("-")[1:]
        else:
            raise ConversionError(f"upsampler type '{ups_type}': unknown flag '{arg}'")
    for name in spec["inputs"]:
        if name not in INPUT_NAMES:
            raise ConversionError(
                f"upsampler type '{ups_type}': input '{name}' has no radiosharp featsharp counterpart "
                f"(convertible inputs: {', '.join(INPUT_NAMES)})"
            )
    if sum(INPUT_NAMES[n] == "base" for n in spec["inputs"]) > 1 or len(set(spec["inputs"])) != len(spec["inputs"]):
        raise ConversionError(
            f"upsampler type '{ups_type}': featsharp takes one base buffer (jbu or bilinear) and tiles"
        )
    return spec


def _jbu_levels(
    keys: KeyReader, at: str, ours: str, factor: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[dict[str, Tensor], int]:
    """NVlabs ``JBULevel`` weights at ``at{j}.`` -> ``ours{j}.`` (ascending factors); returns them and key_dim."""
    factors = prime_factors(factor)
    found = sorted({int(m.group(1)) for k in keys.left if (m := re.match(re.escape(at) + r"(\d+)\.", k))})
    if found != list(range(len(factors))):
        raise ConversionError(
            f"NVlabs JBU stack: levels {found} at '{keys.prefix}{at}', expected {len(factors)} for factor {factor}"
        )
    out: dict[str, Tensor] = {}
    key_dim = None
    for j in range(len(factors)):
        src, dst = f"{at}{j}.", f"{ours}{j}."
        w0 = keys.pop(src + "range_proj.0.weight")
        if w0.ndim != 4 or w0.shape[1:] != (3, 1, 1):
            raise ConversionError(f"NVlabs JBU stack: {src}range_proj.0 has shape {tuple(w0.shape)}; featup takes RGB")
        if key_dim not in (None, w0.shape[0]):
            raise ConversionError(f"NVlabs JBU stack: {src} key_dim {w0.shape[0]} differs from level 0's {key_dim}")
        key_dim = kd = w0.shape[0]
        w0, b0 = fold_guidance(w0, keys.pop(src + "range_proj.0.bias", (kd,)), mean, std)
        out[dst + "range_proj.0.weight"], out[dst + "range_proj.0.bias"] = w0, b0
        out[dst + "range_proj.2.weight"] = keys.pop(src + "range_proj.2.weight", (kd, kd, 1, 1))
        out[dst + "range_proj.2.bias"] = keys.pop(src + "range_proj.2.bias", (kd,))
        out[dst + "log_range_temperature"] = scalar(keys.pop(src + "range_temp"))
        out[dst + "sigma_spatial"] = scalar(keys.pop(src + "sigma_spatial"))
        for name in ("range_alpha", "spatial_alpha"):  # scale the whole kernel; the renormalization cancels them
            if keys.has(src + name):
                keys.pop(src + name)
    assert key_dim is not None
    return out, int(key_dim)


def _block(keys: KeyReader, width: int, dim: int, layer_norm: bool) -> tuple[dict[str, Tensor], int]:
    """DINOv2 ``Block`` (``AlibiAttention``, ``SwiGLUFFNFused``) -> ``block.*``; returns them and the hidden width."""
    out: dict[str, Tensor] = {}
    if width % NUM_HEADS:
        raise ConversionError(f"NVlabs block: width {width} is not divisible by its {NUM_HEADS} heads")
    head_dim = width // NUM_HEADS
    padded = 1 << (head_dim - 1).bit_length()
    if layer_norm:
        for n in ("norm1", "norm2"):
            out[f"block.{n}.weight"] = keys.pop(f"block.{n}.weight", (width,))
            out[f"block.{n}.bias"] = keys.pop(f"block.{n}.bias", (width,))
    qkv = keys.pop("block.attn.qkv.weight", (3 * NUM_HEADS * padded, width))
    qkv_bias = keys.pop("block.attn.qkv.bias", (3 * NUM_HEADS * padded,)) if keys.has("block.attn.qkv.bias") else None
    if padded != head_dim:
        rows = qkv.view(3, NUM_HEADS, padded, width)
        pad_bias = qkv_bias.view(3, NUM_HEADS, padded)[:2, :, head_dim:] if qkv_bias is not None else None
        if rows[:2, :, head_dim:].any() or (pad_bias is not None and pad_bias.any()):
            raise ConversionError(
                f"NVlabs block: attention heads are padded from {head_dim} to {padded} dims and the q/k padding "
                "has nonzero weights (they enter the logits); radiosharp's attention has no padded dims"
            )
        qkv = rows[:, :, :head_dim].reshape(3 * width, width)  # v's padding is cut from the output: dropped
        if qkv_bias is not None:
            qkv_bias = qkv_bias.view(3, NUM_HEADS, padded)[:, :, :head_dim].reshape(3 * width)
    out["block.attn.qkv.weight"] = qkv.clone()
    out["block.attn.qkv.bias"] = qkv_bias.clone() if qkv_bias is not None else torch.zeros(3 * width, dtype=qkv.dtype)
    out["block.attn.proj.weight"] = keys.pop("block.attn.proj.weight", (width, width))
    out["block.attn.proj.bias"] = keys.pop("block.attn.proj.bias", (width,))
    out["block.attn.alibi_slopes"] = nvlabs_alibi_slopes(NUM_HEADS).to(qkv.dtype)
    out["block.ls1.gamma"] = keys.pop("block.ls1.gamma", (width,))
    out["block.ls2.gamma"] = keys.pop("block.ls2.gamma", (dim,))
    if keys.has("block.mlp.w12.weight"):
        w_in = keys.pop("block.mlp.w12.weight")
        b_in = keys.pop("block.mlp.w12.bias") if keys.has("block.mlp.w12.bias") else None
    else:  # xformers' SwiGLU without packed weights: w1 (silu side), w2 (gate)
        w_in = torch.cat([keys.pop("block.mlp.w1.weight"), keys.pop("block.mlp.w2.weight")])
        has_bias = keys.has("block.mlp.w1.bias")
        b_in = torch.cat([keys.pop("block.mlp.w1.bias"), keys.pop("block.mlp.w2.bias")]) if has_bias else None
    if w_in.ndim != 2 or w_in.shape[1] != width or w_in.shape[0] % 2:
        raise ConversionError(
            f"NVlabs block: mlp input weight has shape {tuple(w_in.shape)}, expected [2*hidden, {width}]"
        )
    hidden = w_in.shape[0] // 2
    out["block.mlp.w_in.weight"] = w_in  # [x1 (silu), x2 (gate)], our [a, b]: no reordering
    out["block.mlp.w_in.bias"] = b_in if b_in is not None else torch.zeros(2 * hidden, dtype=w_in.dtype)
    out["block.mlp.w_out.weight"] = keys.pop("block.mlp.w3.weight", (dim, hidden))
    has_out_bias = keys.has("block.mlp.w3.bias")
    out["block.mlp.w_out.bias"] = keys.pop("block.mlp.w3.bias", (dim,)) if has_out_bias else torch.zeros(dim)
    return out, hidden


def convert_featsharp(
    ckpt: Mapping[str, Any],
    ups_type: str | None = None,
    factor: int | None = None,
    patch_size: int | None = None,
    dim: int | None = None,
    guidance_mean: Sequence[float] = IMAGENET_MEAN,
    guidance_std: Sequence[float] = IMAGENET_STD,
    source: str = "featsharp",
) -> Converted:
    """An NVlabs FeatSharp checkpoint (``train.py``'s, or a bare upsampler state dict) as a radiosharp upsampler.

    ``ups_type``/``factor`` default to the checkpoint's ``upsample_args``; ``guidance_mean``/
    ``guidance_std``: the teacher's input whitening (NVlabs' guidance is the whitened image;
    ImageNet, radiosharp's own, needs no folding).
    """
    args = ckpt.get("upsample_args") if isinstance(ckpt.get("upsample_args"), Mapping) else {}
    assert isinstance(args, Mapping)
    ups_type = ups_type or args.get("type") or "featsharp"
    spec = parse_type(str(ups_type))
    factor = factor if factor is not None else args.get("factor")
    notes: list[str] = []
    if spec["kind"] == "jbu_stack":
        return _convert_jbu_stack(ckpt, factor, patch_size, dim, guidance_mean, guidance_std, source, notes)
    marker = re.compile(r"ups\.\d+\.block\.ls1\.gamma$")
    state = tensors_of(ckpt, marker, "NVlabs FeatSharp upsampler")
    prefix = find_prefix(state, re.compile(r"ups\.0\.block\.ls1\.gamma$"), "NVlabs FeatSharp upsampler")
    reject_parametrizations(state, prefix)
    levels = {m.group(1) for k in state if k.startswith(prefix) and (m := re.match(r"ups\.(\d+)\.", k[len(prefix) :]))}
    if levels != {"0"}:
        raise ConversionError(f"NVlabs FeatSharp: {len(levels)} levels (progressive); featsharp has one")
    keys = KeyReader(state, prefix + "ups.0.", "NVlabs FeatSharp upsampler")
    inputs = [INPUT_NAMES[n] for n in spec["inputs"]]
    if keys.has("tile_pos"):
        tile_pos = keys.pop("tile_pos")
        if tile_pos.ndim != 4 or tile_pos.shape[0] != 1 or tile_pos.shape[2] != tile_pos.shape[3]:
            raise ConversionError(f"NVlabs FeatSharp: tile_pos has shape {tuple(tile_pos.shape)}, expected [1,C,u,u]")
        if "tiles" not in inputs:
            raise ConversionError(f"NVlabs FeatSharp: the checkpoint has tile_pos but type '{ups_type}' has no tiles")
        c, u = tile_pos.shape[1], tile_pos.shape[2]
        if factor is not None and int(factor) != u:
            raise ConversionError(f"NVlabs FeatSharp: tile_pos is for factor {u}, the checkpoint says {factor}")
        factor = u
    elif "tiles" in inputs:
        raise ConversionError(f"NVlabs FeatSharp: type '{ups_type}' has tiles but the checkpoint has no tile_pos")
    else:
        tile_pos, c = None, keys.left["block.ls2.gamma"].shape[0] if keys.has("block.ls2.gamma") else 0
    if factor is None:
        raise ConversionError("NVlabs FeatSharp: the upsampling factor is not in the checkpoint; pass --factor")
    factor = int(factor)
    out: dict[str, Tensor] = {}
    if tile_pos is not None:
        out["tile_pos"] = tile_pos
    base: dict[str, Any] | str | None = None
    if "jbu" in spec["inputs"]:
        jbu, key_dim = _jbu_levels(keys, "jbu.ups.", "base.jbu.stages.", factor, guidance_mean, guidance_std)
        out.update(jbu)
        base = nvlabs_jbu_options(key_dim)
        notes.append(
            "NVlabs resizes the guidance bilinearly to the output grid before its JBU pools it; radiosharp "
            "area-pools the image (the same when the image is given at the output grid)"
        )
    elif "bilinear" in spec["inputs"]:
        base = "bilinear"
    width = len(inputs) * c
    block, hidden = _block(keys, width, c, spec["layer_norm"])
    out.update(block)
    keys.finish()
    if hidden != nvlabs_mlp_hidden(width):
        notes.append(f"SwiGLU hidden width {hidden} (NVlabs' rule gives {nvlabs_mlp_hidden(width)})")
    notes.extend(unconverted_note(state, prefix))
    if not is_default_guidance(guidance_mean, guidance_std):
        notes.append("guidance whitening folded into the JBU's range_proj.0")
    elif base is not None and base != "bilinear":
        notes.append("guidance assumed ImageNet-whitened (the teacher's input conditioner; else --guidance-mean/std)")
    options: dict[str, Any] = {
        "name": "featsharp",
        "inputs": inputs,
        "residual": inputs[0],
        "num_heads": NUM_HEADS,
        "window_size": spec["window_size"],
        "mlp_hidden": hidden,
        "layer_norm": spec["layer_norm"],
    }
    if base is not None:
        options["base"] = base
    where = f"NVlabs FeatSharp '{ups_type}' at '{prefix}'"
    return Converted(options, factor, c, _patch_size(patch_size, notes), out, f"{source} ({where})", notes)


def _patch_size(patch_size: int | None, notes: list[str]) -> int:
    if patch_size is None:
        notes.append("patch size not in the checkpoint: 14 assumed (pass --patch-size; the tiles depend on it)")
        return 14
    return int(patch_size)


def _convert_jbu_stack(
    ckpt: Mapping[str, Any],
    factor: int | None,
    patch_size: int | None,
    dim: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    source: str,
    notes: list[str],
) -> Converted:
    marker = re.compile(r"ups\.0\.range_temp$")
    _, prefix, keys = module_keys(ckpt, marker, "NVlabs JBU stack")
    if factor is None:
        factor = 2 ** len({k.split(".")[1] for k in keys.left if k.startswith("ups.")})
        notes.append(f"factor {factor} assumed from the level count (pass --factor if it was not a power of 2)")
    out, key_dim = _jbu_levels(keys, "ups.", "jbu.stages.", int(factor), mean, std)
    keys.finish()
    options = nvlabs_jbu_options(key_dim)
    if dim is None:
        notes.append("feature width not in the JBU weights: dim 0 (unchecked); pass --dim")
    where = f"NVlabs jbu_stack at '{prefix}'"
    return Converted(
        options, int(factor), int(dim or 0), _patch_size(patch_size, notes), out, f"{source} ({where})", notes
    )

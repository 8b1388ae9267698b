"""The ``featup`` reference options and the converters of the reference checkpoints.

The references are re-implemented here from the reference code's formulas (FeatUp's
``featup/upsamplers.py`` ``JBULearnedRange``/``JBUStack``; NVlabs FeatSharp's
``upsampler_modules/featup.py`` ``JBULevel``/``JBUStack`` and
``upsampler_modules/featsharp.py`` ``AttentionLevel`` with DINOv2's ``Block``), on
random weights laid out as those codes' state dicts; a converted checkpoint must
reproduce them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import radiosharp
from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.convert import (
    ConversionError,
    convert_featsharp,
    convert_featup_jbu,
    load_converted,
    read_converted,
    save_converted,
)
from radiosharp.convert.__main__ import main as convert_main
from upsamplers.jbu import BORDERS, JBUOptions, JBUStack, JointBilateralUpsampler, joint_bilateral_filter

D64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


def featup(factor: int, dim: int = 6, **options) -> torch.nn.Module:
    return radiosharp.build_upsampler({"name": "featup", **options}, factor=factor, dim=dim, patch_size=4)


def perturbed(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Weights off their init (so temperature, sigma and every MLP matter), in float64."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.double().eval()


def whiten(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    # float32-rounded constants, as the module's buffers
    m = torch.tensor(mean).to(images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std).to(images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


# ----------------------------------------------------------------------------- options


def test_default_options_are_todays_filter_exactly():
    torch.manual_seed(0)
    up = featup(2)
    assert up.build_config == {
        "name": "featup",
        "kernel_size": 7,
        "key_dim": 32,
        "pre_upsample": "bilinear",
        "fixup": False,
        "border": "mask",
        "factor_order": "descending",
        "checkpoint_activations": False,
    }
    assert all("fixup" not in k for k in up.state_dict())
    torch.manual_seed(0)
    explicit = featup(2, pre_upsample="bilinear", fixup=False, border="mask", factor_order="descending")
    for a, b in zip(up.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)  # same parameters, same init draws
    stage = up.jbu.stages[0]
    features, images = torch.randn(2, 6, 5, 4), torch.rand(2, 3, 20, 16)
    keys = stage.range_proj(stage.guidance(images, (10, 8)))
    smooth = F.interpolate(features, size=(10, 8), mode="bilinear", align_corners=False)
    want = joint_bilateral_filter(smooth, keys * stage.range_temperature, keys, stage.spatial_logits(), 7)
    assert torch.equal(up(images, features, None), want)
    assert torch.equal(explicit(images, features, None), want)


def test_bicubic_pre_upsampling_is_the_filter_on_the_bicubic_map():
    torch.manual_seed(1)
    stage = JointBilateralUpsampler(2, pre_upsample="bicubic")
    features, images = torch.randn(1, 4, 5, 6), torch.rand(1, 3, 20, 24)
    keys = stage.range_proj(stage.guidance(images, (10, 12)))
    cubic = F.interpolate(features, size=(10, 12), mode="bicubic", align_corners=False)
    want = joint_bilateral_filter(cubic, keys * stage.range_temperature, keys, stage.spatial_logits(), 7)
    assert torch.equal(stage(features, images), want)
    bilinear = JointBilateralUpsampler(2)
    bilinear.load_state_dict(stage.state_dict())
    assert (bilinear(features, images) - want).abs().max() > 1e-3


@pytest.mark.parametrize("k", (3, 7))
def test_reflect_border_agrees_with_masking_inside_and_differs_at_the_edges(k):
    torch.manual_seed(2)
    masked = perturbed(JointBilateralUpsampler(2, kernel_size=k))
    reflect = JointBilateralUpsampler(2, kernel_size=k, border="reflect").double()
    reflect.load_state_dict(masked.state_dict())
    features, images = torch.randn(2, 3, 6, 7, dtype=D64), torch.rand(2, 3, 24, 28, dtype=D64)
    a, b = masked(features, images), reflect(features, images)
    r = k // 2
    torch.testing.assert_close(a[..., r:-r, r:-r], b[..., r:-r, r:-r], rtol=1e-12, atol=1e-12)
    assert (a - b).abs()[..., :r, :].max() > 1e-4
    if k == 3:
        return
    with pytest.raises(
        ValueError, match="border=reflect needs every stage's output grid larger than the window radius"
    ):
        reflect(torch.randn(1, 3, 1, 4, dtype=D64), torch.rand(1, 3, 8, 32, dtype=D64))


def test_fixup_adds_featups_modules_and_is_the_filter_when_they_are_zero():
    torch.manual_seed(3)
    plain = featup(4, dim=6)
    up = featup(4, dim=6, fixup=True)
    extra = set(up.state_dict()) - set(plain.state_dict())
    assert extra == {
        f"jbu.stages.{i}.fixup_proj.{j}.{p}" for i in (0, 1) for j in (0, 3) for p in ("weight", "bias")
    } | {"jbu.fixup_proj.1.weight", "jbu.fixup_proj.1.bias"}
    assert up.jbu.stages[0].fixup_proj[0].weight.shape == (49, 52, 1, 1)
    up.load_state_dict(plain.state_dict(), strict=False)
    features, images = torch.randn(2, 6, 3, 4), torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        for name, p in up.named_parameters():
            if "fixup" in name:
                p.zero_()
    torch.testing.assert_close(up(images, features, None), plain(images, features, None), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        up.jbu.fixup_proj[1].bias.fill_(1.0)  # the final residual adds 0.1 * bias
    torch.testing.assert_close(up(images, features, None), plain(images, features, None) + 0.1, rtol=1e-5, atol=1e-5)
    up.train()  # the gradient reaches the fixup nets through the dropout
    up(images, features, None).sum().backward()
    assert up.jbu.stages[1].fixup_proj[3].bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fixup=true needs the feature width dim >= 1"):
        featup(2, dim=0, fixup=True)


def test_ascending_factor_order_runs_the_smallest_prime_first():
    assert [s.factor for s in JBUStack(6).stages] == [3, 2]
    assert [s.factor for s in JBUStack(6, JBUOptions(factor_order="ascending")).stages] == [2, 3]
    assert [s.factor for s in JBUStack(12, JBUOptions(factor_order="ascending")).stages] == [2, 2, 3]
    torch.manual_seed(4)
    desc = featup(6)
    asc = featup(6, factor_order="ascending")
    asc.load_state_dict(desc.state_dict())  # same shapes, stage i now has the other factor
    features, images = torch.randn(1, 6, 3, 3), torch.rand(1, 3, 18, 18)
    assert asc(images, features, None).shape == desc(images, features, None).shape == (1, 6, 18, 18)
    assert (asc(images, features, None) - desc(images, features, None)).abs().max() > 1e-4


@pytest.mark.parametrize(
    "option,value,valid",
    [
        ("pre_upsample", "nearest", "bilinear, bicubic"),
        ("border", "zeros", "mask, reflect"),
        ("factor_order", "random", "descending, ascending"),
    ],
)
def test_bad_choices_are_one_line_errors_naming_the_choices(option, value, valid):
    with pytest.raises(ValueError, match=f"featup: {option} must be one of {valid}; got '{value}'") as err:
        featup(2, **{option: value})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="fixup must be true or false"):
        featup(2, fixup="yes")


# ----------------------------------------------------------------------------- FeatUp reference


def _conv1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], x) + b.view(1, -1, 1, 1)


def _spatial_kernel(sigma: torch.Tensor, d: int) -> torch.Tensor:
    ticks = torch.linspace(-1, 1, d, dtype=D64)
    yy, xx = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.exp(-(xx**2 + yy**2) / (2 * sigma**2)).reshape(1, d * d, 1, 1)


def _range_kernel(proj: torch.Tensor, temp: torch.Tensor, r: int) -> torch.Tensor:
    b, kd, h, w = proj.shape
    d = 2 * r + 1
    windows = F.unfold(F.pad(proj, [r] * 4, mode="reflect"), d).view(b, kd, d * d, h, w)
    t = temp.exp().clamp(1e-4, 1e4)
    return F.softmax(t * (windows * proj.unsqueeze(2)).sum(1), dim=1)


def _adaptive_conv(source: torch.Tensor, kernel: torch.Tensor, r: int) -> torch.Tensor:
    """FeatUp's AdaptiveConv on the reflect-padded source: out[c,i,j] = sum_p pad[c, i+p] kernel[p, i, j]."""
    b, c, h, w = source.shape
    d = 2 * r + 1
    windows = F.unfold(F.pad(source, [r] * 4, mode="reflect"), d).view(b, c, d * d, h, w)
    return (windows * kernel.unsqueeze(1)).sum(2)


def featup_reference(sd: dict, prefix: str, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """FeatUp's JBUStack forward (four JBULearnedRange 2x stages, then the fixup residual)."""
    n = 1
    while f"{prefix}up{n}.range_temp" in sd:
        p = lambda k: sd[f"{prefix}up{n}.{k}"].to(D64)
        _, _, h, w = source.shape
        g = F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w))
        proj = _conv1x1(
            F.gelu(_conv1x1(g, p("range_proj.0.weight"), p("range_proj.0.bias"))),
            *map(p, ("range_proj.3.weight", "range_proj.3.bias")),
        )
        kernel = _range_kernel(proj, p("range_temp"), 3) * _spatial_kernel(p("sigma_spatial"), 7)
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        hidden = F.gelu(_conv1x1(torch.cat([kernel, g], 1), p("fixup_proj.0.weight"), p("fixup_proj.0.bias")))
        kernel = kernel + 0.1 * _conv1x1(hidden, p("fixup_proj.3.weight"), p("fixup_proj.3.bias"))
        hr = F.interpolate(source, (2 * h, 2 * w), mode="bicubic", align_corners=False)
        source = _adaptive_conv(hr, kernel, 3)
        n += 1
    final = _conv1x1(source, sd[f"{prefix}fixup_proj.1.weight"].to(D64), sd[f"{prefix}fixup_proj.1.bias"].to(D64))
    return final * 0.1 + source


def featup_checkpoint(dim: int = 8, stages: int = 4, seed: int = 0) -> dict:
    """A Lightning checkpoint shaped like FeatUp's released ones (random weights)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.3: s * torch.randn(shape, generator=g)
    sd = {"model.0.patch.weight": rnd(4, 3), "model.1.norm.weight": rnd(dim), "downsampler.w": rnd(2)}
    for n in range(1, stages + 1):
        p = f"upsampler.up{n}."
        sd[p + "range_temp"] = rnd(s=0.5).reshape(())
        sd[p + "sigma_spatial"] = (1.0 + rnd(s=0.2)).reshape(())
        sd[p + "range_proj.0.weight"], sd[p + "range_proj.0.bias"] = rnd(32, 3, 1, 1, s=0.6), rnd(32)
        sd[p + "range_proj.3.weight"], sd[p + "range_proj.3.bias"] = rnd(32, 32, 1, 1), rnd(32)
        sd[p + "fixup_proj.0.weight"], sd[p + "fixup_proj.0.bias"] = rnd(49, 52, 1, 1), rnd(49)
        sd[p + "fixup_proj.3.weight"], sd[p + "fixup_proj.3.bias"] = rnd(49, 49, 1, 1, s=0.1), rnd(49, s=0.01)
    sd["upsampler.fixup_proj.1.weight"], sd["upsampler.fixup_proj.1.bias"] = rnd(dim, dim, 1, 1), rnd(dim)
    return {"state_dict": sd, "hyper_parameters": {"model_type": "dinov2"}, "epoch": 1}


def test_converted_featup_checkpoint_reproduces_featup():
    ckpt = featup_checkpoint()
    converted = convert_featup_jbu(ckpt)
    assert (converted.factor, converted.dim, converted.patch_size) == (16, 8, 14)
    assert converted.upsampler == {
        "name": "featup",
        "kernel_size": 7,
        "key_dim": 32,
        "pre_upsample": "bicubic",
        "fixup": True,
        "border": "reflect",
        "factor_order": "descending",
    }
    assert any("model.*" in n and "downsampler.*" in n for n in converted.notes)
    up = converted.build().double()
    torch.manual_seed(5)
    source, images = torch.randn(1, 8, 2, 3, dtype=D64), torch.rand(1, 3, 64, 96, dtype=D64)
    want = featup_reference(ckpt["state_dict"], "upsampler.", source, whiten(images))
    got = up(images, source, None)
    assert got.shape == (1, 8, 32, 48)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # and in float32, as it would run
    torch.testing.assert_close(
        converted.build()(images.float(), source.float(), None), want.float(), rtol=1e-4, atol=1e-5
    )


def test_featup_guidance_whitening_other_than_imagenet_is_folded_in(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ckpt = featup_checkpoint(dim=4, stages=2, seed=1)
    converted = convert_featup_jbu(ckpt, patch_size=16, guidance_mean=mean, guidance_std=std)
    up = converted.build().double()
    assert up.factor == 4 and up.patch_size == 16
    torch.manual_seed(6)
    source, images = torch.randn(1, 4, 4, 5, dtype=D64), torch.rand(1, 3, 32, 40, dtype=D64)
    want = featup_reference(ckpt["state_dict"], "upsampler.", source, whiten(images, mean, std))
    torch.testing.assert_close(up(images, source, None), want, rtol=1e-6, atol=1e-6)
    loaded = load_converted(save_converted(tmp_path / "up.safetensors", converted)).double()
    assert loaded.build_config == up.build_config and torch.equal(
        loaded(images, source, None), up(images, source, None)
    )


def test_featup_layouts_that_do_not_fit_are_one_line_errors():
    sd = featup_checkpoint(stages=2)["state_dict"]
    with pytest.raises(ConversionError, match="no FeatUp JBU stack in the checkpoint"):
        convert_featup_jbu({"w": torch.zeros(1)})
    bad = {k: v for k, v in sd.items() if k != "upsampler.fixup_proj.1.weight"}
    with pytest.raises(ConversionError, match="no final 'upsampler.fixup_proj.1.weight'"):
        convert_featup_jbu(bad)
    bad = dict(sd, **{"upsampler.up2.range_proj.0.weight": torch.zeros(32, 4, 1, 1)})
    with pytest.raises(ConversionError, match=r"up2.range_proj.0 takes \(4, 1, 1\) guidance; featup takes RGB"):
        convert_featup_jbu(bad)
    bad = dict(sd, **{"upsampler.up1.extra.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="unexpected keys upsampler.up1.extra.weight"):
        convert_featup_jbu(bad)
    bad = {k.replace("up2.", "up3."): v for k, v in sd.items()}
    with pytest.raises(ConversionError, match=r"stages \[1, 3\] are not up1..upN"):
        convert_featup_jbu(bad)


# ----------------------------------------------------------------------------- NVlabs FeatSharp reference

HEADS = 16


def _nvlabs_jbu(sd: dict, at: str, source: torch.Tensor, guidance: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """NVlabs JBUStack: per level pool the guidance, JBULevel (alphas, bilinear, reflect, no fixup)."""
    for j, f in enumerate(factors):
        p = lambda k: sd[f"{at}{j}.{k}"].to(D64)
        _, _, h, w = source.shape
        g = F.adaptive_avg_pool2d(guidance, (h * f, w * f))
        proj = _conv1x1(
            F.gelu(_conv1x1(g, p("range_proj.0.weight"), p("range_proj.0.bias"))),
            *map(p, ("range_proj.2.weight", "range_proj.2.bias")),
        )
        range_kernel = p("range_alpha").exp() * _range_kernel(proj, p("range_temp"), 3)
        kernel = range_kernel * (p("spatial_alpha").exp() * _spatial_kernel(p("sigma_spatial"), 7))
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        hr = F.interpolate(source, (h * f, w * f), mode="bilinear", align_corners=False)
        source = _adaptive_conv(hr, kernel, 3)
    return source


def _nvlabs_block(sd: dict, p: str, x: torch.Tensor, side: int, window: int, dim: int) -> torch.Tensor:
    """DINOv2 Block with NVlabs' AlibiAttention (dense attention + window mask) and SwiGLUFFNFused; x [B,N,W]."""
    t = lambda k: sd[p + k].to(D64)
    b, n, width = x.shape
    head_dim = width // HEADS
    padded = t("attn.qkv.weight").shape[0] // (3 * HEADS)
    y = F.layer_norm(x, (width,), t("norm1.weight"), t("norm1.bias"))
    q, k, v = (y @ t("attn.qkv.weight").T).reshape(b, n, 3, HEADS, padded).permute(2, 0, 3, 1, 4)
    rows, cols = torch.arange(n) // side, torch.arange(n) % side
    dr, dc = rows[:, None] - rows[None], cols[:, None] - cols[None]
    inside = (dr.abs() <= window // 2) & (dc.abs() <= window // 2)
    slopes = 1 / 2 ** (torch.arange(2, HEADS + 2) // 2).to(D64)
    delta = torch.stack([dr if h % 2 == 0 else dc for h in range(HEADS)]).to(D64)
    scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5 - slopes.view(-1, 1, 1) * delta.abs()
    attn = scores.masked_fill(~inside, float("-inf")).softmax(-1)
    out = (attn @ v)[..., :head_dim].transpose(1, 2).reshape(b, n, width)
    x = x + t("ls1.gamma") * (out @ t("attn.proj.weight").T + t("attn.proj.bias"))
    z = F.layer_norm(x, (width,), t("norm2.weight"), t("norm2.bias"))
    x1, x2 = (z @ t("mlp.w12.weight").T + t("mlp.w12.bias")).chunk(2, dim=-1)
    ffn = t("ls2.gamma") * ((F.silu(x1) * x2) @ t("mlp.w3.weight").T + t("mlp.w3.bias"))
    return x[..., :dim] + ffn


def nvlabs_featsharp_reference(sd, source, guidance, tiles, factor, window) -> torch.Tensor:
    """AttentionLevel.forward with inputs [jbu, tiles]: guidance bilinearly resized to the output grid first."""
    p = "upsampler.ups.0."
    b, c, h, w = source.shape
    side = h * factor
    guidance = F.interpolate(guidance, (side, side), mode="bilinear", align_corners=False)
    factors = sorted(int(f) for f in _ascending_primes(factor))
    jbu = _nvlabs_jbu(sd, p + "jbu.ups.", source, guidance, factors)
    pos = sd[p + "tile_pos"].to(D64).repeat_interleave(h, dim=2).repeat_interleave(w, dim=3)
    buff = torch.cat([jbu, tiles + pos], dim=1).flatten(2).transpose(1, 2)
    out = _nvlabs_block(sd, p + "block.", buff, side, window, c)
    return out.transpose(1, 2).reshape(b, c, side, side)


def _ascending_primes(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def nvlabs_checkpoint(dim: int, factor: int, ups_type: str, seed: int = 0, pad_qk: float = 0.0) -> dict:
    """A FeatSharp train.py checkpoint (random weights): model_state with upsampler.ups.0.*, upsample_args."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.3: s * torch.randn(shape, generator=g)
    width = 2 * dim
    head_dim = width // HEADS
    padded = 1 << (head_dim - 1).bit_length()
    hidden = (int(int(width * 4.0) * 2 / 3) + 7) // 8 * 8
    p = "upsampler.ups.0."
    sd = {"normalizer.alpha": rnd(3), "bias_buffer.module.buffer": rnd(dim, 2, 2)}
    for j in range(len(_ascending_primes(factor))):
        q = f"{p}jbu.ups.{j}."
        sd[q + "range_temp"], sd[q + "sigma_spatial"] = rnd(s=0.5).reshape(()), (1 + rnd(s=0.2)).reshape(())
        sd[q + "range_alpha"], sd[q + "spatial_alpha"] = rnd(s=0.5).reshape(()), rnd(s=0.5).reshape(())
        sd[q + "range_proj.0.weight"], sd[q + "range_proj.0.bias"] = rnd(32, 3, 1, 1, s=0.6), rnd(32)
        sd[q + "range_proj.2.weight"], sd[q + "range_proj.2.bias"] = rnd(32, 32, 1, 1), rnd(32)
    sd[p + "tile_pos"] = rnd(1, dim, factor, factor)
    blk = p + "block."
    sd[blk + "norm1.weight"], sd[blk + "norm1.bias"] = 1 + rnd(width), rnd(width)
    qkv = rnd(3, HEADS, padded, width)
    qkv[:2, :, head_dim:] *= pad_qk  # q/k padding: zero unless asked; v padding stays random (it is cut)
    sd[blk + "attn.qkv.weight"] = qkv.reshape(3 * HEADS * padded, width)
    sd[blk + "attn.proj.weight"], sd[blk + "attn.proj.bias"] = rnd(width, width), rnd(width)
    sd[blk + "ls1.gamma"], sd[blk + "ls2.gamma"] = 0.5 + rnd(width), 0.5 + rnd(dim)
    sd[blk + "norm2.weight"], sd[blk + "norm2.bias"] = 1 + rnd(width), rnd(width)
    sd[blk + "mlp.w12.weight"], sd[blk + "mlp.w12.bias"] = rnd(2 * hidden, width), rnd(2 * hidden)
    sd[blk + "mlp.w3.weight"], sd[blk + "mlp.w3.bias"] = rnd(dim, hidden), rnd(dim)
    return {"model_state": sd, "upsample_args": {"type": ups_type, "factor": factor, "normalizer": "phi-s"}}


@pytest.mark.parametrize("dim,factor,window", [(16, 6, 5), (24, 2, 7)])  # head dims 2 and 3 (padded to 4)
def test_converted_nvlabs_featsharp_checkpoint_reproduces_featsharp(dim, factor, window):
    ckpt = nvlabs_checkpoint(dim, factor, f"featsharp.wnd-{window}")
    converted = convert_featsharp(ckpt, patch_size=4)
    opts = converted.upsampler
    assert opts["base"] == {
        "name": "featup",
        "kernel_size": 7,
        "key_dim": 32,
        "pre_upsample": "bilinear",
        "fixup": False,
        "border": "reflect",
        "factor_order": "ascending",
    }
    assert (opts["inputs"], opts["residual"], opts["num_heads"], opts["window_size"]) == (
        ["base", "tiles"],
        "base",
        16,
        window,
    )
    assert opts["mlp_hidden"] == (int(2 * dim * 4 * 2 / 3) + 7) // 8 * 8  # NVlabs' width: ~2x radiosharp's default
    up = converted.build().double()
    assert [s.factor for s in up.base.jbu.stages] == _ascending_primes(factor)
    torch.manual_seed(7)
    b, h = 2, 3
    source = torch.randn(b, dim, h, h, dtype=D64)
    tile_features = torch.randn(b * factor * factor, dim, h, h, dtype=D64)
    images = torch.rand(b, 3, h * factor, h * factor, dtype=D64)  # at the output grid: the guidance resizes agree
    mosaic = tile_features.view(b, factor, factor, dim, h, h).permute(0, 3, 1, 4, 2, 5).reshape(b, dim, h * factor, -1)
    want = nvlabs_featsharp_reference(ckpt["model_state"], source, whiten(images), mosaic, factor, window)
    got = up(images, source, None, tile_features=tile_features)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_nvlabs_layouts_that_do_not_fit_are_one_line_errors():
    with pytest.raises(ConversionError, match="q/k padding has nonzero weights"):
        convert_featsharp(nvlabs_checkpoint(24, 2, "featsharp", pad_qk=1.0))
    ckpt = nvlabs_checkpoint(16, 2, "featsharp")
    with pytest.raises(ConversionError, match="input 'jafar' has no radiosharp featsharp counterpart"):
        convert_featsharp(ckpt, ups_type="featsharp.no-ln.inputs-jafar-tiles")
    with pytest.raises(ConversionError, match=r"RoPE q/k embeddings \(rope-qk\) has no featsharp option"):
        convert_featsharp(ckpt, ups_type="featsharp.rope-qk")
    with pytest.raises(ConversionError, match="only featsharp\\[...\\] and jbu_stack convert"):
        convert_featsharp(ckpt, ups_type="loftup")
    prog = dict(ckpt["model_state"], **{"upsampler.ups.1.block.ls1.gamma": torch.ones(32)})
    with pytest.raises(ConversionError, match=r"2 levels \(progressive\); featsharp has one"):
        convert_featsharp({"model_state": prog, "upsample_args": ckpt["upsample_args"]})
    with pytest.raises(ConversionError, match="tile_pos is for factor 2, the checkpoint says 4"):
        convert_featsharp(ckpt, factor=4)
    # no-ln declared but the checkpoint has LayerNorm weights: they are left unread
    with pytest.raises(ConversionError, match="unexpected keys upsampler.ups.0.block.norm1.bias"):
        convert_featsharp(ckpt, ups_type="featsharp.no-ln")


def test_nvlabs_jbu_stack_converts_to_featup_ascending_reflect():
    full = nvlabs_checkpoint(8, 6, "featsharp")["model_state"]
    sd = {k.replace("upsampler.ups.0.jbu.", "upsampler.inner."): v for k, v in full.items() if ".jbu." in k}
    up = convert_featsharp({"model_state": sd, "upsample_args": {"type": "jbu_stack", "factor": 6}}, dim=8).build()
    up = up.double()
    torch.manual_seed(8)
    source, images = torch.randn(1, 8, 4, 4, dtype=D64), torch.rand(1, 3, 48, 48, dtype=D64)
    want = _nvlabs_jbu(sd, "upsampler.inner.ups.", source, whiten(images), [2, 3])  # HiResWrapper: the full image
    torch.testing.assert_close(up(images, source, None), want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- CLI


def _run_main(argv, capsys) -> tuple[int, str, str]:
    code = convert_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    jafar = tmp_path / "jafar.pt"
    torch.save(nvlabs_checkpoint(16, 2, "featsharp.no-ln.inputs-jafar-tiles"), jafar)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "obj": Path("x")}, pickled)
    cases = [
        (["featup-jbu", tmp_path / "missing.ckpt", "--out", out], "checkpoint not found"),
        (["featup-jbu", bad, "--out", out], "no FeatUp JBU stack in the checkpoint"),
        (["featsharp", jafar, "--out", out], "input 'jafar' has no radiosharp featsharp counterpart"),
        (["featup-jbu", pickled, "--out", out], "rerun with --trust-pickle"),
        (["featup-jbu", bad, "--out", out, "--factor", "2"], "apply to kind featsharp only"),
    ]
    for argv, message in cases:
        code, stdout, stderr = _run_main(argv, capsys)
        assert code == 2, (argv, stderr)
        assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["featupp", str(bad), "--out", str(out)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "invalid choice: 'featupp'" in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_cli_round_trip_featsharp_file_build_same_forward(tmp_path, capsys):
    ckpt = nvlabs_checkpoint(16, 2, "featsharp.wnd-3")
    path = tmp_path / "nvlabs.pth"
    torch.save(ckpt, path)
    code, stdout, _ = _run_main(["featsharp", path, "--out", tmp_path / "conv", "--patch-size", "4"], capsys)
    assert code == 0 and "-> featsharp x2, dim 16, patch 4" in stdout and '"factor_order": "ascending"' in stdout
    written = tmp_path / "conv" / "upsampler.safetensors"
    meta, state = read_converted(written)
    assert meta["upsampler"]["name"] == "featsharp" and meta["upsampler"]["base"]["border"] == "reflect"
    rebuilt = radiosharp.build_upsampler(
        meta["upsampler"], factor=meta["factor"], dim=meta["dim"], patch_size=meta["patch_size"]
    )
    rebuilt.load_state_dict(state, strict=True)
    direct = convert_featsharp(ckpt, patch_size=4).build()
    torch.manual_seed(9)
    source, tiles, images = torch.randn(1, 16, 4, 4), torch.randn(4, 16, 4, 4), torch.rand(1, 3, 8, 8)
    assert torch.equal(rebuilt.eval()(images, source, None, tiles), direct(images, source, None, tiles))
    assert not [p for p in written.parent.iterdir() if p.name != "upsampler.safetensors"]  # no temp file left


@pytest.mark.subprocess
def test_cli_module_entry_point_featup_round_trip_and_missing_file(tmp_path):
    ckpt = featup_checkpoint(dim=4, stages=2, seed=3)
    path = tmp_path / "featup.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "featup_x4.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "radiosharp.convert", "featup-jbu", str(path), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "-> featup x4, dim 4, patch 14" in done.stdout and f"wrote {out}" in done.stdout
    up = load_converted(out).double()
    torch.manual_seed(10)
    source, images = torch.randn(1, 4, 3, 4, dtype=D64), torch.rand(1, 3, 24, 32, dtype=D64)
    want = featup_reference(ckpt["state_dict"], "upsampler.", source, whiten(images))
    torch.testing.assert_close(up(images, source, None), want, rtol=1e-9, atol=1e-9)
    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.safetensors")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "checkpoint not found" in missing.stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("border", BORDERS)
def test_fixup_and_reflect_paths_are_differentiable(border):
    torch.manual_seed(11)
    stage = perturbed(JointBilateralUpsampler(2, kernel_size=3, key_dim=2, fixup=True, border=border), seed=11)
    features = torch.randn(1, 2, 3, 2, dtype=D64, requires_grad=True)
    images = torch.rand(1, 3, 6, 4, dtype=D64)
    assert torch.autograd.gradcheck(lambda f: stage(f, images), (features,))
    plain = JointBilateralUpsampler(2, kernel_size=3, key_dim=2, border=border).double()
    plain.load_state_dict(stage.state_dict(), strict=False)
    assert torch.autograd.gradcheck(lambda f: plain(f, images), (features,))

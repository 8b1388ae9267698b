"""The memory-lean neighbourhood-attention kernel and the JBU filter built on it.

Both must equal naive references (unfold + masked softmax; FeatUp's JBU formula
written out), forward and backward, and keep far less memory for backward than the
unfold version does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from upsamplers._kernels import neighborhood_attention, neighborhood_attention_reference, window_offsets
from upsamplers.jbu import JBUStack, JointBilateralUpsampler, joint_bilateral_filter

D64 = torch.float64


def _qkvb(b, n, d, dv, h, w, k, dtype=D64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, d, h, w, generator=g, dtype=dtype)
    key = torch.randn(b, n, d, h, w, generator=g, dtype=dtype)
    v = torch.randn(b, n, dv, h, w, generator=g, dtype=dtype)
    bias = torch.randn(n, k * k, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, key, v, bias)]


@pytest.mark.parametrize("h,w,k", [(5, 6, 3), (6, 5, 5), (4, 4, 7), (2, 3, 5), (9, 7, 7), (3, 3, 1)])
def test_attention_matches_unfold_reference_forward_and_backward(h, w, k):
    q, key, v, bias = _qkvb(2, 3, 4, 5, h, w, k, seed=h * 10 + w)
    out = neighborhood_attention(q, key, v, k, bias, scale=0.7)
    ref = neighborhood_attention_reference(q, key, v, k, bias, scale=0.7)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, key, v, bias), grad_out)
    theirs = torch.autograd.grad(ref, (q, key, v, bias), grad_out)
    for name, a, b in zip("q k v bias".split(), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"grad of {name}")


def test_attention_gradcheck_all_inputs():
    q, key, v, bias = _qkvb(1, 2, 3, 2, 3, 4, 3, seed=1)
    assert torch.autograd.gradcheck(lambda q, k, v, b: neighborhood_attention(q, k, v, 3, b, 0.5), (q, key, v, bias))


def test_attention_without_bias_equals_zero_bias_and_border_keys_are_masked():
    q, key, v, _ = _qkvb(1, 1, 2, 3, 4, 4, 3, seed=2)
    zero = torch.zeros(1, 9, dtype=D64)
    torch.testing.assert_close(neighborhood_attention(q, key, v, 3), neighborhood_attention(q, key, v, 3, zero))
    # A huge bias on the top-left offset: interior pixels copy their top-left neighbour;
    # the corner pixel, whose top-left key is outside the map, softmaxes over the 4 keys
    # that exist (offsets (0,0), (0,1), (1,0), (1,1) = window indices 4, 5, 7, 8).
    bias = torch.zeros(1, 9, dtype=D64)
    bias[0, 0] = 1e4
    q, key, v = q.detach(), key.detach(), v.detach()
    out = neighborhood_attention(q, key, v, 3, bias)
    torch.testing.assert_close(out[..., 1:, 1:], v[..., :-1, :-1])
    corner_keys = key[0, 0, :, :2, :2].reshape(2, 4)
    corner_vals = v[0, 0, :, :2, :2].reshape(3, 4)
    weights = (q[0, 0, :, 0, 0] @ corner_keys).softmax(0)
    torch.testing.assert_close(out[0, 0, :, 0, 0], corner_vals @ weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_low_precision_inputs_keep_their_dtype(dtype):
    q, key, v, bias = _qkvb(1, 2, 8, 4, 6, 6, 5, dtype=torch.float32, seed=3)
    ref = neighborhood_attention_reference(*(t.detach().double() for t in (q, key, v)), 5, bias.detach().double())
    low = [t.detach().to(dtype).requires_grad_() for t in (q, key, v)]
    out = neighborhood_attention(*low, 5, bias.detach())
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == dtype for t in low)


def test_attention_rejects_bad_inputs():
    q, key, v, bias = _qkvb(1, 2, 3, 3, 4, 4, 3)
    with pytest.raises(ValueError, match="odd"):
        neighborhood_attention(q, key, v, 4)
    with pytest.raises(ValueError, match=r"bias must be \[heads, kernel_size\^2\]"):
        neighborhood_attention(q, key, v, 5, bias)
    with pytest.raises(ValueError, match="q and k"):
        neighborhood_attention(q, key[:, :1], v, 3)


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward (distinct storages of the saved tensors)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_attention_backward_memory_is_independent_of_the_window():
    """The unfold reference keeps k*k copies of k and v; the kernel keeps q, k, v, out, lse."""
    b, n, d, h, w = 1, 2, 16, 24, 24
    sizes = {}
    for name, fn in (("lean", neighborhood_attention), ("unfold", neighborhood_attention_reference)):
        for k in (3, 7):
            q, key, v, bias = _qkvb(b, n, d, d, h, w, k, dtype=torch.float32)
            sizes[name, k] = _saved_bytes(lambda: fn(q, key, v, k, bias))
    map_bytes = b * n * d * h * w * 4
    assert sizes["lean", 7] <= 1.01 * sizes["lean", 3]  # only the [heads, k*k] bias grows
    assert sizes["lean", 7] <= 4.5 * map_bytes  # q, k, v, out (+ a small log-sum-exp map)
    assert sizes["unfold", 7] > 10 * sizes["lean", 7]


# ----------------------------------------------------------------------------- JBU


def _naive_jbu(stage: JointBilateralUpsampler, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """FeatUp's formula written out: range softmax over the window, times the spatial
    Gaussian on offsets scaled to [-1, 1], renormalized; out-of-map taps excluded."""
    k = stage.kernel_size
    r = k // 2
    size = (features.shape[-2] * stage.factor, features.shape[-1] * stage.factor)
    keys = stage.range_proj(stage.guidance(images, size))
    up = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    b, c, h, w = up.shape
    dk = keys.shape[1]
    win_keys = F.unfold(keys, k, padding=r).view(b, dk, k * k, h, w)
    win_feats = F.unfold(up, k, padding=r).view(b, c, k * k, h, w)
    inside = F.unfold(torch.ones(1, 1, h, w, dtype=up.dtype), k, padding=r).view(1, k * k, h, w) > 0
    temperature = stage.log_range_temperature.exp().clamp(1e-4, 1e4)
    logits = temperature * (keys.unsqueeze(2) * win_keys).sum(1)
    range_kernel = logits.masked_fill(~inside, float("-inf")).softmax(dim=1)
    ticks = torch.linspace(-1, 1, k, dtype=up.dtype)
    yy, xx = torch.meshgrid(ticks, ticks, indexing="ij")
    spatial = torch.exp(-(yy**2 + xx**2) / (2 * stage.sigma_spatial**2)).reshape(1, k * k, 1, 1)
    kernel = range_kernel * spatial
    kernel = kernel / kernel.sum(1, keepdim=True)
    return (kernel.unsqueeze(1) * win_feats).sum(2)


@pytest.mark.parametrize("factor,k", [(2, 7), (3, 5), (7, 3)])
def test_jbu_stage_matches_featup_formula_forward_and_backward(factor, k):
    torch.manual_seed(factor)
    stage = JointBilateralUpsampler(factor, kernel_size=k, key_dim=6).double()
    with torch.no_grad():  # move off the init so temperature and sigma matter
        stage.log_range_temperature.fill_(0.3)
        stage.sigma_spatial.fill_(0.8)
    features = torch.randn(2, 5, 3, 4, dtype=D64, requires_grad=True)
    images = torch.rand(2, 3, 3 * factor * 2, 4 * factor * 2, dtype=D64)
    out, ref = stage(features, images), _naive_jbu(stage, features, images)
    assert out.shape == (2, 5, 3 * factor, 4 * factor)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    params = [features, stage.sigma_spatial, stage.log_range_temperature, *stage.range_proj.parameters()]
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert stage.sigma_spatial.grad is None  # autograd.grad does not accumulate


def test_jbu_spatial_kernel_gradient_reaches_every_tap():
    """FeatUp's CUDA kernel filled only 7 of 49 taps of this gradient; ours fills all."""
    k = 7
    torch.manual_seed(0)
    features = torch.randn(2, 4, 10, 11, dtype=D64)
    queries, keys = torch.randn(2, 3, 10, 11, dtype=D64), torch.randn(2, 3, 10, 11, dtype=D64)
    spatial = torch.randn(1, k * k, dtype=D64, requires_grad=True)
    weights = torch.randn(2, 4, 10, 11, dtype=D64)
    (joint_bilateral_filter(features, queries, keys, spatial, k) * weights).sum().backward()
    ref_spatial = spatial.detach().clone().requires_grad_()
    ref = neighborhood_attention_reference(queries[:, None], keys[:, None], features[:, None], k, ref_spatial)
    (ref.squeeze(1) * weights).sum().backward()
    assert (spatial.grad.abs() > 0).all(), f"zero taps: {(spatial.grad == 0).sum().item()} of {k * k}"
    torch.testing.assert_close(spatial.grad, ref_spatial.grad, rtol=1e-10, atol=1e-12)


def test_jbu_filter_gradcheck():
    g = torch.Generator().manual_seed(4)
    args = [
        torch.randn(1, 2, 4, 3, generator=g, dtype=D64),
        torch.randn(1, 2, 4, 3, generator=g, dtype=D64),
        torch.randn(1, 2, 4, 3, generator=g, dtype=D64),
        torch.randn(1, 9, generator=g, dtype=D64),
    ]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda f, q, k, s: joint_bilateral_filter(f, q, k, s, 3), args)


def test_jbu_stack_stages_follow_prime_factors():
    assert [s.factor for s in JBUStack(14).stages] == [7, 2]
    assert [s.factor for s in JBUStack(4).stages] == [2, 2]
    assert [s.factor for s in JBUStack(12).stages] == [3, 2, 2]
    assert len(JBUStack(1).stages) == 0
    features = torch.randn(1, 3, 2, 3)
    assert torch.equal(JBUStack(1)(features, torch.rand(1, 3, 28, 42)), features)
    assert JBUStack(14)(features, torch.rand(1, 3, 28, 42)).shape == (1, 3, 28, 42)


def test_window_offsets_are_row_major():
    assert window_offsets(3)[0] == (-1, -1) and window_offsets(3)[4] == (0, 0) and window_offsets(3)[5] == (0, 1)

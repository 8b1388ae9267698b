"""The shared attention pieces of the attention-based upsamplers (upsamplers/_attention.py)."""

from __future__ import annotations

import math

import pytest
import torch

from upsamplers._attention import chunked_cross_attention, grid_positions, rope_2d


def test_chunked_attention_equals_the_formula_and_the_unchunked_call():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (37, 11, 11))
    reference = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    for chunk in (None, 1, 5, 37, 100):
        torch.testing.assert_close(chunked_cross_attention(q, k, v, chunk), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_chunk"):
        chunked_cross_attention(q, k, v, 0)
    out = chunked_cross_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), reference, atol=0.05)


def test_rope_makes_logits_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)

    def logit(pq, pk):
        return (rope_2d(q, torch.tensor([pq])) * rope_2d(k, torch.tensor([pk]))).sum()

    a = logit([0.1, -0.3], [0.4, 0.2])
    b = logit([0.6, 0.1], [0.9, 0.6])  # both positions shifted by (0.5, 0.4)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, logit([0.1, -0.3], [0.5, 0.2]))
    x = torch.randn(2, 4, 6, 8, generator=g)
    pos = grid_positions(2, 3)
    assert torch.allclose(rope_2d(x, pos).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    assert rope_2d(x.bfloat16(), pos).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_2d(torch.randn(3, 6), grid_positions(1, 3))


def test_grid_positions_are_pixel_centres_in_minus_one_one():
    pos = grid_positions(2, 4)
    assert pos.shape == (8, 2)
    assert torch.allclose(pos[0], torch.tensor([-0.5, -0.75])) and torch.allclose(pos[-1], torch.tensor([0.5, 0.75]))

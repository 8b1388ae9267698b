"""Per-teacher adaptor heads: RADIO's "MLP-v2".

Each teacher gets its own small MLP from the shared backbone tokens to that
teacher's space, so the backbone is free to hold one representation for all
teachers while each head undoes the teacher-specific parts.

Layout (as RADIO's ``MLP2``): ``Linear(in, hidden)``, then ``num_inner`` residual
blocks ``x + Linear(GELU(LayerNorm(x)))``, then ``Linear(GELU(LayerNorm(x)), out)``.
The inner blocks are residual so that deeper heads start close to the shallow one.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPv2(nn.Module):
    """Token-wise MLP head ``[..., in_dim] -> [..., out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_inner: int = 1) -> None:
        super().__init__()
        if num_inner < 0:
            raise ValueError(f"adaptor_inner must be >= 0, got {num_inner}")
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.inner = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))
            for _ in range(num_inner)
        )
        self.final = nn.Sequential(nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc1(tokens)
        for block in self.inner:
            x = x + block(x)
        return self.final(x)


class TeacherAdaptor(nn.Module):
    """One teacher's heads: ``summary`` (absent when the teacher has none) and ``features``."""

    def __init__(self, in_dim: int, hidden_dim: int, feature_dim: int, summary_dim: int | None, num_inner: int) -> None:
        super().__init__()
        self.summary = MLPv2(in_dim, hidden_dim, summary_dim, num_inner) if summary_dim else None
        self.features = MLPv2(in_dim, hidden_dim, feature_dim, num_inner)

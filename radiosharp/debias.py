"""The de-bias buffer: a learned map ``g`` added to every teacher output (FeatSharp sec. 3.4).

ViT features carry fixed, position-bound artifacts (``ViT(x) = f(x) + g(E_pos) + ...``).
Multi-view consistency can only explain them as a pattern that stays put in the
view, so a learned additive buffer at the teacher's output absorbs (and removes)
them. It is applied to the global view and to every tile alike, before upsampling.
"""

from __future__ import annotations

import torch
from torch import nn

from radiosharp.images import resize


class Debias(nn.Module):
    """``features + g`` with ``g [C,h,w]`` learned (zeros at init); bilinearly resized to other grids."""

    def __init__(self, dim: int, grid: int | tuple[int, int]) -> None:
        super().__init__()
        gh, gw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        if dim < 1 or gh < 1 or gw < 1:
            raise ValueError(f"Debias needs dim >= 1 and a positive grid, got dim={dim}, grid={grid}")
        self.dim, self.grid = dim, (gh, gw)
        self.bias = nn.Parameter(torch.zeros(dim, gh, gw))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.dim:
            raise ValueError(f"Debias({self.dim}): expected features [B,{self.dim},h,w], got {tuple(features.shape)}")
        g = self.bias.unsqueeze(0)
        if tuple(features.shape[-2:]) != self.grid:
            g = resize(g, tuple(features.shape[-2:]))
        return features + g.to(features.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}"

"""Cropped position embedding (CPE): one position table at the maximum resolution.

RADIO trains one learned position table sized for the largest input it will ever
see (e.g. 2048 px -> a 128x128 grid for a /16 ViT). Every input reads its position
embeddings from that table:

* training: each *sample* reads a random sub-window of the table (area 10-100 %,
  aspect ratio within 3/4..4/3, random location), resampled to the input's patch
  grid. The model never sees the same absolute positions twice, so it cannot tie
  features to an input size and it generalises across resolutions (and ignores
  the "mode switch" between low and high resolution).
* evaluation: the largest window of the input's aspect ratio, anchored top-left
  (the whole table for a square input), is resampled to the input grid,
  deterministically.

Windows follow the input's aspect ratio (training jitters it by up to
``max_aspect``), so a non-square input never sees a stretched table.

Both cases are one batched ``F.grid_sample`` with one affine grid per sample; the
evaluation grid is the identity window, which equals ``F.interpolate(...,
mode="bilinear", align_corners=False)`` of the table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CroppedPositionEmbedding(nn.Module):
    """A learned ``[D, rows, cols]`` table read through per-sample windows."""

    def __init__(
        self, embed_dim: int, table_grid: tuple[int, int], min_area: float = 0.1, max_aspect: float = 4 / 3
    ) -> None:
        super().__init__()
        if not 0.0 < min_area <= 1.0:
            raise ValueError(f"cpe_min_area must be in (0, 1], got {min_area}")
        if max_aspect < 1.0:
            raise ValueError(f"cpe_max_aspect must be >= 1 (e.g. 4/3), got {max_aspect}")
        rows, cols = table_grid
        if rows < 1 or cols < 1:
            raise ValueError(f"position table grid must be positive, got {table_grid}")
        self.min_area = float(min_area)
        self.max_aspect = float(max_aspect)
        self.table = nn.Parameter(torch.randn(1, embed_dim, rows, cols) * embed_dim**-0.5)

    @property
    def table_grid(self) -> tuple[int, int]:
        return tuple(self.table.shape[-2:])  # type: ignore[return-value]

    def relative_aspect(self, grid: tuple[int, int]) -> float:
        """The input grid's aspect (cols/rows) in units of the table's own aspect."""
        rows, cols = self.table_grid
        return (grid[1] / grid[0]) / (cols / rows)

    def sample_windows(self, batch: int, device: torch.device, relative_aspect: float = 1.0) -> torch.Tensor:
        """Random windows ``[B, 4]`` as (x0, y0, width, height) fractions of the table.

        Area is uniform in [min_area, 1]; the aspect ratio (width/height, in table
        fractions) is log-uniform in [1/max_aspect, max_aspect]; sides are clamped to
        the table and the corner is uniform over the positions that keep the window
        inside it.
        """
        area = torch.empty(batch, device=device).uniform_(self.min_area, 1.0)
        log_aspect = math.log(self.max_aspect)
        aspect = torch.empty(batch, device=device).uniform_(-log_aspect, log_aspect).exp() * relative_aspect
        width = (area * aspect).sqrt().clamp(max=1.0)
        height = (area / aspect).sqrt().clamp(max=1.0)
        x0 = torch.rand(batch, device=device) * (1 - width)
        y0 = torch.rand(batch, device=device) * (1 - height)
        return torch.stack([x0, y0, width, height], dim=-1)

    def full_windows(self, batch: int, device: torch.device, relative_aspect: float = 1.0) -> torch.Tensor:
        """The largest top-left window of the input's aspect (the whole table when square)."""
        width, height = (1.0, 1.0 / relative_aspect) if relative_aspect >= 1 else (relative_aspect, 1.0)
        return torch.tensor([[0.0, 0.0, width, height]], device=device).expand(batch, 4)

    def read(self, windows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Resample the table inside each window to ``grid``: ``[B, D, rows, cols]``.

        A window (x0, y0, w, h) in [0,1] table fractions becomes the affine map
        ``u -> (2*x0 + w - 1) + w * u`` from the output's [-1,1] coordinates to the
        table's, so output cell centres land on evenly spaced points of the window.
        """
        x0, y0, width, height = windows.float().unbind(-1)
        zeros = torch.zeros_like(x0)
        theta = torch.stack(
            [
                torch.stack([width, zeros, 2 * x0 + width - 1], dim=-1),
                torch.stack([zeros, height, 2 * y0 + height - 1], dim=-1),
            ],
            dim=1,
        )
        batch, dim = windows.shape[0], self.table.shape[1]
        sample_grid = F.affine_grid(theta, [batch, dim, grid[0], grid[1]], align_corners=False)
        # All windows read the one table: their grids are stacked along the rows of a single
        # sampling grid, so the table's gradient is one [D, T, T] map, not one per sample.
        stacked = sample_grid.reshape(1, batch * grid[0], grid[1], 2)
        out = F.grid_sample(self.table.float(), stacked, mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(dim, batch, grid[0], grid[1]).transpose(0, 1)

    def forward(self, batch: int, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """Position embeddings ``[B, D, rows, cols]`` for ``batch`` inputs of patch grid ``grid``."""
        device = device or self.table.device
        aspect = self.relative_aspect(grid)
        if self.training:
            return self.read(self.sample_windows(batch, device, aspect), grid)
        return self.read(self.full_windows(1, device, aspect), grid).expand(batch, -1, -1, -1)

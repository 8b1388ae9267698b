"""ViTDet windowed attention for the student's blocks.

In ViTDet mode most blocks attend only within non-overlapping windows of
``window x window`` patches, which makes the cost linear in the number of patches
at high resolution; a few evenly spaced *global* blocks (always including the last)
attend over everything and carry information between windows.

Summary and register tokens are kept out of windowed blocks (as in RADIO): they pass
through a windowed block unchanged and patches in a windowed block do not see them;
they attend, and are attended to, only in global blocks. So with zero summary
tokens, one window covering the whole grid computes exactly global attention.

A grid that is not a multiple of the window is zero-padded at the bottom/right; the
padded positions are masked out as attention keys and dropped after the block, so
padding never changes a real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def global_block_indices(depth: int, num_global: int) -> list[int]:
    """Indices of the ``num_global`` evenly spaced global blocks; the last block is always one."""
    if not 1 <= num_global <= depth:
        raise ValueError(f"num_global must be between 1 and the depth ({depth}), got {num_global}")
    return sorted({round((k + 1) * depth / num_global) - 1 for k in range(num_global)})


def window_partition(grid_tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[B,h,w,D]`` -> windows ``[B*nW, window*window, D]`` plus a key mask.

    The mask is ``None`` when no padding was needed; otherwise a boolean
    ``[B*nW,1,1,window^2]``, True at real keys (SDPA's convention, which timm's
    non-fused path follows too; boolean so it fits any autocast dtype). Every window
    keeps at least one real key, since the padding is smaller than a window.
    """
    batch, rows, cols, dim = grid_tokens.shape
    pad_rows, pad_cols = (-rows) % window, (-cols) % window
    x = F.pad(grid_tokens, (0, 0, 0, pad_cols, 0, pad_rows)) if pad_rows or pad_cols else grid_tokens
    wr, wc = (rows + pad_rows) // window, (cols + pad_cols) // window
    x = x.view(batch, wr, window, wc, window, dim).permute(0, 1, 3, 2, 4, 5)
    windows = x.reshape(batch * wr * wc, window * window, dim)
    if not (pad_rows or pad_cols):
        return windows, None
    real = torch.zeros(rows + pad_rows, cols + pad_cols, dtype=torch.bool, device=grid_tokens.device)
    real[:rows, :cols] = True
    real = real.view(wr, window, wc, window).permute(0, 2, 1, 3).reshape(1, wr * wc, window * window)
    mask = real.expand(batch, -1, -1).reshape(batch * wr * wc, 1, 1, window * window)
    return windows, mask


def window_unpartition(windows: torch.Tensor, window: int, grid: tuple[int, int], batch: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B*nW, window^2, D]`` -> ``[B,h,w,D]`` (padding cropped)."""
    rows, cols = grid
    wr, wc = -(-rows // window), -(-cols // window)
    dim = windows.shape[-1]
    x = windows.view(batch, wr, wc, window, window, dim).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, wr * window, wc * window, dim)
    return x[:, :rows, :cols]


def run_windowed(
    block: nn.Module, tokens: torch.Tensor, num_prefix: int, grid: tuple[int, int], window: int
) -> torch.Tensor:
    """Run a timm ``Block`` with windowed attention on the patch tokens of ``[B, P+N, D]``."""
    batch, _, dim = tokens.shape
    prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
    windows, mask = window_partition(patches.reshape(batch, grid[0], grid[1], dim), window)
    windows = block(windows, attn_mask=mask)
    patches = window_unpartition(windows, window, grid, batch).reshape(batch, grid[0] * grid[1], dim)
    return torch.cat([prefix, patches], dim=1)

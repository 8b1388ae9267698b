"""FeatUp's learned attention downsampler: hi-res features back to a teacher's grid.

Used by multi-view training (``radiosharp.multiview``) to compare warped hi-res
features with the teacher's own low-res features. Each output cell takes a
softmax-weighted mean of the ``k x k`` hi-res pixels around its footprint, with

    logit[cell, t] = (a(x[pixel t]) * keep[cell]) * w[t] + b[t]

``a`` a 1x1 projection of the features to one logit (after dropout 0.2, as FeatUp),
``w``, ``b`` learned ``k x k`` maps (FeatUp init: ``1 + 0.01 N``, ``0.01 N``), and
``keep`` FeatUp's random 20 % per-cell mask that zeroes the content logit. The mask
is applied in TRAINING mode only (FeatUp applies it in eval too, a bug). Taps that
fall outside the map are masked out. Windows are centred on each cell's footprint,
so any size ratio works; integer ratios (the usual case) read strided views of the
padded map, so no ``C x k x k`` unfold is ever made.

How the windows are read (``window_method``, an attribute, not a weight): ``auto`` takes every tap in
one ``unfold`` when the windows are evenly spaced (every integer size ratio), whose backward is one
fold, and the tap-by-tap loop otherwise; ``taps`` always runs the loop, the reference the unfold path
is tested and measured against (``python -m radiosharp.bench downsample``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SizeLike = int | tuple[int, int]
WINDOW_METHODS = ("auto", "taps")


def _pair(size: SizeLike) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _window_starts(in_len: int, out_len: int, kernel_size: int) -> list[int]:
    """First pixel of each output cell's window, centred on the cell's footprint."""
    cell = in_len / out_len
    return [math.floor((i + 0.5) * cell - 0.5 - (kernel_size - 1) / 2 + 0.5) for i in range(out_len)]


class AttentionDownsampler(nn.Module):
    """``[N,C,H,W] -> [N,C,h,w]`` by learned, content-dependent attention over ``k x k`` patches."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        output_size: SizeLike | None = None,
        mask_prob: float = 0.2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"AttentionDownsampler: kernel_size must be >= 1, got {kernel_size}")
        if not 0 <= mask_prob < 1:
            raise ValueError(f"AttentionDownsampler: mask_prob must be in [0, 1), got {mask_prob}")
        self.dim, self.kernel_size = dim, kernel_size
        self.output_size = None if output_size is None else _pair(output_size)
        self.mask_prob = mask_prob
        self.feature_dropout = nn.Dropout(dropout)
        self.logit_proj = nn.Conv2d(dim, 1, 1)
        taps = (kernel_size, kernel_size)
        self.tap_scale = nn.Parameter(torch.ones(taps) + 0.01 * torch.randn(taps))
        self.tap_bias = nn.Parameter(0.01 * torch.randn(taps))
        self.window_method = "auto"  # or "taps" (module docstring)

    def forward(self, hires: torch.Tensor, output_size: SizeLike | None = None) -> torch.Tensor:
        size = _pair(output_size) if output_size is not None else self.output_size
        if size is None:
            raise ValueError("AttentionDownsampler: give output_size (to the constructor or the call)")
        if hires.ndim != 4 or hires.shape[1] != self.dim:
            raise ValueError(f"AttentionDownsampler({self.dim}): expected [N,{self.dim},H,W], got {tuple(hires.shape)}")
        (H, W), (h, w), k = hires.shape[-2:], size, self.kernel_size
        rows, cols = _window_starts(H, h, k), _window_starts(W, w, k)
        top, left = max(0, -rows[0]), max(0, -cols[0])
        bottom, right = max(0, rows[-1] + k - H), max(0, cols[-1] + k - W)
        pad = (left, right, top, bottom)
        x_pad = nn.functional.pad(hires, pad)
        content = nn.functional.pad(self.logit_proj(self.feature_dropout(hires)), pad)
        inside = nn.functional.pad(hires.new_ones(1, 1, H, W, dtype=torch.bool), pad)
        if self.training and self.mask_prob > 0:
            keep = (torch.rand(hires.shape[0], 1, h, w, device=hires.device) >= self.mask_prob).to(content.dtype)
        else:
            keep = None

        if self.window_method not in WINDOW_METHODS:
            raise ValueError(f"AttentionDownsampler: window_method must be one of {WINDOW_METHODS}")
        row_step, col_step = _step(rows), _step(cols)
        if self.window_method == "auto" and row_step is not None and col_step is not None:
            # evenly spaced windows: every tap in one unfold, so the backward is one fold instead
            # of k*k slice backwards (each of which fills and copies a whole hi-res gradient)
            def windows(x: torch.Tensor) -> torch.Tensor:
                """``[N,c,H',W'] -> [N,c,k*k,h*w]``: the k x k window of every output cell."""
                r0, c0 = rows[0] + top, cols[0] + left
                x = x[..., r0 : r0 + (h - 1) * row_step + k, c0 : c0 + (w - 1) * col_step + k]
                n, c = x.shape[:2]
                return nn.functional.unfold(x, k, stride=(row_step, col_step)).view(n, c, k * k, h * w)

            a = windows(content)[:, 0]  # [N,k*k,h*w]
            if keep is not None:
                a = a * keep.view(keep.shape[0], 1, h * w)
            logit = a * self.tap_scale.view(1, k * k, 1) + self.tap_bias.view(1, k * k, 1)
            outside = windows(inside.to(content.dtype))[:, 0] < 0.5
            weights = logit.masked_fill(outside, float("-inf")).softmax(dim=1)  # [N,k*k,h*w]
            out = torch.einsum("nctl,ntl->ncl", windows(x_pad), weights)
            return out.view(out.shape[0], out.shape[1], h, w)

        def taps(x: torch.Tensor, ty: int, tx: int) -> torch.Tensor:
            return _gather(x, [r + ty + top for r in rows], [c + tx + left for c in cols])

        logits = []
        for ty in range(k):
            for tx in range(k):
                a = taps(content, ty, tx)
                if keep is not None:
                    a = a * keep
                logit = a * self.tap_scale[ty, tx] + self.tap_bias[ty, tx]
                logits.append(logit.masked_fill(~taps(inside, ty, tx), float("-inf")))
        weights = torch.cat(logits, dim=1).softmax(dim=1)  # [N,k*k,h,w]
        out = None
        for t in range(k * k):
            term = weights[:, t : t + 1] * taps(x_pad, t // k, t % k)
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, kernel_size={self.kernel_size}, output_size={self.output_size}, "
            f"mask_prob={self.mask_prob}"
        )


def _step(idx: list[int]) -> int | None:
    """The common positive step of an arithmetic index list (1 for a single index), else None."""
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    return step if step > 0 and all(b - a == step for a, b in zip(idx, idx[1:])) else None


def _gather(x: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    """``x[..., rows, :][..., cols]`` as a strided view when both index lists are arithmetic."""

    def as_slice(idx: list[int]) -> slice | None:
        step = _step(idx)
        return None if step is None else slice(idx[0], idx[-1] + 1, step)

    rs, cs = as_slice(rows), as_slice(cols)
    x = x[..., rs, :] if rs is not None else x.index_select(-2, torch.tensor(rows, device=x.device))
    return x[..., cs] if cs is not None else x.index_select(-1, torch.tensor(cols, device=x.device))

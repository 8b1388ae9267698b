"""Feature maps as pictures: a PCA basis shared by several maps, so colours compare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PCABasis:
    """Three principal directions of feature pixels, with robust per-axis ranges."""

    mean: torch.Tensor  # [C]
    components: torch.Tensor  # [3,C]
    low: torch.Tensor  # [3]
    high: torch.Tensor  # [3]

    @classmethod
    def fit(cls, maps: Sequence[torch.Tensor], max_pixels: int = 50_000, seed: int = 0) -> PCABasis:
        """Fit on the pixels of every map (each [B,C,h,w] or [C,h,w])."""
        pixels = torch.cat([_pixels(m) for m in maps]).double()
        if len(pixels) > max_pixels:
            g = torch.Generator().manual_seed(seed)
            pixels = pixels[torch.randperm(len(pixels), generator=g)[:max_pixels]]
        mean = pixels.mean(0)
        centred = pixels - mean
        # Eigenvectors of the covariance, largest first; exact and cheap for C <= a few thousand.
        evals, evecs = torch.linalg.eigh(centred.T @ centred / max(1, len(pixels) - 1))
        components = evecs[:, torch.argsort(evals, descending=True)[:3]].T
        if components.shape[0] < 3:  # fewer than 3 channels: pad with zeros
            components = torch.cat([components, components.new_zeros(3 - len(components), len(mean))])
        # Fix each axis' sign so the picture does not flip between runs.
        signs = torch.sign(components.sum(1))
        components = components * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
        proj = centred @ components.T
        low, high = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
        return cls(mean.float(), components.float(), low.float(), high.float())

    def to_rgb(self, features: torch.Tensor) -> np.ndarray:
        """[C,h,w] -> uint8 [h,w,3]."""
        c, h, w = features.shape
        proj = (features.reshape(c, -1).T.float().cpu() - self.mean) @ self.components.T
        rgb = (proj - self.low) / (self.high - self.low).clamp_min(1e-8)
        return (rgb.clamp(0, 1).reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)


def _pixels(m: torch.Tensor) -> torch.Tensor:
    m = m.detach().float().cpu()
    if m.ndim == 3:
        m = m[None]
    return m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [0,1] -> uint8 [H,W,3]."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def upscale_nearest(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Blow a small PCA picture up to ``size`` (H, W) with square pixels, as in the paper's figures."""
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=size, mode="nearest")[0].permute(1, 2, 0).byte().numpy()


TITLE_BAND = 40  # pixels above each row of panels for the titles


def save_panels(
    panels: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, rows: int = 1, cell: int = 256
) -> Path:
    """Save uint8 pictures side by side (``rows`` rows) with a title over each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = -(-len(panels) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell / 100, rows * (cell + TITLE_BAND) / 100), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel, title in zip(axes.flat, panels, titles):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

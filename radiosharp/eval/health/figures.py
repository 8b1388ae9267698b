"""The pictures of eval health: the mode-switching curves, the outlier norm maps, the seam ratios and profiles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from radiosharp.eval.health.checks import PIXELS
from radiosharp.eval.health.stats import boundary_offsets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PICTURES = {"mode_switch": "health_mode_switch.png", "outliers": "health_outliers.png", "seams": "health_seams.png"}


def mode_switch_figure(report: Mapping[str, Any]) -> Figure:
    from radiosharp.eval.plots import _figure

    curves = report["mode_switch"]["curves"]
    skipped = report["mode_switch"]["skipped"]
    panels = max(1, len(curves))
    fig = _figure(1.0 + 3.6 * panels, 3.4)
    if not curves:
        ax = fig.add_subplot()
        ax.axis("off")
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or "no teacher"
        ax.text(0.5, 0.5, "mode switching skipped\n" + reasons, ha="center", va="center", wrap=True, fontsize=8)
        return fig
    for i, (name, curve) in enumerate(curves.items()):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.plot(curve["sizes"], curve["nmse_teacher"], marker="o", label="vs teacher (native, resized)")
        ax.plot(curve["sizes"], curve["nmse_low_res"], marker="s", label=f"vs own {report['sizes'][0]} px output")
        ax.set_xlabel("input size (px)")
        ax.set_ylabel("MSE / teacher feature variance")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("mode switching (RADIO Amplified)", fontsize=10)
    fig.tight_layout()
    return fig


def outliers_figure(report: Mapping[str, Any], norm_maps: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> Figure:
    from radiosharp.eval.plots import _figure

    panels = max(1, len(norm_maps))
    fig = _figure(0.6 + 2.8 * panels, 3.2)
    if not norm_maps:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "the student returns no backbone tokens", ha="center", va="center")
        return fig
    per_size = report["outliers"]["per_size"]
    for i, (size, norms, mask) in enumerate(norm_maps):
        ax = fig.add_subplot(1, panels, i + 1)
        image = ax.imshow(norms.float().numpy(), cmap="viridis", interpolation="nearest")
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            ax.scatter(xs.numpy(), ys.numpy(), s=14, facecolors="none", edgecolors="red", linewidths=0.8)
        stats = per_size[str(size)]
        ax.set_title(f"{size} px: {100 * stats['fraction']:.2f}% out, max {stats['max_norm_ratio']:.1f}x", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.ticklabel_format(useOffset=False)
    fig.suptitle(f"backbone token norms, first image (outliers > median + {report['outliers']['k']:g} MAD)", fontsize=9)
    fig.tight_layout()
    return fig


def seams_figure(report: Mapping[str, Any], profiles: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Figure:
    from radiosharp.eval.plots import _figure

    per_size = report["seams"]["per_size"]
    keys = list(dict.fromkeys(k for row in per_size.values() for k in row))
    panels = max(1, len(keys))
    fig = _figure(0.6 + 3.4 * panels, 6.2)
    tile_counts = report["seams"]["tile_counts"]
    largest = str(report["sizes"][-1])
    for i, key in enumerate(keys):
        ax = fig.add_subplot(2, panels, i + 1)
        for size, row in per_size.items():
            ratios = [row.get(key, {}).get(str(t)) for t in tile_counts]
            ax.plot(tile_counts, [math.nan if r is None else r for r in ratios], marker="o", label=f"{size} px")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(tile_counts)
        ax.set_xlabel("tiles per side t")
        ax.set_ylabel("boundary / other difference energy")
        ax.set_title("input pixels, pooled (content reference)" if key == PIXELS else key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax = fig.add_subplot(2, panels, panels + i + 1)
        if key in profiles:
            dx, dy = profiles[key]
            scale = float(torch.cat([dx, dy]).median()) or 1.0
            ax.plot(torch.arange(1, dx.numel() + 1).numpy(), (dx / scale).numpy(), label="across columns", lw=1)
            ax.plot(torch.arange(1, dy.numel() + 1).numpy(), (dy / scale).numpy(), label="across rows", lw=1)
            n = dx.numel() + 1
            styles = {2: ("red", "-"), 3: ("orange", "--"), 4: ("purple", ":")}
            for t in tile_counts:
                color, style = styles.get(t, ("grey", "-."))
                for j, b in enumerate(boundary_offsets(n, t)):
                    ax.axvline(
                        b + 1, color=color, linestyle=style, lw=0.8, alpha=0.7, label=f"t={t}" if j == 0 else None
                    )
            ax.set_xlabel(f"token offset at {largest} px")
            ax.set_ylabel("energy / median")
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("tile-seam energy", fontsize=10)
    fig.tight_layout()
    return fig


def write_pictures(report: Mapping[str, Any], arrays: Mapping[str, Any], out: Path) -> dict[str, Path]:
    from radiosharp.eval.plots import save_figure

    figures = {
        "mode_switch": mode_switch_figure(report),
        "outliers": outliers_figure(report, arrays["norm_maps"]),
        "seams": seams_figure(report, arrays["profiles"]),
    }
    return {name: save_figure(fig, out / PICTURES[name]) for name, fig in figures.items()}

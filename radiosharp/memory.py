"""Up-front memory estimates: refuse work that cannot fit, in one line, before it starts.

An upsampler at factor ``u`` turns a ``C x h x w`` feature map into ``C x uh x uw``: the
memory grows with ``u**2``, and a factor that cannot fit otherwise fails only after the
teachers are built and the statistics computed, with an out-of-memory traceback.
:func:`check_upsampling_memory` estimates the upsampled maps of one step (``batch x C x
uh x uw x 4 bytes`` times :data:`ACTIVATION_MULTIPLE` for the activations and gradients
that training keeps of them) and raises :class:`~radiosharp.recipe.RecipeError` with the
estimate when it exceeds the memory available: free GPU memory on CUDA
(``torch.cuda.mem_get_info``), else the host's available memory (psutil, else
``/proc/meminfo``). ``RADIOSHARP_SKIP_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from radiosharp.recipe import RecipeError

__all__ = ["ACTIVATION_MULTIPLE", "available_memory", "check_upsampling_memory", "upsampling_bytes"]

# Copies of the upsampled maps a training step keeps: the output, its gradient, the
# upsampler's last activations and the loss's intermediates.
ACTIVATION_MULTIPLE = 6
SKIP_ENV = "RADIOSHARP_SKIP_MEMORY_CHECK"


def upsampling_bytes(
    batch: int, dim: int, grid: tuple[int, int], factor: int, multiple: int = ACTIVATION_MULTIPLE
) -> int:
    """Bytes of ``batch`` upsampled float32 maps of ``dim`` channels on ``factor`` x ``grid``, times ``multiple``."""
    h, w = grid
    return batch * dim * (factor * h) * (factor * w) * 4 * multiple


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str | None = None) -> tuple[int | None, str]:
    """``(bytes available, where)`` on ``device``: free CUDA memory, else the host's available memory."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"the free memory on {device}"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "the host's available memory"
    except ImportError:
        return _meminfo_available(), "the host's available memory"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_upsampling_memory(
    where: str,
    batch: int,
    dim: int,
    grid: tuple[int, int],
    factor: int,
    device: torch.device | str | None = None,
    available: int | None = None,
) -> int:
    """The estimate in bytes; RecipeError (one line, with the estimate) when it exceeds the memory available.

    ``available`` overrides the measured memory (tests).
    """
    need = upsampling_bytes(batch, dim, grid, factor)
    if os.environ.get(SKIP_ENV):
        return need
    label = "the memory given"
    if available is None:
        available, label = available_memory(device)
    if available is not None and need > available:
        h, w = grid
        fits = factor
        while fits > 1 and upsampling_bytes(batch, dim, grid, fits) > available:
            fits -= 1
        hint = f"factor {fits} fits" if fits >= 2 else "no factor >= 2 fits at this batch size"
        raise RecipeError(
            f"{where}: factor {factor} needs about {_gib(need)} for the upsampled features of one step "
            f"({batch} x {dim} x {factor * h} x {factor * w} float32, x{ACTIVATION_MULTIPLE} for activations and "
            f"gradients), more than {label} ({_gib(available)}); lower the factor ({hint}) or the batch size "
            f"(or set {SKIP_ENV}=1 to skip this check)"
        )
    return need

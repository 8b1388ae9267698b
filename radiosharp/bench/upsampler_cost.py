"""``python -m radiosharp.bench upsample --table naf``: what each upsampler costs on its own.

The table of the NAF paper's benchmark (valeoai/NAF, ``test/``: parameters, forward
time, forward+backward time and peak memory of each, per upsampling ratio), for EVERY
registered upsampler (:data:`radiosharp.registry.UPSAMPLERS`) and factors 2, 4, 8, 16 by
default, each also as a ratio to bilinear measured in the same run.

Inputs, per factor ``u`` and for a batch of random images:

- the low-res features ``[B,C,h,w]`` of the teacher, on a ``grid x grid`` patch grid
  (``h = w = grid``): the teacher run on the image resized to ``grid * patch`` pixels;
- the guidance image at ``u * grid * patch`` pixels (what the teacher at ``u x`` would see);
- the output is ``[B,C,u*h,u*w]``.

(NAF's table keeps its image at 448 px at every ratio; here the guidance grows with
``u``, as it does when the upsampler stands in for the teacher at ``u x``.)

The upsampler is measured ALONE: the low-res features are computed once per factor, and
the teacher calls of tile-based upsamplers (tiles, s2, featsharp) are recorded once and
replayed (:class:`radiosharp.bench.upsample.ReplayFeaturize`; the same tiles are
featurized once per factor and shared between those methods), so the tile cutting and
stitching run, the teacher does not. Upsamplers are built with random weights (cost
does not depend on their values) and the teacher's width ``C``.

Columns per (factor, method):

- ``params``: ``sum(p.numel() for p in module.parameters())`` (no ratio: bilinear has none);
- ``fwd``: one forward under ``torch.no_grad`` (module in eval mode);
- ``fwd+bwd``: forward, then ``torch.autograd.grad`` of the output's sum w.r.t. the
  upsampler's parameters, or, for parameter-free upsamplers (bilinear, tiles, s2), w.r.t.
  the input features (the low-res features and the replayed tile features), so every
  method pays a backward through its own graph (``grad_wrt`` says which). NAF's script
  also runs a 1x1 conv head and an SGD step; those are not the upsampler's and are left out;
- time: median seconds over ``repeats`` after ``warmup``; all calls of a factor are timed
  round-robin (:func:`radiosharp.bench.measure.measure_interleaved`), so bilinear, the
  reference of every ratio, shares the machine's load with the others. Bilinear is
  always measured, even when ``methods`` leaves it out;
- peak memory: extra memory allocated during one call above what was allocated before
  it (activations, temporaries, outputs, gradients; not the weights nor the inputs; NAF's
  ``max_memory_allocated`` also counts those), see :mod:`radiosharp.bench.measure`;
- ``*_ratio``: the value divided by bilinear's at the same factor (bilinear's are 1).

A method that cannot run at a size (out of memory, a shape it refuses, a failing build)
gets a row with ``status: failed`` and the reason in ``error`` (the phases that did
run keep their numbers); the bench goes on. A process the operating system kills for
memory cannot be caught: lower ``grid``, ``batch`` or the factors on small machines.

Global-attention upsamplers (jafar, loftup) attend from every output pixel to every
low-res token; at 16x they stay bounded by their query chunking (``query_chunk``, the
builder's default unless given; recorded in each row's ``options``).

Default size, for a 2-core CPU: ``grid = 8`` (112 px teacher input for 14-px patches,
the tiny DINOv2's native size; 128 px for 16-px ones), so at 16x a 128 x 128 output
from a 1792 px image. With the tiny DINOv2 (32 channels) the whole table (nine methods,
2x to 16x, 3 repeats) takes about two minutes on 2 cores; ``grid = 16`` costs about 4x
that at 16x. The channel width matters as much: featsharp runs a transformer block over
``2C`` channels at every output pixel, and at ``C = 1024`` its 16x forward+backward alone
takes about a minute and a half per call at ``grid = 8``, so wide teachers at 16x belong
on a GPU. There, ``--grid 28`` is the low-res grid of NAF's table (448 / 16). On a CPU
shared with other jobs, ``OMP_NUM_THREADS=1`` keeps spin-waiting OpenMP threads from
slowing every call many times over (the report records the thread count).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from radiosharp.bench.upsample import _memory_method
from radiosharp.bench.upsampler_cost_factor import REFERENCE, bench_factor, count_parameters
from radiosharp.bench.upsampler_cost_tables import (
    plot_upsampler_cost,
    upsampler_cost_markdown,
    upsampler_cost_teacher_markdown,
    where,
)
from radiosharp.contracts import Teacher
from radiosharp.images import resize

__all__ = [
    "DEFAULT_FACTORS",
    "DEFAULT_GRID",
    "DEFAULT_REPEATS",
    "bench_factor",
    "bench_upsampler_cost",
    "plot_upsampler_cost",
    "registered_methods",
    "upsampler_cost_markdown",
    "upsampler_cost_teacher_markdown",
    "where",
]

DEFAULT_FACTORS = (2, 4, 8, 16)
DEFAULT_GRID = 8  # low-res side in patches; see the module docstring
DEFAULT_REPEATS = 3


def registered_methods() -> list[str]:
    """Every registered upsampler, bilinear (the reference) first."""
    from radiosharp.registry import UPSAMPLERS

    names = UPSAMPLERS.names()
    return [REFERENCE] + [n for n in names if n != REFERENCE] if REFERENCE in names else names


@contextlib.contextmanager
def _released(device: torch.device) -> Iterator[None]:
    """Free what a factor left behind (modules, recorded features) before the next one."""
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_upsampler_cost(
    teacher: Teacher,
    factors: Sequence[int] = DEFAULT_FACTORS,
    methods: Sequence[str] | None = None,
    batch: int = 1,
    warmup: int = 1,
    repeats: int = DEFAULT_REPEATS,
    precision: str = "fp32",
    grid: int | None = DEFAULT_GRID,
    query_chunk: int | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    teacher_max_factor: int | None = 0,
) -> dict[str, Any]:
    """The NAF-style cost table (module docstring) on ``teacher`` (already on its device); a JSON-able report.

    ``teacher_max_factor``: measure the teacher at ``u x`` input for the factors up to it (None: all;
    0: none), in ``teacher_rows``, and give every row its ratios to it (``*_teacher_ratio``).

    ``methods``: None for every registered upsampler (bilinear is added when missing: it
    is the reference). ``grid``: the low-res side in patches (None: the teacher's own
    ``native_size / patch_size``). ``query_chunk``: passed to the upsamplers that take it
    (None: their default). ``options``: builder options per method name.
    """
    from radiosharp.registry import UPSAMPLERS

    if not factors or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in factors):
        raise ValueError(f"factors must be integers >= 1, got {list(factors)}")
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, repeats >= 1, warmup >= 0; got {batch}, {repeats}, {warmup}")
    if grid is not None and grid < 1:
        raise ValueError(f"grid must be >= 1 patches, got {grid}")
    if query_chunk is not None and query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    names = registered_methods() if methods is None else list(dict.fromkeys(methods))
    for name in names:
        UPSAMPLERS.get(name, "--methods")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    device = next(teacher.parameters()).device
    teacher.eval()
    patch = teacher.patch_size
    side = grid if grid is not None else teacher.native_size // patch
    native = side * patch
    say = progress or (lambda _msg: None)
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    teacher_rows: list[dict[str, Any]] = []
    say(f"low-res grid {side}x{side} (teacher input {native}px), methods: {' '.join(names)}")
    for factor in factors:
        with _released(device):
            images = torch.rand(batch, 3, factor * native, factor * native, generator=generator).to(device)
            lowres_input = resize(images, (native, native))
            with_teacher = teacher_max_factor is None or factor <= teacher_max_factor
            rows.extend(
                bench_factor(
                    teacher,
                    factor,
                    names,
                    images,
                    lowres_input,
                    warmup,
                    repeats,
                    precision,
                    query_chunk,
                    options,
                    say,
                    teacher_rows if with_teacher else None,
                )
            )
            del images, lowres_input
    return {
        "table": "naf",
        "teacher": {
            "name": getattr(teacher, "name", type(teacher).__name__),
            "native_size": teacher.native_size,
            "input_size": native,
            "grid": side,
            "patch_size": patch,
            "embed_dim": teacher.embed_dim,
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "precision": precision,
        "factors": list(factors),
        "methods": names,
        "reference": REFERENCE,
        "query_chunk": query_chunk,
        "weights": "random initialisation (cost does not depend on the weights' values)",
        "backward": "autograd.grad of the output's sum w.r.t. the parameters (parameter-free: the input features)",
        "teacher_excluded": "low-res features computed once per factor; tile teacher calls recorded once and replayed",
        "memory": _memory_method(device),
        "teacher_params": count_parameters(teacher),
        "teacher_max_factor": teacher_max_factor,
        "rows": rows,
        "teacher_rows": teacher_rows,
    }

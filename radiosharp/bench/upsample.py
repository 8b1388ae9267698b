"""``python -m radiosharp.bench upsample``: what upsampling costs against the teacher at ``u x``.

Per factor ``u`` and for a batch of random images at ``u * native`` pixels:

- ``teacher``: the teacher run on the ``u x`` input (what the upsamplers stand in for);
- each upsampler (bilinear, featup, featsharp by default; randomly initialised,
  which does not change their cost) as the system runs it, an ``UpsampledTeacher``
  (the global view at native size + the upsampler, whose ``featurize`` runs the
  teacher on tiles): ``time_s``/``peak_mb`` include the teacher calls;
  ``time_excl_s``/``peak_excl_mb`` exclude them: the teacher outputs are recorded
  once and replayed (:class:`ReplayFeaturize`), so only the upsampler itself runs;
- ratios of each to the teacher at ``u x`` (``< 1``: cheaper than the hi-res teacher);
- ``teacher_images``: images the teacher sees per input image (1 + u^2 for featsharp).

Then the factor where featsharp gets cheaper than the hi-res teacher (see
:mod:`radiosharp.bench.crossover`) and the images/s of a multi-view training step
of each trainable upsampler (``MultiViewModel``: views, teacher targets, upsampler,
attention downsampler, loss, backward and a NAdam step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from radiosharp.api import is_trainable
from radiosharp.bench.crossover import crossover
from radiosharp.bench.measure import Cost, measure, measure_interleaved, ratio
from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.images import resize

DEFAULT_METHODS = ("bilinear", "featup", "featsharp")


class ReplayFeaturize:
    """A ``featurize`` that records the teacher's outputs on its first pass, then replays them.

    Timing an upsampler with a replaying featurize measures the upsampler alone: the
    tile cutting, JBU and attention still run, the teacher does not.
    """

    def __init__(self, featurize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.featurize = featurize
        self.outputs: list[torch.Tensor] = []
        self.replaying = False
        self.index = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.replaying:
            out = self.featurize(images)
            self.outputs.append(out)
            return out
        out = self.outputs[self.index]
        if tuple(out.shape[:1]) != tuple(images.shape[:1]):
            raise RuntimeError("ReplayFeaturize: the upsampler called featurize differently on replay")
        self.index += 1
        return out

    def rewind(self) -> ReplayFeaturize:
        """Switch to replaying, from the first recorded output."""
        self.replaying, self.index = True, 0
        return self

    @property
    def images_seen(self) -> int:
        return sum(len(o) for o in self.outputs)


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")


@contextlib.contextmanager
def _inference(device: torch.device, precision: str) -> Iterator[None]:
    with torch.no_grad(), precision_context(device, precision):
        yield


def _row(
    factor: int,
    method: str,
    input_size: int,
    teacher_images: float,
    total: Cost,
    excluded: Cost | None,
    reference: Cost,
) -> dict[str, Any]:
    return {
        "factor": factor,
        "method": method,
        "input_size": input_size,
        "teacher_images": teacher_images,
        "time_s": total.seconds,
        "peak_mb": total.peak_mb,
        "time_excl_s": None if excluded is None else excluded.seconds,
        "peak_excl_mb": None if excluded is None else excluded.peak_mb,
        "time_ratio": ratio(total.seconds, reference.seconds),
        "mem_ratio": ratio(total.peak_bytes, reference.peak_bytes),
        "time_excl_ratio": None if excluded is None else ratio(excluded.seconds, reference.seconds),
        "mem_excl_ratio": None if excluded is None else ratio(excluded.peak_bytes, reference.peak_bytes),
    }


def bench_inference(
    teacher: Teacher,
    factor: int,
    methods: Sequence[str],
    images: torch.Tensor,
    warmup: int,
    repeats: int,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Rows for one factor: the teacher at ``u x`` input, then each upsampler (incl./excl. teacher).

    All calls of the factor are timed round-robin, so they share the machine's load.
    """
    from radiosharp.upsampled import UpsampledTeacher

    device, batch = images.device, len(images)
    native, size = teacher.native_size, images.shape[-1]

    def inference(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with _inference(device, precision):
                return fn()

        return call

    calls = {"teacher": inference(lambda: teacher(images))}
    global_view = resize(images, (native, native))
    teacher_images = {}
    for method in methods:
        upsampler = build_upsampler(method, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
        model = UpsampledTeacher(teacher, upsampler).to(device).eval()
        with _inference(device, precision):
            lowres = model.featurize(global_view)
            replay = ReplayFeaturize(model.featurize)
            upsampler(images, lowres, replay)
        teacher_images[method] = 1 + replay.images_seen / batch
        calls[method] = inference(lambda model=model: model(images))
        calls[f"{method}/excl"] = inference(lambda up=upsampler, low=lowres, rep=replay: up(images, low, rep.rewind()))
    costs = measure_interleaved(calls, device, warmup, repeats)
    reference = costs["teacher"]
    rows = [_row(factor, "teacher", size, 1.0, reference, None, reference)]
    for method in methods:
        rows.append(
            _row(factor, method, size, teacher_images[method], costs[method], costs[f"{method}/excl"], reference)
        )
    return rows


def bench_training_step(
    teacher: Teacher,
    factor: int,
    method: str,
    images: torch.Tensor,
    views: int,
    warmup: int,
    repeats: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Images/s of one multi-view training step (forward, loss, backward, optimizer step)."""
    from radiosharp.debias import Debias
    from radiosharp.downsampler import AttentionDownsampler
    from radiosharp.multiview.views import ViewConfig
    from radiosharp.trainers.upsampler import MultiViewModel
    from radiosharp.upsampled import UpsampledTeacher

    device, dim, grid = images.device, teacher.embed_dim, teacher.feature_grid
    upsampler = build_upsampler(method, factor=factor, dim=dim, patch_size=teacher.patch_size)
    up_teacher = UpsampledTeacher(teacher, upsampler, Debias(dim, grid))
    model = MultiViewModel(up_teacher, AttentionDownsampler(dim, 7, output_size=grid)).to(device).train()
    optimizer = torch.optim.NAdam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    view_cfg = ViewConfig(num_views=views)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(device, precision):
            loss, _ = model(images, view_cfg, generator)
        loss.backward()
        optimizer.step()

    cost = measure(step, device, warmup, repeats)
    return {
        "factor": factor,
        "method": method,
        "batch": len(images),
        "views": views,
        "step_s": cost.seconds,
        "images_per_s": len(images) / cost.seconds,
        "peak_mb": cost.peak_mb,
    }


def bench_upsample(
    teacher: Teacher,
    factors: Sequence[int],
    methods: Sequence[str] = DEFAULT_METHODS,
    batch: int = 1,
    warmup: int = 1,
    repeats: int = 5,
    views: int = 5,
    train: bool = True,
    precision: str = "fp32",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark on ``teacher`` (already on its device); returns the JSON-able report."""
    if not factors or any(int(u) < 1 for u in factors):
        raise ValueError(f"factors must be integers >= 1, got {list(factors)}")
    from radiosharp.registry import UPSAMPLERS

    for method in methods:
        UPSAMPLERS.get(method, "--methods")
    device = next(teacher.parameters()).device
    teacher.eval()
    generator = torch.Generator().manual_seed(seed)
    native = teacher.native_size
    say = progress or (lambda _msg: None)

    say(f"teacher at native size {native}px")
    native_images = torch.rand(batch, 3, native, native, generator=generator).to(device)
    with _inference(device, precision):
        native_cost = measure(lambda: teacher(native_images), device, warmup, repeats)
    rows, train_rows = [], []
    for factor in factors:
        say(f"factor {factor}: inference")
        images = torch.rand(batch, 3, factor * native, factor * native, generator=generator).to(device)
        rows.extend(bench_inference(teacher, factor, methods, images, warmup, repeats, precision))
        if train:
            for method in methods:
                if is_trainable(method):
                    say(f"factor {factor}: {method} training step")
                    train_rows.append(
                        bench_training_step(teacher, factor, method, images, views, warmup, repeats, precision)
                    )
    report: dict[str, Any] = {
        "teacher": {
            "name": getattr(teacher, "name", type(teacher).__name__),
            "native_size": native,
            "patch_size": teacher.patch_size,
            "embed_dim": teacher.embed_dim,
            "native_time_s": native_cost.seconds,
            "native_peak_mb": native_cost.peak_mb,
        },
        "device": str(device),
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "precision": precision,
        "weights": "random initialisation (cost does not depend on the weights' values)",
        "memory": _memory_method(device),
        "rows": rows,
        "train": train_rows,
    }
    if "featsharp" in methods:
        fs = {r["factor"]: r["time_s"] for r in rows if r["method"] == "featsharp"}
        tt = {r["factor"]: r["time_s"] for r in rows if r["method"] == "teacher"}
        us = sorted(fs)
        report["crossover"] = crossover(us, [tt[u] for u in us], [fs[u] for u in us], native_cost.seconds)
    return report


def _memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated after reset, minus memory allocated before the call"
    if device.type == "cpu":
        return (
            "peak of the running sum of CPU allocations and frees recorded by "
            "torch.profiler (profile_memory=True) during one extra, untimed call"
        )
    return "not measured on this device"

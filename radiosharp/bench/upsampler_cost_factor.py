"""One factor of the upsampler cost table (:mod:`radiosharp.bench.upsampler_cost`): every method built,
its teacher calls recorded for replay, forward and forward+backward timed round-robin, one row each.

A method's failure (a build, its teacher features, a timed call) is recorded in its row, not raised.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from radiosharp.bench.measure import Cost, measure_interleaved, ratio
from radiosharp.bench.upsample import ReplayFeaturize, precision_context
from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.data.errors import first_line

REFERENCE = "bilinear"
TEACHER = "teacher"  # the teacher at u x input, in teacher_rows
PHASES = ("fwd", "fwd_bwd")
STEPS = ("build", "prepare", *PHASES)
PHASE_NAMES = {"fwd": "forward", "fwd_bwd": "forward+backward", "build": "build", "prepare": "teacher features"}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reason(err: BaseException) -> str:
    """``Type: first line of the message`` (the exception itself is not kept: its frames hold tensors)."""
    text = first_line(err)
    return text if text == type(err).__name__ else f"{type(err).__name__}: {text}"


class SharedFeaturize:
    """A ``featurize`` that runs the teacher once per distinct input (equal values) and hands out that output again.

    tiles, s2 and featsharp cut the same tiles from the same images; with this the
    teacher sees them once per factor, not once per method.
    """

    def __init__(self, featurize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.featurize = featurize
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for inputs, outputs in self.seen:
            if inputs.shape == images.shape and inputs.dtype == images.dtype and torch.equal(inputs, images):
                return outputs
        self.calls += 1
        out = self.featurize(images)
        self.seen.append((images, out))
        return out


class _Guard:
    """Calls that record their first failure (then return at once) instead of raising.

    Keys are ``method/phase``: a method whose forward+backward runs out of memory keeps
    its forward numbers. A failed call's timings mean nothing and are dropped.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.errors: dict[str, str] = {}

    def fail(self, key: str, err: BaseException) -> None:
        self.errors.setdefault(key, reason(err))

    def release(self) -> None:
        """Hand a failed call's memory back (call it outside the ``except``: the traceback holds its tensors)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wrap(self, key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            if key in self.errors:
                return None
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - one method's failure is recorded, not fatal
                self.fail(key, err)
            self.release()
            return None

        return call

    def error(self, method: str) -> str | None:
        """The method's failures, ``step: reason`` joined by ``; `` (None: none)."""
        found = [
            f"{PHASE_NAMES[step]}: {self.errors[f'{method}/{step}']}"
            for step in STEPS
            if f"{method}/{step}" in self.errors
        ]
        return "; ".join(found) or None


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


class _Method:
    """One upsampler at one factor: its module, recorded teacher calls and the two timed calls."""

    def __init__(self, name: str, module: torch.nn.Module, images: torch.Tensor, lowres: torch.Tensor) -> None:
        self.name, self.module, self.images, self.lowres = name, module, images, lowres
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.replay: ReplayFeaturize | None = None
        self.grad_replay: ReplayFeaturize | None = None
        self.grad_lowres: torch.Tensor | None = None

    @property
    def grad_wrt(self) -> str:
        return "parameters" if self.params else "inputs"

    def record(self, featurize: Callable[[torch.Tensor], torch.Tensor], precision: str) -> None:
        """Run once with the (shared) teacher and keep its outputs for replay."""
        self.replay = ReplayFeaturize(featurize)
        self.module.eval()
        with torch.no_grad(), precision_context(self.images.device, precision):
            self.module(self.images, self.lowres, self.replay)
        self.replay.rewind()
        self.grad_replay = ReplayFeaturize(featurize)
        if self.params:
            self.grad_replay.outputs = self.replay.outputs
            self.grad_lowres = self.lowres
        else:  # gradients w.r.t. the input features: the low-res map and the replayed tile features
            self.grad_replay.outputs = [_leaf(o) for o in self.replay.outputs]
            self.grad_lowres = _leaf(self.lowres)
        self.grad_replay.rewind()

    def inputs(self) -> list[torch.Tensor]:
        """What the backward differentiates w.r.t."""
        if self.params:
            return self.params
        assert self.grad_replay is not None and self.grad_lowres is not None
        return [self.grad_lowres, *self.grad_replay.outputs]

    def forward(self, precision: str) -> Callable[[], Any]:
        def call() -> Any:
            assert self.replay is not None
            self.module.eval()
            with torch.no_grad(), precision_context(self.images.device, precision):
                return self.module(self.images, self.lowres, self.replay.rewind())

        return call

    def forward_backward(self, precision: str) -> Callable[[], Any]:
        def call() -> Any:
            assert self.grad_replay is not None
            self.module.train()
            with torch.enable_grad():
                with precision_context(self.images.device, precision):
                    out = self.module(self.images, self.grad_lowres, self.grad_replay.rewind())
                inputs = self.inputs()
                grads = torch.autograd.grad(out.float().sum(), inputs, allow_unused=True)
            return out, grads

        return call


def _build(
    name: str, factor: int, teacher: Teacher, query_chunk: int | None, options: dict[str, dict[str, Any]] | None
) -> torch.nn.Module:
    from radiosharp.registry import UPSAMPLERS

    extra = dict((options or {}).get(name, {}))
    if query_chunk is not None and "query_chunk" in UPSAMPLERS.options(name):
        extra.setdefault("query_chunk", query_chunk)
    return build_upsampler(
        {"name": name, **extra}, name, factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
    )


def _versus(got: Cost | None, ref: Cost | None) -> tuple[float | None, float | None]:
    """``got``'s time and peak memory as ratios to ``ref``'s (None, None: either is missing)."""
    if got is None or ref is None:
        return None, None
    return ratio(got.seconds, ref.seconds), ratio(got.peak_bytes, ref.peak_bytes)


def _cost_columns(phase: str, got: Cost | None, ref: Cost | None) -> dict[str, float | None]:
    """A row's columns of one phase: seconds, peak MiB and both as ratios to the reference (bilinear)."""
    time_ratio, mem_ratio = _versus(got, ref)
    return {
        f"{phase}_s": None if got is None else got.seconds,
        f"{phase}_peak_mb": None if got is None else got.peak_mb,
        f"{phase}_ratio": time_ratio,
        f"{phase}_mem_ratio": mem_ratio,
    }


def bench_factor(
    teacher: Teacher,
    factor: int,
    methods: Sequence[str],
    images: torch.Tensor,
    lowres_input: torch.Tensor,
    warmup: int,
    repeats: int,
    precision: str = "fp32",
    query_chunk: int | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    say: Callable[[str], None] = lambda _msg: None,
    teacher_rows: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one factor: every method's forward and forward+backward, timed round-robin.

    ``teacher_rows``: a list to append the teacher-at-u-x-input row to; the teacher (forward on
    ``images``, and forward + gradient w.r.t. them) is then timed in the same round-robin and each
    row gets its ``*_teacher_ratio`` columns. None: the teacher is not measured.
    """
    device = images.device
    guard = _Guard(device)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), precision_context(device, precision):
            return teacher(x).features

    lowres = features(lowres_input)
    shared = SharedFeaturize(features)
    prepared: dict[str, _Method] = {}
    built: dict[str, torch.nn.Module] = {}
    for name in methods:
        say(f"factor {factor}: {name} (build, teacher features)")
        try:
            module = _build(name, factor, teacher, query_chunk, options).to(device)
        except Exception as err:  # noqa: BLE001 - recorded in the row
            guard.fail(f"{name}/build", err)
        else:
            built[name] = module
            method = _Method(name, module, images, lowres)
            try:
                method.record(shared, precision)
            except Exception as err:  # noqa: BLE001 - recorded in the row
                guard.fail(f"{name}/prepare", err)
            else:
                prepared[name] = method
        if guard.error(name):
            guard.release()
    calls: dict[str, Callable[[], Any]] = {}
    for name, method in prepared.items():
        calls[f"{name}/fwd"] = guard.wrap(f"{name}/fwd", method.forward(precision))
        calls[f"{name}/fwd_bwd"] = guard.wrap(f"{name}/fwd_bwd", method.forward_backward(precision))
    if teacher_rows is not None:
        for phase, call in _teacher_calls(teacher, images, precision).items():
            calls[f"{TEACHER}/{phase}"] = guard.wrap(f"{TEACHER}/{phase}", call)
    say(f"factor {factor}: timing {len(prepared)} methods round-robin ({repeats} repeats after {warmup} warm-up)")
    costs = measure_interleaved(calls, device, warmup, repeats) if calls else {}

    def cost(name: str, phase: str) -> Cost | None:
        key = f"{name}/{phase}"
        return None if key in guard.errors else costs.get(key)

    reference = {phase: cost(REFERENCE, phase) for phase in PHASES}
    at_u = {phase: cost(TEACHER, phase) for phase in PHASES} if teacher_rows is not None else {}
    teacher_params = count_parameters(teacher)
    size = images.shape[-1]
    rows = []
    for name in methods:
        module = built.get(name)
        method = prepared.get(name)
        row: dict[str, Any] = {
            "factor": factor,
            "method": name,
            "status": "ok" if guard.error(name) is None else "failed",
            "error": guard.error(name),
            "params": None if module is None else count_parameters(module),
            "grad_wrt": None if method is None else method.grad_wrt,
            "options": None if module is None else _options(module),
            "image_size": size,
            "lowres": list(lowres.shape[-2:]),
            "output": [factor * lowres.shape[-2], factor * lowres.shape[-1]],
            "teacher_calls_replayed": None if method is None or method.replay is None else len(method.replay.outputs),
        }
        for phase in PHASES:
            got = cost(name, phase)
            row.update(_cost_columns(phase, got, reference[phase]))
            # the teacher at u x input (None: not measured at this factor)
            row[f"{phase}_teacher_ratio"], row[f"{phase}_mem_teacher_ratio"] = _versus(got, at_u.get(phase))
        row["params_teacher_ratio"] = (
            None if row["params"] is None or teacher_rows is None else ratio(row["params"], teacher_params)
        )
        rows.append(row)
    if teacher_rows is not None:
        trow: dict[str, Any] = {
            "factor": factor,
            "method": TEACHER,
            "status": "ok" if guard.error(TEACHER) is None else "failed",
            "error": guard.error(TEACHER),
            "params": teacher_params,
            "image_size": size,
            "grad_wrt": "input image",
        }
        for phase in PHASES:
            trow.update(_cost_columns(phase, at_u.get(phase), reference[phase]))
        teacher_rows.append(trow)
    say(f"factor {factor}: done (the teacher featurized {shared.calls} tile batch(es) once, replayed since)")
    return rows


def _teacher_calls(teacher: Teacher, images: torch.Tensor, precision: str) -> dict[str, Callable[[], Any]]:
    """The teacher at ``u x`` input (what the upsamplers stand in for): no-grad forward, and forward +
    gradient of its features' sum w.r.t. the input image (its parameters are frozen; the contract's
    ``forward`` is called past ``FrozenTeacher``'s no-grad wrapper)."""

    def fwd() -> Any:
        with torch.no_grad(), precision_context(images.device, precision):
            return teacher(images).features

    def fwd_bwd() -> Any:
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            with precision_context(images.device, precision):
                out = Teacher.forward(teacher, x).features  # the base forward: frozen teachers run no-grad
            return out, torch.autograd.grad(out.float().sum(), [x])

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def _options(module: torch.nn.Module) -> dict[str, Any]:
    config = dict(getattr(module, "build_config", {}) or {})
    config.pop("name", None)
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in config.items()}

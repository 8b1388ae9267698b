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

from radiosharp.bench.measure import Cost, measure_interleaved, ratio
from radiosharp.bench.upsample import ReplayFeaturize, _memory_method, precision_context
from radiosharp.builders import build_upsampler
from radiosharp.contracts import Teacher
from radiosharp.data.errors import first_line
from radiosharp.images import resize

DEFAULT_FACTORS = (2, 4, 8, 16)
DEFAULT_GRID = 8  # low-res side in patches; see the module docstring
DEFAULT_REPEATS = 3
REFERENCE = "bilinear"
TEACHER = "teacher"  # the teacher at u x input, in teacher_rows
PHASES = ("fwd", "fwd_bwd")
STEPS = ("build", "prepare", *PHASES)
PHASE_NAMES = {"fwd": "forward", "fwd_bwd": "forward+backward", "build": "build", "prepare": "teacher features"}


def registered_methods() -> list[str]:
    """Every registered upsampler, bilinear (the reference) first."""
    from radiosharp.registry import UPSAMPLERS

    names = UPSAMPLERS.names()
    return [REFERENCE] + [n for n in names if n != REFERENCE] if REFERENCE in names else names


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


@contextlib.contextmanager
def _released(device: torch.device) -> Iterator[None]:
    """Free what a factor left behind (modules, recorded features) before the next one."""
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


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
            got, ref = cost(name, phase), reference[phase]
            row[f"{phase}_s"] = None if got is None else got.seconds
            row[f"{phase}_peak_mb"] = None if got is None else got.peak_mb
            row[f"{phase}_ratio"] = None if got is None or ref is None else ratio(got.seconds, ref.seconds)
            row[f"{phase}_mem_ratio"] = None if got is None or ref is None else ratio(got.peak_bytes, ref.peak_bytes)
            t = at_u.get(phase)  # the teacher at u x input (None: not measured at this factor)
            row[f"{phase}_teacher_ratio"] = None if got is None or t is None else ratio(got.seconds, t.seconds)
            row[f"{phase}_mem_teacher_ratio"] = (
                None if got is None or t is None else ratio(got.peak_bytes, t.peak_bytes)
            )
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
            t, ref = at_u.get(phase), reference[phase]
            trow[f"{phase}_s"] = None if t is None else t.seconds
            trow[f"{phase}_peak_mb"] = None if t is None else t.peak_mb
            trow[f"{phase}_ratio"] = None if t is None or ref is None else ratio(t.seconds, ref.seconds)
            trow[f"{phase}_mem_ratio"] = None if t is None or ref is None else ratio(t.peak_bytes, ref.peak_bytes)
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


# ----------------------------------------------------------------------------- markdown


def where(report: dict[str, Any]) -> str:
    """The device, with the intra-op thread count on the CPU (what CPU times depend on)."""
    device = report["device"]
    n = report.get("threads")
    if not device.startswith("cpu") or not n:
        return device
    return f"{device} ({n} thread{'' if n == 1 else 's'})"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _with_ratio(value: float | None, rel: float | None) -> str:
    if value is None:
        return "-"
    return _num(value) if rel is None else f"{_num(value)} ({_num(rel)}x)"


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 10**6:
        return f"{n / 1e6:.2f}M"
    if n >= 10**3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def upsampler_cost_markdown(report: dict[str, Any]) -> str:
    """A markdown table: one line per method, its parameters, and per factor ``fwd ms``, ``fwd+bwd ms`` and
    the peak MiB of forward+backward, each with its ratio to bilinear (``(2.1x)``); failures listed below.

    Parameters that depend on the factor (featup's JBU stack grows with it) read ``a / b / ...``,
    one per distinct count in factor order."""
    t = report["teacher"]
    factors = list(dict.fromkeys(r["factor"] for r in report["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    by = {(r["factor"], r["method"]): r for r in report["rows"]}
    headers = ["method", "params"]
    for u in factors:
        headers += [f"{u}x fwd ms", f"{u}x fwd+bwd ms", f"{u}x peak MiB"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    failures = []
    for m in methods:
        rows = [by.get((u, m)) for u in factors]
        counts = list(dict.fromkeys(r["params"] for r in rows if r and r["params"] is not None))
        cells = [f"`{m}`", " / ".join(_params(n) for n in counts) or "-"]
        for u, r in zip(factors, rows):
            if r is None:
                cells += ["-"] * 3
                continue
            cells += [
                _with_ratio(_ms(r["fwd_s"]), r["fwd_ratio"]),
                _with_ratio(_ms(r["fwd_bwd_s"]), r["fwd_bwd_ratio"]),
                _with_ratio(r["fwd_bwd_peak_mb"], r["fwd_bwd_mem_ratio"]),
            ]
            if r["status"] != "ok":
                failures.append(f"- `{m}` at {u}x: {r['error']}")
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"Upsampler alone (teacher excluded), {t['name']} features ({t['embed_dim']} channels) on a "
        f"{t['grid']}x{t['grid']} grid (teacher input {t['input_size']} px, guidance image u x that), "
        f"batch {report['batch']}, {report['precision']}, on {where(report)}; "
        f"median of {report['repeats']} "
        f"after {report['warmup']} warm-up, timed round-robin with bilinear. fwd: no-grad forward; fwd+bwd: "
        f"forward + gradient of the output's sum w.r.t. the parameters (parameter-free methods: w.r.t. the "
        f"input features); peak MiB: extra memory during fwd+bwd. (Nx): ratio to bilinear at the same factor."
    )
    parts = [caption, "\n".join(lines)]
    if failures:
        parts.append("Failed:\n" + "\n".join(failures))
    return "\n\n".join(parts) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def upsampler_cost_teacher_markdown(report: dict[str, Any]) -> str:
    """The teacher-ratio table: per method and factor, forward / forward+backward time and forward+backward
    peak memory as ratios to the teacher at ``u x`` input (``teacher_rows``); its own costs in the first line.
    Empty when the teacher was not measured."""
    trows = {r["factor"]: r for r in report.get("teacher_rows") or []}
    if not trows:
        return ""
    factors = [u for u in dict.fromkeys(r["factor"] for r in report["rows"]) if u in trows]
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    by = {(r["factor"], r["method"]): r for r in report["rows"]}
    headers = ["method", "params x T"]
    for u in factors:
        headers += [f"{u}x fwd x T", f"{u}x fwd+bwd x T", f"{u}x peak x T"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    cells = [f"`{TEACHER}` at u x input", _params(report.get("teacher_params"))]
    for u in factors:
        t = trows[u]
        cells += [f"{_num(_ms(t['fwd_s']))} ms", f"{_num(_ms(t['fwd_bwd_s']))} ms", f"{_num(t['fwd_bwd_peak_mb'])} MiB"]
    lines.append("| " + " | ".join(cells) + " |")
    for m in methods:
        rows = [by.get((u, m)) for u in factors]
        first = next((r for r in rows if r), None)
        cells = [f"`{m}`", _num(first.get("params_teacher_ratio") if first else None)]
        for r in rows:
            if r is None:
                cells += ["-"] * 3
                continue
            cells += [_num(r.get(f"{k}")) for k in ("fwd_teacher_ratio", "fwd_bwd_teacher_ratio")]
            cells.append(_num(r.get("fwd_bwd_mem_teacher_ratio")))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f"- the teacher at {u}x input: {t['error']}" for u, t in trows.items() if t["status"] != "ok"]
    caption = (
        "Ratios to the teacher at u x input (x T; < 1: cheaper than running the teacher on the u x larger image), "
        "measured in the same round-robin; the teacher's fwd+bwd is the gradient w.r.t. its input image."
    )
    parts = [caption, "\n".join(lines)] + (["Failed:\n" + "\n".join(failed)] if failed else [])
    return "\n\n".join(parts) + "\n"


def plot_upsampler_cost(reports: Sequence[dict[str, Any]], path: str) -> str:
    """Time (fwd, fwd+bwd) and fwd+bwd peak memory vs factor, log-log, one column per report (teacher
    width), one line per method (the teacher at u x input dashed); written as PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = list(reports)
    fig, axes = plt.subplots(3, len(reports), figsize=(5.5 * len(reports), 11), squeeze=False)
    panels = [("fwd_s", "forward s"), ("fwd_bwd_s", "forward+backward s"), ("fwd_bwd_peak_mb", "fwd+bwd peak MiB")]
    for col, report in enumerate(reports):
        t = report["teacher"]
        series: dict[str, list[dict[str, Any]]] = {}
        for r in report["rows"]:
            series.setdefault(r["method"], []).append(r)
        if report.get("teacher_rows"):
            series[f"{TEACHER} at u x"] = list(report["teacher_rows"])
        for row, (key, label) in enumerate(panels):
            ax = axes[row][col]
            for method, rs in series.items():
                pts = [(r["factor"], r[key]) for r in rs if r.get(key)]
                if pts:
                    style = "--" if method.startswith(TEACHER) else "-"
                    ax.plot(*zip(*pts), style, marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("factor u")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"{t['name']} C={t['embed_dim']}, {t['input_size']} px input, {where(report)}")
        axes[0][col].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

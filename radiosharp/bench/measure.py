"""Timing and peak memory of one call, the same way for every benchmark.

Time: ``warmup`` untimed calls (kernel selection, allocator caches, lazy inits),
then ``repeats`` timed calls; the median is reported (robust to a stray slow run).
Calls that are compared with each other are timed round-robin
(:func:`measure_interleaved`), so a machine whose load drifts during the benchmark
slows them all alike instead of whichever happened to run last.
On CUDA the device is synchronized before each clock read, so queued kernels are
counted where they run.

Peak memory is the peak of memory allocated DURING the call above what was already
allocated when it started (activations, temporaries and outputs; not the weights or
the inputs), in bytes:

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``,
  minus ``memory_allocated()`` before the call.
- CPU: PyTorch's CPU allocator keeps no statistics, so one extra call runs under
  ``torch.profiler.profile(profile_memory=True)``, which records every allocation
  and free (``[memory]`` events, signed byte counts); their running sum in time order
  is the memory held by tensors made during the call, and its maximum the peak. Frees
  of blocks allocated before the call are not recorded (the profiler skips them), so
  they neither add nor subtract. The profiled call is not timed.
- other devices: not measured (``None``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Cost:
    """Median seconds of a call, its peak extra memory in bytes (None: not measured), all times."""

    seconds: float
    peak_bytes: int | None
    times: list[float] = field(default_factory=list)

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / 2**20


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the process's stderr file descriptor (restored even if the body raises).

    The profiler's C++ side writes start/stop lines and a warning per block freed
    that was allocated before profiling straight to fd 2. Only the extra, untimed
    memory call runs under this; the same call has already run (warm-up and timed
    repeats) with stderr open, so no message of its own is lost.
    """
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the running sum of CPU allocations during one call (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result  # the outputs count as held until here, as a caller would hold them
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        running += int(event.nbytes())
        peak = max(peak, running)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return int(peak)


def peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device)
    if device.type == "cpu":
        return cpu_peak_bytes(fn)
    return None


def measure(
    fn: Callable[[], Any], device: torch.device | str, warmup: int = 1, repeats: int = 5, memory: bool = True
) -> Cost:
    """Median time of ``fn`` over ``repeats`` calls after ``warmup``, and its peak memory."""
    times = time_call(fn, device, warmup, repeats)
    peak = peak_bytes(fn, device) if memory else None
    return Cost(statistics.median(times), peak, times)


def measure_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device | str,
    warmup: int = 1,
    repeats: int = 5,
    memory: bool = True,
) -> dict[str, Cost]:
    """:func:`measure` for several calls, their timed repeats taken in turn (call 1, 2, ..., 1, 2, ...)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].extend(time_call(fn, device, warmup=0, repeats=1))
    return {
        name: Cost(statistics.median(times[name]), peak_bytes(fn, device) if memory else None, times[name])
        for name, fn in fns.items()
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``; None when either is unknown or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference

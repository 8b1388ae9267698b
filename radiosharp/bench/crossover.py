"""Where FeatSharp becomes cheaper than running the teacher at ``u x`` input (paper eq. 6, fig. 14).

FeatSharp's cost at factor ``u`` is ``1 + u^2`` teacher calls at the native size (the
global view and the tiles) plus a JBU stack and one local-attention block, both
linear in the ``u^2`` output pixels: ``f(u) ~ A + B u^2``. The teacher at ``u x`` input
has ``u^2`` times the tokens: its cost grows like ``u^2`` while the per-token work
(MLP, projections) dominates and like ``u^4`` once global attention does, so
``g(u) ~ c u^p`` with ``2 <= p <= 4``. With ``p = 4`` and the block ignored,
``1 + u^2 = u^4`` crosses at ``u = sqrt((1 + sqrt 5) / 2) ~ 1.27``; with ``p = 2`` the
curves never cross (``1 + u^2 > u^2``). Small models and memory-bound kernels sit
near ``p = 2`` (the paper measured a crossing near 3.3x for ViT-H/14 on an A100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_FACTOR = 64.0  # search range of the extrapolation: (1, MAX_FACTOR]


def analytic_crossing(exponent: float) -> float | None:
    """Smallest ``u > 1`` with ``1 + u^2 <= u^p`` (teacher calls only); None if it never happens."""
    return _first_crossing(lambda u: 1 + u * u, lambda u: u**exponent)


def _first_crossing(cost_a, cost_b, lo: float = 1.0, hi: float = MAX_FACTOR) -> float | None:
    """Smallest ``u`` in ``(lo, hi]`` where ``cost_a(u) <= cost_b(u)`` (grid search, then bisection)."""
    steps = 2000
    prev = lo
    for i in range(1, steps + 1):
        u = lo * (hi / lo) ** (i / steps)
        if cost_a(u) <= cost_b(u):
            a, b = prev, u
            for _ in range(60):
                mid = 0.5 * (a + b)
                a, b = (a, mid) if cost_a(mid) <= cost_b(mid) else (mid, b)
            return b
        prev = u
    return None


def fit_power_law(factors: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
    """``(c, p)`` of ``cost = c * u^p``, least squares in log-log space (needs 2+ distinct factors)."""
    xs, ys = [math.log(u) for u in factors], [math.log(c) for c in costs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_power_law needs at least two distinct factors")
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return math.exp(my - p * mx), p


def fit_featsharp(factors: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
    """``(A, B)`` of ``cost = A + B u^2`` by least squares, both kept >= 0.

    With one factor (or a negative fit) falls back to the paper's model ``B (1 + u^2)``.
    """
    xs = [u * u for u in factors]
    if len(set(xs)) >= 2:
        mx, my = sum(xs) / len(xs), sum(costs) / len(costs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, costs)) / sum((x - mx) ** 2 for x in xs)
        a = my - b * mx
        if a >= 0 and b >= 0:
            return a, b
    b = sum(c * (1 + x) for c, x in zip(costs, xs)) / sum((1 + x) ** 2 for x in xs)
    return b, b


def crossover(
    factors: Sequence[int], teacher_seconds: Sequence[float], featsharp_seconds: Sequence[float], native_seconds: float
) -> dict:
    """The factor where FeatSharp (teacher calls included) gets cheaper than the ``u x`` teacher.

    ``measured``: the smallest measured factor where it already is (None if none);
    ``interpolated``: the crossing between the last measured factor where it is not and
    the first where it is (log-linear in the time ratio); ``extrapolated``: when no
    measured factor crosses, the crossing of the fitted models ``g(u) = c u^p`` (teacher,
    fitted on the native time and every measured factor) and ``f(u) = A + B u^2``
    (FeatSharp), searched up to ``u = 64`` (None: the fits never cross);
    ``analytic``: the teacher-calls-only model of eq. 6 for ``p = 4``, ``p = 2`` and
    the measured ``p``.
    """
    order = sorted(range(len(factors)), key=lambda i: factors[i])
    us = [float(factors[i]) for i in order]
    ratios = [featsharp_seconds[i] / teacher_seconds[i] for i in order]
    measured = next((u for u, r in zip(us, ratios) if r <= 1), None)
    interpolated = None
    for (u0, r0), (u1, r1) in zip(zip(us, ratios), zip(us[1:], ratios[1:])):
        if r0 > 1 >= r1:
            interpolated = u0 + (u1 - u0) * math.log(r0) / (math.log(r0) - math.log(r1))
            break
    points_u = [1.0] + [u for u in us if u != 1.0]
    points_t = [native_seconds] + [teacher_seconds[i] for i in order if factors[i] != 1]
    c, p = fit_power_law(points_u, points_t)
    a, b = fit_featsharp(us, [featsharp_seconds[i] for i in order])
    extrapolated = None
    if measured is None:
        extrapolated = _first_crossing(lambda u: a + b * u * u, lambda u: c * u**p)
    if measured is not None:
        note = f"measured: featsharp is cheaper than the hi-res teacher from {measured:g}x on"
    elif extrapolated is not None:
        note = (
            f"no measured factor crosses; extrapolated from the fits: featsharp gets cheaper at "
            f"~{extrapolated:.2f}x (teacher cost ~ u^{p:.2f})"
        )
    else:
        note = (
            f"no measured factor crosses, and the fits do not cross up to {MAX_FACTOR:g}x: the teacher "
            f"scales as ~u^{p:.2f} here (u^2: constant cost per token; u^4: attention-bound), so "
            "featsharp's 1+u^2 teacher calls stay dearer"
        )
    return {
        "measured": measured,
        "interpolated": interpolated,
        "extrapolated": extrapolated,
        "teacher_fit": {"c_seconds": c, "exponent": p},
        "featsharp_fit": {"a_seconds": a, "b_seconds": b},
        "analytic": {
            "attention_bound_u4": analytic_crossing(4.0),
            "patch_linear_u2": analytic_crossing(2.0),
            "measured_exponent": analytic_crossing(p),
        },
        "note": note,
    }

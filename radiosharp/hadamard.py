"""Hadamard matrices: +-1 matrices with ``H @ H.T == n * I``.

PHI-S rotates a teacher's (eigen-aligned) features with a normalized Hadamard
matrix, so it needs one of the teacher's width: powers of two, but also 1152
(= 36 * 32), 1280 (= 20 * 64), 1536 (= 12 * 128) and small test widths.

We build ``H_n = Sylvester(2^k) (x) Paley(m)`` for a factorization ``n = 2^k * m``:

- Sylvester doubling gives every power of two (Kronecker with ``[[1,1],[1,-1]]``);
- Paley I gives order ``q + 1`` for a prime ``q = 3 (mod 4)``;
- Paley II gives order ``2 (q + 1)`` for a prime ``q = 1 (mod 4)``.

The Kronecker product of two Hadamard matrices is Hadamard, so any such ``n`` works.
"""

from __future__ import annotations

import functools
import itertools

import torch


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    f = 3
    while f * f <= q:
        if q % f == 0:
            return False
        f += 2
    return True


def _legendre_table(q: int) -> torch.Tensor:
    """``chi[a]`` for a in 0..q-1: 0 at 0, +1 on quadratic residues mod q, -1 elsewhere."""
    chi = -torch.ones(q, dtype=torch.int64)
    chi[0] = 0
    squares = (torch.arange(1, q, dtype=torch.int64) ** 2) % q
    chi[squares] = 1
    return chi


def _jacobsthal(q: int) -> torch.Tensor:
    """``Q[i, j] = chi(j - i)``: antisymmetric for q = 3 (mod 4), symmetric for q = 1 (mod 4)."""
    idx = torch.arange(q)
    return _legendre_table(q)[(idx[None, :] - idx[:, None]) % q]


def _bordered_jacobsthal(q: int, lower_sign: int) -> torch.Tensor:
    """``[[0, 1^T], [lower_sign * 1, Q]]`` of order q + 1."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    c[0, 1:] = 1
    c[1:, 0] = lower_sign
    c[1:, 1:] = _jacobsthal(q)
    return c


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 (mod 4): ``I + S`` with S the skew bordered Jacobsthal."""
    return torch.eye(q + 1, dtype=torch.int64) + _bordered_jacobsthal(q, -1)


def _paley2(q: int) -> torch.Tensor:
    """Order 2 (q + 1) for a prime q = 1 (mod 4), from the symmetric conference matrix C."""
    conference = _bordered_jacobsthal(q, 1)
    a = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    b = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    return torch.kron(conference, a) + torch.kron(torch.eye(q + 1, dtype=torch.int64), b)


def _core(m: int) -> tuple[str, int] | None:
    """How to build a Hadamard core of order m (not a power of two), or None."""
    if m == 1:
        return ("one", 1)
    q = m - 1
    if q % 4 == 3 and _is_prime(q):
        return ("paley1", q)
    if m % 2 == 0:
        q = m // 2 - 1
        if q % 4 == 1 and _is_prime(q):
            return ("paley2", q)
    return None


def _plan(n: int) -> tuple[int, tuple[str, int]] | None:
    """``(2^k, core)`` with ``n = 2^k * core order``, preferring the largest Sylvester part."""
    if n < 1:
        return None
    power = n & -n  # the largest power of two dividing n
    while power >= 1:
        core = _core(n // power)
        if core is not None:
            return power, core
        power //= 2
    return None


def is_hadamard_order(n: int) -> bool:
    """Whether :func:`hadamard` can build an order-``n`` matrix."""
    return _plan(n) is not None


def supported_orders_near(n: int, count: int = 2) -> list[int]:
    """The closest supported orders below and above ``n`` (up to ``count`` each side)."""
    below = list(itertools.islice((m for m in range(n - 1, 0, -1) if is_hadamard_order(m)), count))
    above = list(itertools.islice((m for m in itertools.count(max(n + 1, 1)) if is_hadamard_order(m)), count))
    return sorted(below) + above


@functools.lru_cache(maxsize=32)
def _hadamard_int(n: int) -> torch.Tensor:
    plan = _plan(n)
    if plan is None:
        near = ", ".join(str(m) for m in supported_orders_near(n))
        raise ValueError(
            f"no Hadamard matrix of order {n} can be built here (supported: 2^k * m with m = 1, "
            f"q + 1 for a prime q = 3 mod 4, or 2(q + 1) for a prime q = 1 mod 4); "
            f"nearest supported orders: {near}"
        )
    power, (kind, q) = plan
    if kind == "paley1":
        h = _paley1(q)
    elif kind == "paley2":
        h = _paley2(q)
    else:
        h = torch.ones(1, 1, dtype=torch.int64)
    doubling = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while power > 1:
        h = torch.kron(doubling, h)
        power //= 2
    return h.to(torch.int8)


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An (unnormalized, +-1) Hadamard matrix of order ``n``: ``H @ H.T == n * I``.

    Divide by ``sqrt(n)`` for an orthogonal matrix. Results are cached per ``n``;
    each call returns a fresh tensor, so callers may modify it.
    Raises ValueError naming ``n`` and the nearest supported orders.
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"hadamard order must be an int, got {type(n).__name__}")
    return _hadamard_int(n).to(dtype=dtype, copy=True)

"""Integer factorization of upsampling factors (JBU stacks run one stage per prime factor)."""

from __future__ import annotations


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in descending order (14 -> [7, 2], 4 -> [2, 2], 1 -> [])."""
    if n < 1:
        raise ValueError(f"upsampling factor must be an integer >= 1, got {n}")
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return sorted(out, reverse=True)

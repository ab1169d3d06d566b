"""The phi functions of exponential integrators, shared by DPM-Solver, DPM-Solver++ and UniPC.

``phi_0(z) = e^z`` and ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``, i.e. ``phi_k(z) = sum_j z^j / (j + k)!``
(Hochbruck & Ostermann 2010). They are the exact weights of a polynomial in the step: with
``h = lambda_next - lambda`` and ``lambda = -log sigma``, the data-prediction step integrates
``D(lambda + tau) = D + tau D' + tau^2/2 D'' + ...`` to

    x_next = (sigma_next / sigma) x + h phi_1(-h) D + h^2 phi_2(-h) D' + h^3 phi_3(-h) D'' + ...

and the noise-prediction step (DPM-Solver) has ``-sigma_next h^(k+1) phi_(k+1)(h)`` on eps's k-th
derivative. ``h phi_1(h)`` is ``expm1(h)``.

For ``|z| >= SERIES_BELOW`` the recursion starts from ``expm1(z) / z``: each step cancels about
``(k + 1) / |z|`` ulps, a few at most there. Below it the recursion would cancel badly (phi_2 of
1e-8 would keep 8 digits), so the Taylor series is summed instead, by Horner's rule with enough terms
for full double precision; ``z = 0`` gives ``1 / k!``.
"""

from __future__ import annotations

import math

__all__ = ["SERIES_BELOW", "phi"]

SERIES_BELOW = 0.5
_SERIES_TERMS = 20  # 0.5^20 / 21! ~ 2e-26: below float64 rounding for every k >= 1


def phi(k: int, z: float) -> float:
    """``phi_k(z)`` for an integer ``k >= 0`` and a real ``z`` (a Python float)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"phi: k must be an integer >= 0, got {k!r}")
    z = float(z)
    if k == 0:
        return math.exp(z)
    if abs(z) < SERIES_BELOW:
        # k! phi_k(z) = 1 + z/(k+1) (1 + z/(k+2) (1 + ...)), innermost first
        acc = 1.0
        for j in range(k + _SERIES_TERMS, k, -1):
            acc = 1.0 + z / j * acc
        return acc / math.factorial(k)
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1 / math.factorial(j)) / z
    return value

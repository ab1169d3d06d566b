"""Restart sampling (Xu et al. 2023): Heun ODE steps plus restart intervals that add noise and re-solve.

Along the schedule the sampler takes Heun steps (Euler onto sigma = 0). Each restart interval
``(t_min, t_max, K, n)`` is anchored at the positive schedule point ``sigma_j`` (j >= 1) below ``t_max``
nearest to ``t_min`` (the paper snaps t_min to the schedule the same way). After the step that lands on
``sigma_j`` it runs K times: jump forward ``x += s_noise sqrt(t_max^2 - sigma_j^2) eps`` with fresh
noise, then re-solve the ODE from ``t_max`` back to ``sigma_j`` with ``n`` Heun steps on a Karras
(rho = 7) sub-schedule. The default is one interval ``[0.06, 0.30]`` with K = 2 and n = 3.

NFE: ``2 (steps - 1) + 1`` for the base steps plus ``2 n K`` for every interval that has an anchor.
Whether an interval has one depends on the schedule (none on a single step straight to 0, none when
every positive level is above t_max), so the count is not a per-step constant: the sampler is registered
without a fixed NFE (``nfe_per_step=None``) and ``restart_nfe(sigmas, ...)`` gives the exact count
(also as the spec's ``count_nfe``, so ``samplers.registry.nfe_on("restart", sigmas)`` knows it).
"""

from __future__ import annotations

import math

import torch

from .registry import register
from .steps import heun_step, report

RESTART = "Xu et al. 2023, Restart Sampling for Improving Generative Processes"
# The default intervals, in the string syntax ``parse_restart_list`` (and the CLI's --restart-list)
# accepts, so the registered default can be printed and passed back; DEFAULT_RESTARTS is its parsed value.
DEFAULT_RESTART_LIST = "0.06,0.30,2,3"


def parse_restart_list(restart_list) -> tuple[tuple[float, float, int, int], ...]:
    """Intervals ``(t_min, t_max, K, n)`` from a sequence of 4-tuples or a string
    ``"t_min,t_max,K,n;..."`` (e.g. ``"0.06,0.30,2,3"``)."""
    if isinstance(restart_list, str):
        items = [part.split(",") for part in restart_list.split(";") if part.strip()]
    else:
        items = list(restart_list)
    out = []
    for item in items:
        try:
            t_min, t_max, k, n = item
            t_min, t_max = float(t_min), float(t_max)
            k, n = int(str(k).strip()), int(str(n).strip())
        except (TypeError, ValueError):
            typed = ",".join(map(str, item)) if isinstance(item, (list, tuple)) else item
            raise ValueError(f"a restart interval is t_min,t_max,K,n (e.g. 0.06,0.30,2,3), got {typed}") \
                from None
        if not (0 < t_min < t_max and math.isfinite(t_max)) or k < 0 or n < 1:
            raise ValueError(f"restart interval needs 0 < t_min < t_max, K >= 0, n >= 1, got {item!r}")
        out.append((t_min, t_max, k, n))
    return tuple(out)


DEFAULT_RESTARTS = parse_restart_list(DEFAULT_RESTART_LIST)  # ((0.06, 0.3, 2, 3),)


def restart_anchors(sigmas, intervals) -> dict[int, list[tuple[float, float, int, int]]]:
    """Schedule index -> the intervals restarted right after reaching it."""
    anchors: dict[int, list] = {}
    for interval in intervals:
        t_min, t_max = interval[:2]
        candidates = [j for j in range(1, len(sigmas)) if 0 < sigmas[j] < t_max]
        if candidates:
            j = min(candidates, key=lambda j: abs(sigmas[j] - t_min))
            anchors.setdefault(j, []).append(interval)
    return anchors


def restart_nfe(sigmas, restart_list=DEFAULT_RESTART_LIST) -> int:
    """Exact denoiser evaluations of ``restart`` on ``sigmas`` (a list of floats); ``restart_list`` as
    ``parse_restart_list`` accepts it (a string or a sequence of intervals)."""
    sigmas = [float(s) for s in sigmas]
    base = sum(2 if s_next > 0 else 1 for s_next in sigmas[1:])
    anchors = restart_anchors(sigmas, parse_restart_list(restart_list))
    return base + sum(2 * n * k for group in anchors.values() for _, _, k, n in group)


def _sub_schedule(t_max: float, t_min: float, n: int, rho: float = 7.0) -> list[float]:
    hi, lo = t_max ** (1 / rho), t_min ** (1 / rho)
    return [t_max] + [((1 - j / n) * hi + j / n * lo) ** rho for j in range(1, n)] + [t_min]


@register("restart", order=2, nfe_per_step=None, last_step_nfe=None, stochastic=True, noise="iid",
          reference=RESTART,
          description="Restart sampling: Heun ODE steps, K noise-and-re-solve loops per restart interval",
          count_nfe=lambda sigmas, options: restart_nfe(sigmas, options["restart_list"]))
def restart(model, x, sigmas, *, noise=None, callback=None, restart_list=DEFAULT_RESTART_LIST, s_noise=1.0):
    """Heun along ``sigmas`` with restart intervals (see the module docstring for the NFE).

    ``restart_list``: a string ``"t_min,t_max,K,n;..."`` or a sequence of ``(t_min, t_max, K, n)``."""
    anchors = restart_anchors(sigmas, parse_restart_list(restart_list))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        x = heun_step(model, x, sigma, denoised, sigma_next)
        for _, t_max, k, n in anchors.get(i + 1, ()):
            sub = _sub_schedule(t_max, sigma_next, n)
            for _ in range(k):
                if s_noise:
                    jump = s_noise * math.sqrt(t_max**2 - sigma_next**2)
                    x = torch.add(x, noise(t_max, sigma_next), alpha=jump)
                for s, s_to in zip(sub, sub[1:]):
                    x = heun_step(model, x, s, model(x, s), s_to)
    return x

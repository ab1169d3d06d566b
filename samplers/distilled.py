"""Samplers for distilled networks: consistency models (multistep consistency sampling), LCM and TCD.

A distilled network maps a noisy ``x`` at any level straight to a clean estimate, so these samplers do
not integrate the probability-flow ODE: each step denoises, goes deterministically down to an intermediate
level ``sigma_s`` (a DDIM step, ``x_s = D + sigma_s (x - D) / sigma``), then adds fresh noise up to the next
level, ``x' = x_s + std z``. The three differ only in ``sigma_s`` and ``std``:

* ``consistency`` (Song et al. 2023, Algorithm 1): ``sigma_s = 0``, ``std = s_noise sqrt(max(sigma', eps)^2
  - eps^2)``, ``eps`` the consistency model's smallest level (where its boundary condition D = x holds);
* ``lcm`` (Luo et al. 2023): ``sigma_s = 0``, ``std = sigma'`` (consistency with ``eps = 0``);
* ``tcd`` (Zheng et al. 2024): ``sigma_s`` below ``sigma'`` set by ``gamma`` (:func:`tcd_level`),
  ``std = sqrt(sigma'^2 - sigma_s^2)``; gamma 0 is deterministic DDIM, gamma 1 is ``lcm`` (continuous
  models).

In VP variables (``x_t = sqrt(abar) x``) these are exactly the steps of the original papers. The
boundary-condition scalings a distilled network applies to its output (c_skip/c_out) belong to the
model's denoiser, not to the sampler. No noise is drawn where ``std`` is 0 (onto sigma = 0, at or below
``eps``, tcd's gamma = 0), so every draw comes from the sample's own seed stream in step order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch

from .registry import register
from .steps import euler_step, report

#: Song et al.'s (and EDM's, and diffusers' CMStochasticIterativeScheduler's) smallest noise level
CONSISTENCY_EPS = 0.002

# (sigma_next) -> (sigma_s, std): where a step's DDIM part lands and the noise it then adds
Split = Callable[[float], tuple[float, float]]


def denoise_and_renoise(model, x, sigmas, *, noise, callback, split: Split):
    """Each step: ``D = model(x, sigma)``, DDIM from sigma to ``sigma_s``, then ``std`` of fresh noise,
    with ``(sigma_s, std) = split(sigma_next)``. One evaluation per step."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        sigma_s, std = split(sigma_next)
        x = denoised if sigma_s == 0 else euler_step(model, x, sigma, denoised, sigma_s)
        if std > 0:
            x = torch.add(x, noise(sigma, sigma_next), alpha=std)
    return x


def _check_number(name: str, value, low: float, high: float = math.inf) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value <= high)
    if not ok:
        what = f"number in [{low:g}, {high:g}]" if math.isfinite(high) else f"finite number >= {low:g}"
        shown = f"{value:g}" if isinstance(value, int | float) else repr(value)
        raise ValueError(f"{name} must be a {what}, got {shown}")


def consistency_split(eps: float, s_noise: float) -> Split:
    """Algorithm 1's re-noising: from the clean estimate to ``max(sigma', eps)``, where the consistency
    function starts (a level at or below ``eps`` gets none: the boundary condition holds there)."""
    def split(sigma_next):
        if sigma_next <= 0:
            return 0.0, 0.0
        level = max(sigma_next, eps)
        return 0.0, s_noise * math.sqrt(level * level - eps * eps)
    return split


@register("consistency", order=1, nfe_per_step=1, stochastic=True, noise="iid",
          option_help={"eps": "Consistency model's smallest noise level (its boundary D = x); noise "
                              "re-added to reach sigma is sqrt(sigma^2 - eps^2)."},
          reference="Song et al. 2023, Consistency Models (Algorithm 1, multistep consistency sampling)",
          description="Multistep consistency sampling: denoise, then re-noise to the next level")
def consistency(model, x, sigmas, *, noise=None, callback=None, eps=CONSISTENCY_EPS, s_noise=1.0):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    ``eps`` defaults to 0.002, the smallest level of Song et al.'s models, EDM's and this project's
    ``consistency`` preconditioning; set it to the model's own ``sigma_min`` when that differs. It is not
    read from the model, so the same options give the same samples whatever a wrapper passes through.
    """
    _check_number("consistency eps", eps, 0.0)
    return denoise_and_renoise(model, x, sigmas, noise=noise, callback=callback,
                               split=consistency_split(eps, s_noise))


@register("lcm", order=1, nfe_per_step=1, stochastic=True, noise="iid",
          reference="Luo et al. 2023, Latent Consistency Models (multistep sampling, Algorithm 1)",
          description="LCM multistep sampling: denoise, then re-noise to the next level")
def lcm(model, x, sigmas, *, noise=None, callback=None):
    """LCM's multistep sampling: ``x' = D(x, sigma) + sigma' z`` (consistency sampling with eps = 0)."""
    return denoise_and_renoise(model, x, sigmas, noise=noise, callback=callback,
                               split=consistency_split(0.0, 1.0))


def _fractional_timestep(table: list[float], sigma: float) -> float:
    """The index of ``sigma`` in an ascending table, interpolated in log sigma (an integer on an entry)."""
    low = min(max(bisect.bisect_right(table, sigma) - 1, 0), len(table) - 2)
    a, b = math.log(table[low]), math.log(table[low + 1])
    t = low + min(max((math.log(sigma) - a) / (b - a), 0.0), 1.0)
    # a level that went through float32 is still its entry (the floor below must not drop a timestep)
    return round(t) if abs(t - round(t)) < 1e-6 else t


def tcd_level(sigma_next: float, gamma: float, table=None) -> float:
    """TCD's intermediate level ``sigma_s`` for a step onto ``sigma_next`` (at most ``sigma_next``).

    With a discrete model's ascending table (``model.sigmas``, entry ``t`` the level of timestep ``t``)
    and ``sigma_next`` within it: Zheng et al.'s rule on the timestep grid, ``s = floor((1 - gamma) t')``
    with ``t'`` the timestep of ``sigma_next`` (interpolated in log sigma between entries), and
    ``sigma_s = table[s]``. Otherwise (continuous models, levels below the table such as the last step
    onto 0): ``sigma_s = (1 - gamma) sigma_next``. Either way gamma 0 gives ``sigma_next`` (no noise:
    deterministic DDIM); gamma 1 gives 0 on continuous models (LCM) and the table's first level on
    discrete ones (as diffusers' TCDScheduler).
    """
    if table is not None and len(table) > 1 and table[0] <= sigma_next:
        t_next = _fractional_timestep(table, sigma_next)
        s = (1 - gamma) * t_next
        return sigma_next if s == t_next else min(table[math.floor(s)], sigma_next)
    return (1 - gamma) * sigma_next


def _table(model) -> list[float] | None:
    table = getattr(model, "sigmas", None)
    return None if table is None else torch.as_tensor(table).detach().to("cpu", torch.float64).tolist()


@register("tcd", order=1, nfe_per_step=1, stochastic=True, noise="iid",
          option_help={"gamma": "TCD's gamma (diffusers' eta): how much of each step re-noises; 0 is "
                                "deterministic DDIM, 1 is LCM."},
          reference="Zheng et al. 2024, Trajectory Consistency Distillation (strategic stochastic sampling)",
          description="TCD: DDIM to an intermediate level set by gamma, then re-noise to the next")
def tcd(model, x, sigmas, *, noise=None, callback=None, gamma=0.3):
    """TCD's strategic stochastic sampling; ``gamma`` 0.3 is the TCD pipeline's default.

    Where each step's DDIM part lands is :func:`tcd_level` (the model's discrete table, when it has one,
    places it on the timestep grid as the paper does)."""
    _check_number("tcd gamma", gamma, 0.0, 1.0)
    table = _table(model)

    def split(sigma_next):
        sigma_s = tcd_level(sigma_next, gamma, table)
        return sigma_s, math.sqrt(max(sigma_next**2 - sigma_s**2, 0.0))

    return denoise_and_renoise(model, x, sigmas, noise=noise, callback=callback, split=split)

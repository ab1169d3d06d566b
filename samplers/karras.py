"""Karras et al. (2022) Algorithm 2: ODE steps with optional "churn" (euler, heun, dpm_2, edm).

Each step first raises the noise level from sigma_i to sigma_hat = (1 + gamma_i) sigma_i by adding fresh
noise, then takes one ODE step from sigma_hat to sigma_{i+1}. With S_churn = 0 (the default) this is a
deterministic ODE solver.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from .registry import register
from .steps import churn_gamma, dpm2_step, euler_step, evaluate, heun_step, lincomb, report

EDM_PAPER = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models"


def churned(update, model, x, sigmas, *, noise, callback, s_churn, s_tmin, s_tmax, s_noise,
            round_sigma=None):
    """Algorithm 2's loop around a single-step ``update``, or a list of them (one per step) for a
    sampler whose step depends on where it sits in the schedule; each step starts from
    ``steps.evaluate``'s point (CFG++ where the sampler declares it)."""
    steps = len(sigmas) - 1
    updates = update if isinstance(update, list) else [update] * steps
    for i, step_update in enumerate(updates):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (1 + gamma)
        if round_sigma is not None:
            sigma_hat = float(round_sigma(sigma_hat))
        if sigma_hat > sigma:
            x = torch.add(x, noise(sigma_hat, sigma), alpha=s_noise * math.sqrt(sigma_hat**2 - sigma**2))
        x_step, denoised, _ = evaluate(model, x, sigma_hat)
        report(callback, i, x, sigma, denoised, sigma_hat)
        x = step_update(model, x_step, sigma_hat, denoised, sigma_next)
    return x


@register("euler", order=1, nfe_per_step=1, noise="iid", reference=EDM_PAPER, cfg_pp=True,
          description="Euler steps of the probability-flow ODE, with optional EDM churn")
def euler(model, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
          s_noise=1.0):
    """Euler on the PF-ODE in Algorithm 2's loop (churn off by default)."""
    return churned(euler_step, model, x, sigmas, noise=noise, callback=callback, s_churn=s_churn,
                   s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


@register("heun", order=2, nfe_per_step=2, last_step_nfe=1, noise="iid", reference=EDM_PAPER,
          description="Heun (2nd order) steps, Euler on the last; optional churn")
def heun(model, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
         s_noise=1.0):
    """Heun's method (EDM Algorithm 1) in Algorithm 2's loop; an Euler step onto sigma = 0."""
    return churned(heun_step, model, x, sigmas, noise=noise, callback=callback, s_churn=s_churn,
                   s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


@register("dpm_2", order=2, nfe_per_step=2, last_step_nfe=1, noise="iid",
          reference="Lu et al. 2022 (DPM-Solver-2) in Karras' Algorithm 2, as k-diffusion",
          description="Midpoint in log-sigma (DPM-Solver-2 style), Euler on the last; optional churn")
def dpm_2(model, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
          s_noise=1.0):
    """DPM-Solver-2 steps (log-sigma midpoint) in Algorithm 2's loop; an Euler step onto sigma = 0."""
    return churned(dpm2_step, model, x, sigmas, noise=noise, callback=callback, s_churn=s_churn,
                   s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


@register("edm", order=2, nfe_per_step=2, last_step_nfe=1, noise="iid", reference=EDM_PAPER + ", Algorithm 2",
          description="EDM stochastic Heun (Algorithm 2), sigma_hat rounded by the model's round_sigma")
def edm(model, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
        s_noise=1.0):
    """EDM Algorithm 2 as NVlabs' edm_sampler: Heun with churn, gamma = min(S_churn/N, sqrt(2) - 1),
    and sigma_hat passed through the model's ``round_sigma`` when it has one (discrete-time models)."""
    return churned(heun_step, model, x, sigmas, noise=noise, callback=callback, s_churn=s_churn,
                   s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                   round_sigma=getattr(model, "round_sigma", None))


# --- Heun++ ----------------------------------------------------------------------------------------


def heunpp_step(model, x, sigma, denoised, sigma_to, *, chain, scale):
    """One Heun++ step: Euler steps from (x, sigma) through the levels of ``chain`` (the next ones of the
    schedule, the first being ``sigma_to``), a derivative d_j at each, and the step
    ``x + (sigma_to - sigma) (w_0 d_0 + sum_j w_j d_j)`` with ``w_j = chain_j / (k * scale)`` for
    k = len(chain) + 1 evaluations and ``w_0 = 1 - sum_j w_j``. An empty chain is an Euler step.
    """
    dt = sigma_to - sigma
    d = (x - denoised) / sigma
    weights = [level / ((len(chain) + 1) * scale) for level in chain]
    terms, x_j, d_j, level_j = [(1.0, x), (dt * (1 - sum(weights)), d)], x, d, sigma
    for level, w in zip(chain, weights):
        x_j = lincomb((1.0, x_j), (level - level_j, d_j))  # Euler on to the next level
        d_j, level_j = (x_j - model(x_j, level)) / level, level
        terms.append((dt * w, d_j))
    return lincomb(*terms)


def heunpp2_nfe(sigmas, options) -> int:
    """Denoiser calls of ``heunpp2`` on ``sigmas``: 3 per step, 2 on the last but one, 1 on the last."""
    steps = len(sigmas) - 1
    return sum(1 + min(2, steps - 1 - i) for i in range(steps))


# Booked as 3 per step with a free last step: 3(N - 1), exact from 2 steps on (one step alone is an Euler
# step, 1 NFE); count_nfe is exact on every schedule.
@register("heunpp2", order=1, nfe_per_step=3, last_step_nfe=0, noise="iid",
          reference="Heun++ of Carzit's sd-webui-samplers-scheduler, as ComfyUI's sample_heunpp2",
          description="Heun++: Heun with a third evaluation, weights sigma_j / sigma_max; optional churn",
          count_nfe=heunpp2_nfe)
def heunpp2(model, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
            s_noise=1.0):
    """Heun++ (ComfyUI's heunpp2) in Algorithm 2's loop.

    Step i evaluates at sigma_hat, then Euler-chains to sigma_{i+1} and sigma_{i+2} and evaluates
    there; the step is Euler's with d replaced by w_1 d + w_2 d_2 + w_3 d_3, w_2 = sigma_{i+1} / 3
    sigma_0, w_3 = sigma_{i+2} / 3 sigma_0, w_1 = 1 - w_2 - w_3 (sigma_0 the schedule's first level).
    The last but one step has no sigma_{i+2} before the end: two evaluations, w_2 = sigma_{i+1} / 2
    sigma_0. The last step is Euler's. The weights on the later evaluations shrink with sigma, so
    the method is Euler's plus a correction that fades towards the data end: first order (measured
    in tests/test_convergence.py), whatever its cost of three evaluations a step.
    """
    steps = len(sigmas) - 1
    updates = [partial(heunpp_step, chain=sigmas[i + 1:min(i + 3, steps)], scale=sigmas[0])
               for i in range(steps)]
    return churned(updates, model, x, sigmas, noise=noise, callback=callback, s_churn=s_churn,
                   s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)

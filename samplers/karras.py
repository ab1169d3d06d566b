"""Karras et al. (2022) Algorithm 2: ODE steps with optional "churn" (euler, heun, dpm_2, edm).

Each step first raises the noise level from sigma_i to sigma_hat = (1 + gamma_i) sigma_i by adding fresh
noise, then takes one ODE step from sigma_hat to sigma_{i+1}. With S_churn = 0 (the default) this is a
deterministic ODE solver.
"""

from __future__ import annotations

import math

import torch

from .registry import register
from .steps import churn_gamma, dpm2_step, euler_step, evaluate, heun_step, report

EDM_PAPER = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models"


def churned(update, model, x, sigmas, *, noise, callback, s_churn, s_tmin, s_tmax, s_noise,
            round_sigma=None):
    """Algorithm 2's loop around a single-step ``update`` (from ``steps.evaluate``'s point: CFG++ where the
    sampler declares it)."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (1 + gamma)
        if round_sigma is not None:
            sigma_hat = float(round_sigma(sigma_hat))
        if sigma_hat > sigma:
            x = torch.add(x, noise(sigma_hat, sigma), alpha=s_noise * math.sqrt(sigma_hat**2 - sigma**2))
        x_step, denoised, _ = evaluate(model, x, sigma_hat)
        report(callback, i, x, sigma, denoised, sigma_hat)
        x = update(model, x_step, sigma_hat, denoised, sigma_next)
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

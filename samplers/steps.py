"""Pieces shared by samplers: one-step updates of the probability-flow ODE and small helpers.

Conventions: ``x = y + sigma * n``; the ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma``. Noise levels
are Python floats (coefficients are scalar arithmetic, not 0-dim tensor ops); only images are tensors.
A single-step update has the signature ``update(model, x, sigma, denoised, sigma_to) -> x`` where
``denoised = model(x, sigma)`` is already known, so samplers can wrap any update in churn or ancestral
noise without repeating it.
"""

from __future__ import annotations

import math

import torch


def lincomb(*terms: tuple[float, torch.Tensor]) -> torch.Tensor:
    """``sum(c * t for c, t in terms)`` in one output buffer (fewer passes over the image)."""
    (c0, t0), *rest = terms
    out = t0 * c0
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def report(callback, i, x, sigma, denoised, sigma_hat=None) -> None:
    """Pass a step to a k-diffusion-style callback (a dict with x, i, sigma, sigma_hat, denoised)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def lam(sigma: float) -> float:
    """Half log-SNR ``lambda = -log sigma`` (the time variable of DPM-Solver)."""
    return -math.log(sigma)


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic step to ``sigma_down`` plus fresh noise
    of std ``sigma_up``, with ``sigma_down^2 + sigma_up^2 = sigma_next^2``. ``eta`` = 1 is the DDPM
    posterior (ancestral sampling), 0 the deterministic ODE step."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM Algorithm 2's gamma_i: ``min(S_churn / N, sqrt 2 - 1)`` inside [S_tmin, S_tmax], else 0."""
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / steps, math.sqrt(2) - 1)


def evaluate(model, x, sigma, *, network_eps=False):
    """One evaluation of the model as ``(x_step, target, direction)``: the step's x0 target, the x0 whose
    noise ``(x - direction) / sigma`` the step re-noises with, and the point the step starts from,
    ``x_step = x + (target - direction) = target + sigma * (x - direction) / sigma``: the point at sigma
    with the target as its x0 and the direction's noise, so any update written for one x0 takes both.

    Under CFG++ (a model offering ``with_unconditional``, ``samplers.guidance.CFGPlusPlus``) the target is
    the guided x0 and the direction the unconditional one (Chung et al. 2024); with ``network_eps`` and an
    x0 transform offering ``split`` (thresholding) the direction is the untransformed x0 (diffusers' DDIM).
    Otherwise both are the one output and ``x_step`` is ``x`` itself, so the step is unchanged bit for bit.
    """
    if hasattr(model, "with_unconditional"):
        target, direction = model.with_unconditional(x, sigma)
    elif network_eps and hasattr(model, "split"):
        direction, target = model.split(x, sigma)
    else:
        target = direction = model(x, sigma)
    if direction is target:
        return x, target, direction
    return x + (target - direction), target, direction


# --- single-step updates -------------------------------------------------------------------------


def euler_step(model, x, sigma, denoised, sigma_to):
    """Euler on the PF-ODE: ``x' = D + (sigma_to / sigma) (x - D)`` (= DDIM with eta = 0)."""
    return torch.lerp(denoised, x, sigma_to / sigma)


def heun_step(model, x, sigma, denoised, sigma_to):
    """Heun's method (EDM Algorithm 1); an Euler step when landing on sigma = 0."""
    if sigma_to == 0:
        return denoised
    dt = sigma_to - sigma
    x_2 = euler_step(model, x, sigma, denoised, sigma_to)
    denoised_2 = model(x_2, sigma_to)
    # x + dt/2 (d + d_2) with d = (x - D)/sigma, d_2 = (x_2 - D_2)/sigma_to
    a, b = dt / (2 * sigma), dt / (2 * sigma_to)
    return lincomb((1 + a, x), (-a, denoised), (b, x_2), (-b, denoised_2))


def dpm2_step(model, x, sigma, denoised, sigma_to):
    """DPM-Solver-2 in Karras' form: derivative at the log-midpoint sigma_mid, applied over the full
    step; an Euler step when landing on sigma = 0."""
    if sigma_to == 0:
        return denoised
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_to)))
    x_2 = euler_step(model, x, sigma, denoised, sigma_mid)
    denoised_2 = model(x_2, sigma_mid)
    c = (sigma_to - sigma) / sigma_mid
    return lincomb((1.0, x), (c, x_2), (-c, denoised_2))


def dpmpp_2s_step(model, x, sigma, denoised, sigma_to, r: float = 0.5):
    """DPM-Solver++(2S) (Lu et al. 2022, data prediction, singlestep): evaluate at
    ``lambda_s = lambda + r h`` and use D there for the full exponential-integrator step."""
    if sigma_to == 0:
        return denoised
    h = lam(sigma_to) - lam(sigma)
    sigma_s = sigma * math.exp(-r * h)
    x_2 = euler_step(model, x, sigma, denoised, sigma_s)
    denoised_2 = model(x_2, sigma_s)
    return euler_step(model, x, sigma, denoised_2, sigma_to)

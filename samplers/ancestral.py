"""Ancestral samplers: a deterministic step to sigma_down, then fresh noise of std sigma_up.

``sigma_down^2 + sigma_up^2 = sigma_next^2`` (``steps.ancestral_split``). In the sigma parameterisation,
DDIM with parameter eta is exactly this with an Euler step (its x0/eps update is the Euler step of the
PF-ODE in sigma, its noise std is sigma_up), and DDPM's ancestral step is DDIM with eta = 1
(Song et al. 2021, Sec. 4.1), so those are registered here too.
"""

from __future__ import annotations

import torch

from .registry import register
from .steps import ancestral_split, dpm2_step, dpmpp_2s_step, euler_step, evaluate, report

K_DIFFUSION = "Crowson, k-diffusion (github.com/crowsonkb/k-diffusion)"


def ancestral(update, model, x, sigmas, *, noise, callback, eta, s_noise, network_eps=False):
    """Step with ``update`` to sigma_down, then add ``s_noise * sigma_up`` of fresh noise.

    ``network_eps``: under an x0 transform (thresholding), step as DDIM's eq. 12 in x0/epsilon form with
    the transformed x0 but the network's own epsilon (diffusers' DDIM, ``use_clipped_model_output=False``).
    The step starts from ``steps.evaluate``'s point, so it is CFG++'s where the sampler declares it.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x_step, denoised, _ = evaluate(model, x, sigma, network_eps=network_eps)
        report(callback, i, x, sigma, denoised)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        x = update(model, x_step, sigma, denoised, sigma_down)
        if sigma_next > 0 and sigma_up > 0:
            x = torch.add(x, noise(sigma, sigma_next), alpha=s_noise * sigma_up)
    return x


@register("euler_ancestral", order=1, nfe_per_step=1, stochastic=True, noise="iid", reference=K_DIFFUSION,
          cfg_pp=True)
def euler_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with Euler steps."""
    return ancestral(euler_step, model, x, sigmas, noise=noise, callback=callback, eta=eta, s_noise=s_noise)


@register("ddim", order=1, nfe_per_step=1, noise="iid", cfg_pp=True,
          option_help={"eta": "DDIM's eta: 0 is deterministic DDIM, 1 is DDPM's posterior noise."},
          reference="Song et al. 2021, Denoising Diffusion Implicit Models (eq. 12)",
          description="DDIM with parameter eta (0: deterministic, 1: DDPM), in sigma form")
def ddim(model, x, sigmas, *, noise=None, callback=None, eta=0.0, s_noise=1.0):
    """DDIM with parameter eta: an Euler step to sigma_down plus noise of std eta-scaled sigma_up."""
    return ancestral(euler_step, model, x, sigmas, noise=noise, callback=callback, eta=eta, s_noise=s_noise,
                     network_eps=True)


@register("ddpm", order=1, nfe_per_step=1, stochastic=True, noise="iid",
          reference="Ho et al. 2020, Denoising Diffusion Probabilistic Models (Algorithm 2)",
          description="DDPM ancestral sampling: the posterior q(x_{t-1} | x_t, x0_hat) each step")
def ddpm(model, x, sigmas, *, noise=None, callback=None, s_noise=1.0):
    """DDPM ancestral sampling: DDIM with eta = 1."""
    return ancestral(euler_step, model, x, sigmas, noise=noise, callback=callback, eta=1.0, s_noise=s_noise)


@register("dpm_2_ancestral", order=2, nfe_per_step=2, last_step_nfe=1, stochastic=True, noise="iid",
          reference=K_DIFFUSION)
def dpm_2_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver-2 steps."""
    return ancestral(dpm2_step, model, x, sigmas, noise=noise, callback=callback, eta=eta, s_noise=s_noise)


@register("dpmpp_2s_ancestral", order=2, nfe_per_step=2, last_step_nfe=1, stochastic=True, noise="iid",
          cfg_pp=True, reference="Lu et al. 2022, DPM-Solver++ (2S), ancestral as k-diffusion")
def dpmpp_2s_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver++(2S) steps."""
    return ancestral(dpmpp_2s_step, model, x, sigmas, noise=noise, callback=callback, eta=eta,
                     s_noise=s_noise)

"""Ancestral samplers: a deterministic step to sigma_down, then fresh noise of std sigma_up.

``sigma_down^2 + sigma_up^2 = sigma_next^2`` (``steps.ancestral_split``). In the sigma parameterisation,
DDIM with parameter eta is exactly this with an Euler step (its x0/eps update is the Euler step of the
PF-ODE in sigma, its noise std is sigma_up), and DDPM's ancestral step is DDIM with eta = 1
(Song et al. 2021, Sec. 4.1), so those are registered here too.

On flow models (``x_t = (1 - t) y + t n``, run as the EDM denoiser of ``x = x_t / (1 - t)``,
``sigma = t / (1 - t)``, see ``edm.flow``) these samplers need no variant. Given the clean image y
(D = y), x = y + sigma n goes to y + sigma_down n + sigma_up n', and sigma_down^2 + sigma_up^2 =
sigma_next^2 makes that exactly y + sigma_next n'', i.e. ``x_t = (1 - t_next) y + t_next n''``: the
flow's law at t_next given y. The Euler (DDIM) step is the same map in x and in x_t (it is exact
for a constant D in either), and eta = 1 is the DDPM posterior q(x_next | x, y) of the flow's own
Gaussian path. With the true denoiser (the posterior mean of y, not y) one step from the exact
marginal keeps the mean and loses exactly (1 - sigma_down / sigma)^2 E[Var(y | x)] of variance
(per coordinate, in x units): the step's O(h^2) discretization error, not a flow-specific one.

ComfyUI switches these samplers to ``*_RF`` variants for flow models: in flow time, Euler to
``t_down = t_next (1 + (t_next / t - 1) eta)``, scale x_t by (1 - t_next) / (1 - t_down) and add noise
of std sqrt(t_next^2 - t_down^2 (1 - t_next)^2 / (1 - t_down)^2). In EDM units that is exactly our
step with sigma_down = t_down / (1 - t_down) and sigma_up = sqrt(sigma_next^2 - sigma_down^2): the
same ancestral split with another choice of sigma_down for a given eta, so it keeps the law given y
exactly too. It is our step at a per-step eta' = sigma_up / (sigma_next sqrt(1 - sigma_next^2 /
sigma^2)), not at a constant one: eta' tends to sqrt(eta) as the steps shrink (at every noise level),
so RF's eta = 1 tends to our eta = 1, the posterior, and on a 20-step Karras grid it is our eta'
between about 0.90 (the large steps at high noise) and 1 (tests/test_ancestral_flow.py).
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

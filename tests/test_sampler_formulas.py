"""Samplers without a k-diffusion twin against their papers' algorithms, written out independently:
DDIM (Song et al. 2021, eq. 12) and DDPM (Ho et al. 2020, Algorithm 2) in their own variance-preserving
variables, and NVlabs' edm_sampler (EDM Algorithm 2) including round_sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from _support import KeyedNoise, mixture, start

TOL = 1e-6


def alpha_bar(sigma):
    return 1 / (1 + sigma**2)  # x_vp = sqrt(abar) y + sqrt(1 - abar) eps  <=>  x = x_vp / sqrt(abar)


def ddim_reference(denoiser, x, sigmas, eta, noise):
    """Song et al. eq. 12 in VP variables with sigma_t(eta) of eq. 16."""
    x_vp = x * math.sqrt(alpha_bar(sigmas[0]))
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        a, a_next = alpha_bar(sigma), alpha_bar(sigma_next)
        x_ve = x_vp / math.sqrt(a)
        x0 = denoiser(x_ve, torch.full((x.shape[0],), sigma, dtype=x.dtype))
        eps = (x_vp - math.sqrt(a) * x0) / math.sqrt(1 - a)
        std = eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
        x_vp = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next - std**2, 0.0)) * eps
        if std > 0:
            x_vp = x_vp + std * noise(sigma, sigma_next)
    return x_vp / math.sqrt(alpha_bar(sigmas[-1]))


def ddpm_reference(denoiser, x, sigmas, noise):
    """Ho et al. Algorithm 2: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + s_t z,
    s_t^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t, on the schedule's (non-uniform) steps."""
    x_vp = x * math.sqrt(alpha_bar(sigmas[0]))
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        a, a_next = alpha_bar(sigma), alpha_bar(sigma_next)
        alpha_t, beta_t = a / a_next, 1 - a / a_next
        x0 = denoiser(x_vp / math.sqrt(a), torch.full((x.shape[0],), sigma, dtype=x.dtype))
        eps = (x_vp - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x_vp = (x_vp - beta_t / math.sqrt(1 - a) * eps) / math.sqrt(alpha_t)
        if sigma_next > 0:
            x_vp = x_vp + math.sqrt((1 - a_next) / (1 - a) * beta_t) * noise(sigma, sigma_next)
    return x_vp / math.sqrt(alpha_bar(sigmas[-1]))


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_ddim_equals_song_et_al(eta):
    denoiser = mixture()
    sigmas = samplers.schedules.get("karras")(10, 0.01, 20.0)
    x = start(sigma_max=20.0)
    noise = KeyedNoise(x)
    expected = ddim_reference(denoiser, x, sigmas.tolist(), eta, noise)
    ours = samplers.sample(denoiser, x, sigmas, "ddim", noise=noise, eta=eta)
    assert (ours - expected).abs().max() <= TOL


def test_ddpm_equals_ho_et_al():
    denoiser = mixture()
    sigmas = samplers.schedules.get("exponential")(12, 0.01, 20.0)
    x = start(sigma_max=20.0)
    noise = KeyedNoise(x)
    expected = ddpm_reference(denoiser, x, sigmas.tolist(), noise)
    ours = samplers.sample(denoiser, x, sigmas, "ddpm", noise=noise)
    assert (ours - expected).abs().max() <= TOL


class Rounded:
    """A denoiser restricted to a discrete table of noise levels, as NVlabs' iDDPM/VP networks."""

    def __init__(self, denoiser, table):
        self.denoiser, self.table = denoiser, torch.as_tensor(table, dtype=torch.float64)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.table[(sigma.reshape(-1, 1) - self.table).abs().argmin(1)].reshape(sigma.shape)

    def __call__(self, x, sigma):
        assert torch.isin(sigma.double(), self.table).all(), "denoiser called off its table"
        return self.denoiser(x, sigma)


def nvlabs_edm_sampler(net, latents, t_steps, noise, S_churn, S_min, S_max, S_noise):
    """EDM Algorithm 2 as in NVlabs' generate.py, with randn_like replaced by the keyed noise."""
    num_steps = len(t_steps) - 1
    x_next = latents * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = float(net.round_sigma(torch.tensor(t_cur + gamma * t_cur)))
        x_hat = x_cur
        if t_hat > t_cur:
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise(t_hat, t_cur)
        batch = torch.ones(x_hat.shape[0], dtype=x_hat.dtype)
        denoised = net(x_hat, t_hat * batch)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net(x_next, t_next * batch)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@pytest.mark.parametrize("churn", [
    {"S_churn": 0.0, "S_min": 0.0, "S_max": math.inf, "S_noise": 1.0},
    {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.007},
])
def test_edm_equals_nvlabs_edm_sampler_with_round_sigma(churn):
    table = samplers.schedules.get("iddpm")(1000, 0.002, 81.0)[:-1].flip(0)  # ascending, NVlabs' u
    net = Rounded(mixture(), table)
    t_steps = samplers.schedules.get("iddpm")(16, 0.002, 81.0)
    latents = start(sigma_max=1.0)
    noise = KeyedNoise(latents)
    expected = nvlabs_edm_sampler(net, latents, t_steps.tolist(), noise, **churn)
    ours = samplers.sample(net, latents * t_steps[0], t_steps, "edm", noise=noise,
                           s_churn=churn["S_churn"], s_tmin=churn["S_min"], s_tmax=churn["S_max"],
                           s_noise=churn["S_noise"])
    assert (ours - expected).abs().max() <= TOL

"""Restart sampling: its deterministic skeleton (Heun plus the re-solves), exact NFE count, interval
checks and marginals."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import Counting, mixture, start
from edm.gaussian_mixture import GaussianMixture
from samplers.restart import restart_nfe

KARRAS = samplers.schedules.get("karras")


# --- UniPC parity with diffusers -----------------------------------------------------------------


def test_restart_without_noise_is_heun_plus_the_re_solves():
    """s_noise = 0: Heun to the anchor (the schedule point nearest t_min), K re-solves from t_max back
    to it with n Heun steps on a Karras sub-schedule, then Heun to the end."""
    denoiser, x = mixture(), start(batch=2, sigma_max=20.0)
    sigmas = KARRAS(12, 0.01, 20.0)
    t_min, t_max, k, n = 0.1, 0.5, 3, 4
    ours = samplers.sample(denoiser, x.clone(), sigmas, "restart", restart_list=((t_min, t_max, k, n),),
                           s_noise=0.0)
    levels = sigmas.tolist()
    j = min(range(1, len(levels) - 1), key=lambda j: abs(levels[j] - t_min))
    expected = samplers.sample(denoiser, x.clone(), sigmas[: j + 1], "heun")
    sub = KARRAS(n + 1, levels[j], t_max)[:-1]  # n steps: n + 1 levels
    for _ in range(k):
        expected = samplers.sample(denoiser, expected, sub, "heun")
    expected = samplers.sample(denoiser, expected, sigmas[j:], "heun")
    assert torch.allclose(ours, expected, rtol=0, atol=1e-10)
    # and the re-solves change the result (it is not plain Heun)
    plain = samplers.sample(denoiser, x.clone(), sigmas, "heun")
    assert (ours - plain).abs().max() > 1e-8


@pytest.mark.parametrize("steps", [1, 2, 5, 9, 18])
@pytest.mark.parametrize("restart_list", [None, "0.06,0.30,2,3", "0.05,0.3,1,2;1.0,2.0,2,2",
                                          ((50.0, 60.0, 2, 2),)])
def test_restart_nfe_counts_real_calls(steps, restart_list):
    options = {} if restart_list is None else {"restart_list": restart_list}
    model = Counting(mixture())
    sigmas = KARRAS(steps, 0.01, 20.0)
    samplers.sample(model, start(batch=1, sigma_max=20.0), sigmas, "restart", seeds=[0], **options)
    assert model.calls == restart_nfe(sigmas.tolist(), **options)
    if steps >= 2 and restart_list is None:
        assert model.calls == 2 * steps - 1 + 2 * 3 * 2  # the default interval always finds its anchor


def test_restart_rejects_bad_intervals():
    x = start(batch=1, sigma_max=20.0)
    for bad in ("0.3,0.06,2,3", "0.06,0.3,2", ((0.06, 0.3, 2, 0),)):
        with pytest.raises(ValueError, match="restart interval"):
            samplers.sample(mixture(), x, KARRAS(4, 0.01, 20.0), "restart", restart_list=bad)


def test_restart_samples_have_the_gaussian_marginals():
    """One Gaussian component: started from its exact marginal at sigma_max, the exact ODE and every
    restart (noise jump then ODE back) keep it, so samples at 0 have the data's mean and variance."""
    gaussian = GaussianMixture.random((2, 4, 4), k=1, seed=3, std_range=(0.3, 0.5), diagonal=True,
                                     dtype=torch.float64)
    mean, var = gaussian.mean, gaussian.variance
    batch, sigma_max = 1000, 20.0
    z = torch.randn((batch, 2, 4, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = mean + (var + sigma_max**2).sqrt() * z
    sigmas = KARRAS(96, 0.01, sigma_max)  # Heun's scale error at 24 steps (~1.4%) exceeds MC error
    out = samplers.sample(gaussian, x, sigmas, "restart", seeds=range(batch),
                          restart_list="0.06,0.30,2,12;0.5,2.0,2,12")  # fine re-solves: small bias
    standardized = (out - mean) / var.sqrt()
    count = standardized.numel()
    assert abs(standardized.mean().item()) < 4 / math.sqrt(count)
    assert abs(standardized.var().item() - 1) < 4 * math.sqrt(2 / count)
    # per pixel too (looser: fewer samples each)
    assert (standardized.mean(0).abs() < 4 / math.sqrt(batch)).all()
    assert ((standardized.var(0) - 1).abs() < 4 * math.sqrt(2 / batch)).all()

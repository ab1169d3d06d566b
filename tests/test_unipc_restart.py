"""UniPC against diffusers' UniPCMultistepScheduler (its convergence orders are in
tests/test_convergence.py); Restart sampling's deterministic skeleton, exact NFE count and marginals."""

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


def diffusers_loop(order, variant, final, steps=10):
    """diffusers' own loop on the exact mixture converted to an eps model in VP variables, in float64.

    Returns (diffusers' result, the schedule, the start noise, the scheduler after the loop)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, solver_order=order,
                                              solver_type=variant, predict_x0=True,
                                              lower_order_final=True, final_sigmas_type=final)
    sched.set_timesteps(steps)
    sched.sigmas = sched.sigmas.double()  # diffusers builds them in float32; run its loop in float64
    sigmas = sched.sigmas.tolist()
    denoiser = mixture()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_vp = noise.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = sigmas[i]
        x = x_vp * math.sqrt(1 + sigma**2)  # VP -> VE
        eps = (x - denoiser(x, sigma)) / sigma
        x_vp = sched.step(eps, t, x_vp).prev_sample
    return x_vp, sigmas, noise, sched


def ours(sigmas, noise, order, variant, callback=None):
    x = noise * math.sqrt(1 + sigmas[0] ** 2)
    out = samplers.sample(mixture(), x, torch.tensor(sigmas, dtype=torch.float64), "unipc",
                          order=order, variant=variant, callback=callback)
    return out / math.sqrt(1 + sigmas[-1] ** 2)  # VE -> VP (a no-op at sigma = 0)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_unipc_matches_diffusers_loop(order, variant, final):
    reference, sigmas, noise, sched = diffusers_loop(order, variant, final)
    seen = []
    result = ours(sigmas, noise, order, variant, callback=seen.append)
    if variant == "bh1" and final == "zero":
        # diffusers' bh1 step onto sigma = 0 is NaN: B(h) = -h = -inf multiplies its zero residual
        # (inf * 0). Everything before it is finite: its corrected last sample and its x0 prediction,
        # which is what every formula tends to as h -> inf (and what bh2 returns), match ours.
        assert torch.isnan(reference).all()
        last = seen[-1]
        x_vp = last["x"] / math.sqrt(1 + last["sigma"] ** 2)
        assert (x_vp - sched.last_sample).abs().max().item() <= 1e-4
        assert (result - sched.model_outputs[-1]).abs().max().item() <= 1e-4
        return
    assert sigmas[-1] == 0 if final == "zero" else sigmas[-1] > 0
    assert (result - reference).abs().max().item() <= 1e-4


def test_unipc_nfe_is_steps_and_options_are_checked():
    spec = samplers.get("unipc")
    assert (spec.nfe(7), spec.order, spec.stochastic) == (7, 2, False)
    x = start(batch=1, sigma_max=20.0)
    for bad in ({"order": 4}, {"variant": "bh3"}):
        with pytest.raises(ValueError):
            samplers.sample(mixture(), x, KARRAS(4, 0.01, 20.0), "unipc", **bad)


# --- UniPC convergence order ---------------------------------------------------------------------


# --- Restart -------------------------------------------------------------------------------------


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

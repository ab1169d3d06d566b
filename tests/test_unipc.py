"""UniPC against diffusers' UniPCMultistepScheduler (its convergence orders are in
tests/test_convergence.py), its NFE and option checks."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import mixture, start

KARRAS = samplers.schedules.get("karras")


# --- UniPC parity with diffusers -----------------------------------------------------------------


def diffusers_loop(order, variant, final, steps=10):
    """diffusers' own loop on the exact mixture converted to an eps model in VP variables, in float64.

    Returns (diffusers' result, the schedule, the start noise, the scheduler after the loop)."""
    import diffusers
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

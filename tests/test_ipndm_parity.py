"""ipndm against diffusers' IPNDMScheduler.

diffusers' IPNDMScheduler (v-diffusion conventions) runs the variance-preserving sample
x_vp = alpha y + beta n, alpha^2 + beta^2 = 1, on the tables beta_i = sin^2(pi/2 (1 - i/N)),
alpha_i = sqrt(1 - beta_i^2), i = 0..N, calling the model at t_i = atan2(beta_i, alpha_i) 2/pi. A step
forms ets_i = beta_i x_vp + alpha_i out, which is eps when ``out`` is the v-prediction
v = alpha eps - beta y; combines the ets with the constant AB weights into e; and takes a DDIM step:
pred = (x_vp - beta_i e) / alpha_i, x_vp' = alpha_{i+1} pred + beta_{i+1} e.

With sigma = beta / alpha and x = x_vp / alpha (EDM) that DDIM step is x' = x + (sigma' - sigma) e, and
eps = (x - D) / sigma is our d: the scheduler is ``ipndm`` on sigma_i = beta_i / alpha_i, final AB step
onto sigma_N = 0 included. Except its first step: alpha_0 = 0 (sigma_0 = inf), where ets_0 = x_vp is
the right limit of eps but pred = 0 / max(alpha_0, 1e-8) = 0 whatever the model says, so x_vp_1 =
beta_1 x_vp: an Euler step from infinity with D = 0 instead of D(x; inf) = the data mean.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import Counting, default_dtype, mixture, start

# --- diffusers' IPNDMScheduler -------------------------------------------------------------------


def ipndm_scheduler(steps: int):
    import diffusers
    # Its tables take torch's default dtype; in float32 alpha^2 + beta^2 - 1 is ~1e-7 and the
    # v <-> eps conversion is off by as much, so build them in float64.
    with default_dtype(torch.float64):
        scheduler = diffusers.IPNDMScheduler()
        scheduler.set_timesteps(steps)
    assert scheduler.alphas.dtype == torch.float64
    return scheduler


def edm_sigmas(scheduler) -> list[float]:
    """sigma_i = beta_i / alpha_i for i = 1..N (sigma_0 = inf is not a schedule of ours)."""
    return [b / a for a, b in zip(scheduler.alphas.tolist()[1:], scheduler.betas.tolist()[1:])]


def v_model(denoiser):
    """The v-prediction network diffusers expects, built from our denoiser D(x; sigma).

    sigma = tan(pi t / 2) inverts the timestep map; v = alpha eps - beta D with
    eps = (x_vp / alpha - D) / sigma simplifies to (alpha x_vp - D) / beta."""
    def model(x_vp, t):
        sigma = math.tan(math.pi / 2 * float(t))
        alpha = 1 / math.sqrt(1 + sigma**2)
        beta = sigma * alpha
        denoised = denoiser(x_vp / alpha, torch.full((x_vp.shape[0],), sigma, dtype=x_vp.dtype))
        return (alpha * x_vp - denoised) / beta
    return model


def run_diffusers(scheduler, model, x_vp, begin: int = 0):
    """Step the scheduler from table index ``begin``; returns the EDM x before each step and the end."""
    if begin:
        scheduler.set_begin_index(begin)
    alphas = scheduler.alphas.tolist()
    xs = []
    for i, t in enumerate(scheduler.timesteps[begin:], start=begin):
        xs.append(x_vp / alphas[i] if alphas[i] else None)
        x_vp = scheduler.step(model(x_vp, t), t, x_vp).prev_sample
    return xs, x_vp  # alpha_N = 1: the last sample is already EDM


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_ipndm_matches_diffusers_step_by_step(steps):
    """From table index 1 (sigma finite) on, every step agrees: the warm start (1, 2, 3 derivatives),
    the constant AB weights on eps = d, and the AB step onto sigma = 0."""
    scheduler, denoiser = ipndm_scheduler(steps), mixture()
    sigmas = edm_sigmas(scheduler)
    assert sigmas[-1] == 0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    x = start(batch=2, sigma_max=sigmas[0])

    seen = []
    ours = samplers.sample(denoiser, x.clone(), sigmas, "ipndm", callback=lambda s: seen.append(s["x"]))
    xs, theirs = run_diffusers(scheduler, v_model(denoiser), x * scheduler.alphas[1].item(), begin=1)

    # measured <= 4e-15 relative (float64 on both sides)
    tol = 1e-10 * x.abs().max().item()
    assert len(seen) == len(xs) == steps - 1
    for i, (a, b) in enumerate(zip(seen, xs)):
        torch.testing.assert_close(a, b, rtol=0, atol=tol, msg=f"step {i}")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * theirs.abs().max().item())


def test_diffusers_first_step_ignores_the_model():
    """At t = 1 alpha_0 = 0: the model output is multiplied by 0 and the x0 estimate is 0, so the
    first step is x_vp -> beta_1 x_vp exactly, for the true v-prediction and for garbage alike."""
    denoiser = mixture()
    noise = start(batch=2, sigma_max=1.0)
    for out in (v_model(denoiser)(noise, torch.tensor(1.0)), torch.randn_like(noise) * 100):
        scheduler = ipndm_scheduler(10)
        assert scheduler.alphas[0] == 0 and scheduler.betas[0] == 1
        first = scheduler.step(out, scheduler.timesteps[0], noise).prev_sample
        assert torch.equal(first, noise * scheduler.betas[1].item())


def test_full_diffusers_run_is_ipndm_with_zero_denoiser_at_infinity():
    """The whole run from t = 1 is ipndm started at any sigma_0 = S with D(x; S) := 0 (then
    d_0 = x / S = n and x_1 = sigma_1 n, as diffusers) and the true denoiser afterwards. The exact
    limit S -> inf, D(x; S) -> data mean, lands measurably elsewhere: the difference is real."""
    scheduler, denoiser = ipndm_scheduler(10), mixture()
    noise = start(batch=2, sigma_max=1.0)
    _, theirs = run_diffusers(scheduler, v_model(denoiser), noise.clone())

    big = 1024.0  # a power of 2: x = S n and x / S = n are exact

    def zero_at_big(x, sigma):
        return torch.zeros_like(x) if float(sigma[0]) == big else denoiser(x, sigma)

    sigmas = edm_sigmas(scheduler)
    ours = samplers.sample(zero_at_big, noise * big, [big, *sigmas], "ipndm")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * theirs.abs().max().item())

    limit = samplers.sample(denoiser, noise * 1e8, [1e8, *sigmas], "ipndm")
    assert (limit - theirs).abs().max().item() > 1e-3


@pytest.mark.parametrize("sigma_max", [80.0, 1e4])
def test_full_diffusers_run_is_ipndm_afs(sigma_max):
    """ipndm_afs makes that model-blind first step itself: started at any sigma_max from sigma_max * n,
    it spends no call there (d_0 = x / sigma_max = n, x_1 = sigma_1 n) and then equals the whole
    diffusers run from t = 1, with one call fewer than ipndm on the same schedule."""
    scheduler, denoiser = ipndm_scheduler(10), mixture()
    noise = start(batch=2, sigma_max=1.0)
    _, theirs = run_diffusers(scheduler, v_model(denoiser), noise.clone())
    sigmas = [sigma_max, *edm_sigmas(scheduler)]
    model = Counting(denoiser)
    ours = samplers.sample(model, noise * sigma_max, sigmas, "ipndm_afs")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * theirs.abs().max().item())
    assert model.calls == len(sigmas) - 2 == samplers.get("ipndm_afs").nfe(len(sigmas) - 1)
    # the option on plain ipndm is the same sampler
    again = samplers.sample(denoiser, noise * sigma_max, sigmas, "ipndm", afs=True)
    assert torch.equal(again, ours)

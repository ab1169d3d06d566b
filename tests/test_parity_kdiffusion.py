"""Every sampler we share with k-diffusion gives k-diffusion's output on the same denoiser, sigmas and
noise (float64, max abs difference <= 1e-6), on two schedules, with churn on and off where offered."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

import samplers
from _support import KeyedNoise, default_dtype, mixture, patched_randn_like, start

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import k_diffusion.sampling as K

TOL = 1e-6
STEPS = 12
SCHEDULES = {
    "karras": lambda: samplers.schedules.get("karras")(STEPS, 0.002, 80.0),
    "exponential": lambda: samplers.schedules.get("exponential")(STEPS, 0.01, 40.0),
}

# ours, our options, k-diffusion function, its extra kwargs
NOISE_SAMPLER_CASES = [
    ("euler_ancestral", {}, K.sample_euler_ancestral, {}),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, K.sample_euler_ancestral, {"eta": 0.5, "s_noise": 0.9}),
    ("ddim", {"eta": 0.3}, K.sample_euler_ancestral, {"eta": 0.3}),
    ("ddpm", {}, K.sample_euler_ancestral, {"eta": 1.0}),
    ("dpm_2_ancestral", {}, K.sample_dpm_2_ancestral, {}),
    ("dpm_2_ancestral", {"eta": 0.7}, K.sample_dpm_2_ancestral, {"eta": 0.7}),
    ("dpmpp_2s_ancestral", {}, K.sample_dpmpp_2s_ancestral, {}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, K.sample_dpmpp_2s_ancestral, {"eta": 0.0}),
    ("dpmpp_sde", {}, K.sample_dpmpp_sde, {}),
    ("dpmpp_sde", {"eta": 0.5, "r": 0.3}, K.sample_dpmpp_sde, {"eta": 0.5, "r": 0.3}),
    ("dpmpp_2m_sde", {}, K.sample_dpmpp_2m_sde, {}),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.6}, K.sample_dpmpp_2m_sde,
     {"solver_type": "heun", "eta": 0.6}),
    ("dpmpp_2m_sde", {"eta": 0.0}, K.sample_dpmpp_2m_sde, {"eta": 0.0}),
    ("dpmpp_3m_sde", {}, K.sample_dpmpp_3m_sde, {}),
    ("dpmpp_3m_sde", {"eta": 0.0}, K.sample_dpmpp_3m_sde, {"eta": 0.0}),
]
DETERMINISTIC_CASES = [
    ("dpmpp_2m", {}, K.sample_dpmpp_2m, {}),
    ("lms", {}, K.sample_lms, {}),
    ("lms", {"order": 2}, K.sample_lms, {"order": 2}),
]
CHURN = {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003}
CHURN_CASES = [
    (name, kfn, churn)
    for name, kfn in [("euler", K.sample_euler), ("heun", K.sample_heun), ("dpm_2", K.sample_dpm_2),
                      ("edm", K.sample_heun)]
    for churn in [{}, CHURN, {"s_churn": 1.0}]
]


def _case_id(case):
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


def assert_close(ours, theirs):
    assert torch.isfinite(theirs).all()
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} > {TOL}"


@pytest.fixture(scope="module")
def denoiser():
    return mixture(torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", NOISE_SAMPLER_CASES + DETERMINISTIC_CASES, ids=_case_id)
def test_matches_k_diffusion(denoiser, schedule, case):
    name, options, kfn, kwargs = case
    sigmas = SCHEDULES[schedule]()
    x = start(sigma_max=float(sigmas[0]))
    noise = KeyedNoise(x)
    extra = {"noise_sampler": noise} if "noise_sampler" in inspect.signature(kfn).parameters else {}
    theirs = kfn(denoiser, x.clone(), sigmas, disable=True, **extra, **kwargs)
    ours = samplers.sample(denoiser, x.clone(), sigmas, name, noise=noise, **options)
    assert_close(ours, theirs)


def _churn_noise_queue(noise, sigmas, churn):
    """The noise k-diffusion's churn samplers draw (one per step, used or not), keyed as ours are."""
    steps = len(sigmas) - 1
    queue = []
    for sigma in sigmas[:-1].tolist():
        inside = churn.get("s_tmin", 0.0) <= sigma <= churn.get("s_tmax", math.inf)
        gamma = min(churn.get("s_churn", 0.0) / steps, math.sqrt(2) - 1) if inside else 0.0
        queue.append(noise(sigma * (1 + gamma), sigma))
    return queue


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CHURN_CASES, ids=lambda c: c[0] + ("-churn" + str(c[2]) if c[2] else ""))
def test_churn_samplers_match_k_diffusion(denoiser, schedule, case):
    name, kfn, churn = case
    sigmas = SCHEDULES[schedule]()
    x = start(sigma_max=float(sigmas[0]))
    noise = KeyedNoise(x)
    kwargs = dict(churn)
    with patched_randn_like(_churn_noise_queue(noise, sigmas, churn)):
        theirs = kfn(denoiser, x.clone(), sigmas, disable=True, **kwargs)
    ours = samplers.sample(denoiser, x.clone(), sigmas, name, noise=noise, **churn)
    assert_close(ours, theirs)


@pytest.mark.parametrize("nfe", [10, 12, 14])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_dpm_fast_matches_k_diffusion(denoiser, nfe, eta):
    sigmas = samplers.schedules.get("karras")(nfe, 0.01, 50.0)
    x = start(sigma_max=50.0)
    noise = KeyedNoise(x)
    with default_dtype(torch.float64):
        theirs = K.sample_dpm_fast(denoiser, x.clone(), 0.01, 50.0, nfe, disable=True, eta=eta,
                                   noise_sampler=noise)
    ours = samplers.sample(denoiser, x.clone(), sigmas, "dpm_fast", noise=noise, eta=eta)
    assert_close(ours, theirs)


@pytest.mark.parametrize("options", [{}, {"order": 2}, {"rtol": 0.01, "atol": 0.001}, {"eta": 0.5}])
def test_dpm_adaptive_matches_k_diffusion(denoiser, options):
    sigmas = samplers.schedules.get("karras")(10, 0.01, 50.0)
    x = start(sigma_max=50.0)
    noise = KeyedNoise(x)
    with default_dtype(torch.float64):
        theirs = K.sample_dpm_adaptive(denoiser, x.clone(), 0.01, 50.0, disable=True,
                                       noise_sampler=noise, **options)
    ours = samplers.sample(denoiser, x.clone(), sigmas, "dpm_adaptive", noise=noise, **options)
    assert_close(ours, theirs)


def test_seeds_none_matches_k_diffusion_default_noise(denoiser):
    """Without seeds, i.i.d. noise comes from torch's global generator exactly as k-diffusion's."""
    sigmas = SCHEDULES["karras"]()
    x = start(sigma_max=80.0)
    torch.manual_seed(7)
    theirs = K.sample_euler_ancestral(denoiser, x.clone(), sigmas, disable=True)
    torch.manual_seed(7)
    ours = samplers.sample(denoiser, x.clone(), sigmas, "euler_ancestral")
    assert_close(ours, theirs)


def test_our_seeded_noise_plugs_into_k_diffusion(denoiser):
    """Our per-seed Brownian noise source is a valid k-diffusion noise_sampler, and vice versa."""
    sigmas = SCHEDULES["exponential"]()
    x = start(sigma_max=float(sigmas[0]))
    make = lambda: samplers.noise.BrownianNoise(  # noqa: E731
        samplers.noise.SeededNormal([3, 5, 7], x.shape[1:], dtype=x.dtype).draw)
    theirs = K.sample_dpmpp_sde(denoiser, x.clone(), sigmas, disable=True, noise_sampler=make())
    ours = samplers.sample(denoiser, x.clone(), sigmas, "dpmpp_sde", seeds=[3, 5, 7])
    assert_close(ours, theirs)

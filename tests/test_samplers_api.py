"""The sampler registry's metadata is true, and bad input fails with a clear ValueError."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import Counting, KeyedNoise, mixture, start

KARRAS = samplers.schedules.get("karras")


def test_registry_sizes_and_names():
    names = samplers.list()
    assert len(names) >= 16 and names == sorted(names)
    k_diffusion_set = {"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                       "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
                       "dpm_fast", "dpm_adaptive", "edm", "ddim", "ddpm"}
    assert k_diffusion_set <= set(names)
    assert len(samplers.schedules.list()) >= 11


@pytest.mark.parametrize("name", [n for n in samplers.list() if not samplers.get(n).adaptive])
@pytest.mark.parametrize("steps", [1, 2, 5, 9])
def test_nfe_metadata_counts_real_denoiser_calls(name, steps):
    model = Counting(mixture())
    sigmas = KARRAS(steps, 0.01, 20.0)
    samplers.sample(model, start(batch=1, sigma_max=20.0), sigmas, name, seeds=[0])
    spec = samplers.get(name)
    assert model.calls == samplers.registry.nfe_on(name, sigmas)
    # The per-step booking is exact for every N but where count_nfe is the exact count: there from 2
    # steps on (heunpp2's lone step is an Euler step, 1 NFE, where 3 (N - 1) books 0).
    if spec.count_nfe is None or steps > 1:
        assert model.calls == spec.nfe(steps)


@pytest.mark.parametrize("name", [n for n in samplers.list() if not samplers.get(n).adaptive])
def test_steps_for_nfe_is_the_most_steps_within_budget(name):
    spec = samplers.get(name)
    for budget in range(max(1, spec.step_costs()[1]), 40):  # ipndm_afs: one step costs 0
        steps = samplers.steps_for_nfe(name, budget)
        assert spec.nfe(steps) <= budget < spec.nfe(steps + 1)


def test_adaptive_sampler_has_no_fixed_nfe():
    spec = samplers.get("dpm_adaptive")
    assert spec.adaptive
    with pytest.raises(ValueError, match="adaptive"):
        spec.nfe(10)
    with pytest.raises(ValueError, match="adaptive"):
        samplers.steps_for_nfe("dpm_adaptive", 20)


def test_spec_fields():
    heun = samplers.get("heun")
    assert (heun.name, heun.order, heun.stochastic, heun.nfe(18)) == ("heun", 2, False, 35)
    assert samplers.get("dpmpp_sde").stochastic and samplers.get("dpmpp_sde").noise == "brownian"
    assert samplers.get("euler_ancestral").noise == "iid"
    for name in samplers.list():
        spec = samplers.get(name)
        assert spec.reference and spec.description and spec.order >= 1


def test_callback_sees_every_step():
    seen = []
    sigmas = KARRAS(5, 0.01, 20.0)
    samplers.sample(mixture(), start(sigma_max=20.0), sigmas, "heun", callback=seen.append)
    assert [s["i"] for s in seen] == list(range(5))
    assert [s["sigma"] for s in seen] == pytest.approx(sigmas[:-1].tolist())
    assert all(s["denoised"].shape == (3, 3, 8, 8) for s in seen)


def test_cond_is_passed_to_the_denoiser():
    got = []

    def denoiser(x, sigma, label=None):
        got.append(label)
        return x * 0

    samplers.sample(denoiser, torch.ones(2, 4), KARRAS(2, 0.1, 1.0), "euler", cond={"label": 7})
    assert got == [7, 7]


def test_float32_runs_and_agrees_with_float64():
    sigmas = KARRAS(10, 0.01, 20.0)
    x = start(sigma_max=20.0)
    out64 = samplers.sample(mixture(torch.float64), x, sigmas, "dpmpp_2m")
    out32 = samplers.sample(mixture(torch.float32), x.float(), sigmas, "dpmpp_2m")
    assert out32.dtype == torch.float32
    assert (out32.double() - out64).abs().max() < 1e-4


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*euler"):
        samplers.get("nope")
    with pytest.raises(ValueError, match="valid samplers"):
        samplers.sample(mixture(), start(), KARRAS(3, 0.1, 10.0), "nope")
    with pytest.raises(ValueError, match="valid schedules"):
        samplers.schedules.get("nope")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="no option eta.*s_churn"):
        samplers.sample(mixture(), start(), KARRAS(3, 0.1, 10.0), "heun", eta=1.0)


@pytest.mark.parametrize("option", [{"eta": -1.0}, {"s_noise": math.nan}, {"s_churn": -2}])
def test_negative_or_nan_options_are_rejected(option):
    name = "heun" if "s_churn" in option else "euler_ancestral"
    with pytest.raises(ValueError, match="non-negative"):
        samplers.sample(mixture(), start(), KARRAS(3, 0.1, 10.0), name, **option)


@pytest.mark.parametrize("sigmas", [
    [10.0, math.nan, 0.0], [10.0, -1.0, 0.0], [1.0, 2.0, 0.0], [5.0, 5.0, 0.0], [[10.0, 0.0]], [10.0],
    [10.0, math.inf, 0.0],
], ids=["nan", "negative", "increasing", "repeated", "2-d", "one-value", "inf"])
def test_bad_sigmas_are_rejected(sigmas):
    with pytest.raises(ValueError):
        samplers.sample(mixture(), start(), torch.tensor(sigmas, dtype=torch.float64), "euler")


def test_bad_x_is_rejected():
    with pytest.raises(ValueError, match="floating-point tensor"):
        samplers.sample(mixture(), [1.0, 2.0], KARRAS(3, 0.1, 10.0), "euler")
    with pytest.raises(ValueError, match="floating-point tensor"):
        samplers.sample(mixture(), torch.zeros(2, 3, dtype=torch.int64), KARRAS(3, 0.1, 10.0), "euler")


@pytest.mark.parametrize("budget", [0, -3, 2.5, True])
def test_bad_nfe_budget(budget):
    with pytest.raises(ValueError, match="NFE budget"):
        samplers.steps_for_nfe("heun", budget)


@pytest.mark.parametrize("args", [(0, 0.1, 10.0), (5, 10.0, 0.1), (5, 1.0, 1.0), (5, -1.0, 10.0),
                                  (5, math.nan, 10.0)])
def test_bad_schedule_arguments(args):
    with pytest.raises(ValueError):
        KARRAS(*args)


def test_noise_override_is_used():
    sigmas = KARRAS(4, 0.1, 10.0)
    x = start(sigma_max=10.0)
    a = samplers.sample(mixture(), x, sigmas, "euler_ancestral", noise=KeyedNoise(x, "a"))
    b = samplers.sample(mixture(), x, sigmas, "euler_ancestral", noise=KeyedNoise(x, "a"))
    c = samplers.sample(mixture(), x, sigmas, "euler_ancestral", noise=KeyedNoise(x, "c"))
    assert torch.equal(a, b) and not torch.equal(a, c)

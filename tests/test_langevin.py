"""Langevin dynamics: the corrector's step written out, its stationary variance on a Gaussian, its exact
NFE under every predictor, batch invariance; annealed Langevin's NFE, target variance and options."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import samplers
from _support import Counting
from samplers import registry
from samplers.langevin import LangevinCorrector

pytestmark = pytest.mark.usefixtures("one_thread")

KARRAS = samplers.schedules.get("karras")
SHAPE = (2, 3, 3)




def gaussian(s: float):
    """The exact denoiser of data N(0, s^2) per element: D(x; sigma) = x s^2 / (s^2 + sigma^2)."""

    def denoiser(x, sigma, **cond):
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        if sigma.ndim:
            sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * s**2 / (s**2 + sigma**2)

    return denoiser


def toy(x, sigma, **cond):
    """A smooth nonlinear elementwise denoiser (bitwise batch-invariant)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x / (1 + sigma**2)) * 0.8 + 0.1


def _model(denoiser):
    """A denoiser as samplers call it: model(x, sigma: float)."""
    return samplers.api.Model(denoiser)


# --- the corrector step ----------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [0.16, 0.05, 0.4])
def test_corrector_step_written_out(snr):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *SHAPE, generator=g, dtype=torch.float64) * 2
    zs = [torch.randn(4, *SHAPE, generator=g, dtype=torch.float64) for _ in range(3)]
    sigma = 0.7
    queue = list(zs)
    out = LangevinCorrector(steps=3, snr=snr)(_model(toy), x, sigma, lambda: queue.pop(0))
    assert queue == []  # one draw per step
    expected = x
    for z in zs:
        for i in range(4):  # per sample, with plain Python norms
            grad = (toy(expected[i:i + 1], sigma) - expected[i:i + 1]) / sigma**2
            g_norm = math.sqrt(float((grad**2).sum()))
            z_norm = math.sqrt(float((z[i] ** 2).sum()))
            e = 2 * (snr * z_norm / g_norm) ** 2
            step = expected[i:i + 1] + e * grad + math.sqrt(2 * e) * z[i:i + 1]
            expected = torch.cat([expected[:i], step, expected[i + 1:]])
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


def test_corrector_options():
    for bad in ({"steps": 0}, {"steps": 1.5}, {"steps": True}, {"snr": 0.0}, {"snr": -1.0},
                {"snr": math.nan}, {"snr": "x"}):
        with pytest.raises(ValueError):
            LangevinCorrector(**bad)
    with pytest.raises(ValueError, match="LangevinCorrector"):
        samplers.sample(toy, torch.ones(1, 2, dtype=torch.float64), [2.0, 1.0, 0.0], "euler", langevin=3)


@pytest.mark.slow
def test_corrector_reaches_the_noisy_marginal_of_a_gaussian():
    """At fixed sigma the corrector samples p(x; sigma) = N(0, s^2 + sigma^2): started far from it (variance
    4 v), the variance converges to v. (Per-sample norms: each sample is a row of many i.i.d. elements, so
    ||z|| / ||g|| and the step size e ~ 2 snr^2 v concentrate; the discretisation bias, v / (1 - snr^2)
    for the unadjusted chain, is 1% at snr 0.1.)"""
    s, sigma, snr = 0.5, 1.0, 0.1
    v = s**2 + sigma**2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 512, generator=g, dtype=torch.float64) * 2 * math.sqrt(v)
    model = _model(gaussian(s))

    def draw():
        return torch.randn(x.shape, generator=g, dtype=torch.float64)

    x = LangevinCorrector(steps=300, snr=snr)(model, x, sigma, draw)
    var = float(x.var())
    assert abs(float(x.mean())) < 0.02
    assert var == pytest.approx(v, rel=0.03)
    assert var == pytest.approx(v / (1 - snr**2), rel=0.025)
    # started at the target, it stays there
    x = torch.randn(128, 512, generator=g, dtype=torch.float64) * math.sqrt(v)
    x = LangevinCorrector(steps=50, snr=snr)(model, x, sigma, draw)
    assert float(x.var()) == pytest.approx(v, rel=0.03)


# --- the corrector in samplers.sample ------------------------------------------------------------

PREDICTORS = ["heun", "euler", "dpmpp_2m", "euler_ancestral", "dpmpp_sde", "dpm_2"]


@pytest.mark.parametrize("sampler", PREDICTORS)
@pytest.mark.parametrize("m", [1, 3])
def test_corrector_nfe_is_counted(sampler, m):
    sigmas = KARRAS(6, 0.02, 20.0)
    model = Counting(toy)
    x = samplers.noise.latents([0, 1], SHAPE, dtype=torch.float64) * 20.0
    samplers.sample(model, x, sigmas, sampler, seeds=[0, 1], langevin=LangevinCorrector(steps=m))
    expected = registry.nfe_on(sampler, sigmas, corrector_steps=m)
    assert model.calls == expected
    per_step, last = samplers.get(sampler).step_costs()
    assert expected == 5 * per_step + last + 6 * m


@pytest.mark.parametrize("between", [{"langevin": LangevinCorrector()}, {"resample": (2, 2)}])
def test_restart_plans_over_the_whole_schedule_and_is_not_cut_into_parts(between):
    """Restart's intervals are placed on the whole schedule: run step by step, every step in an interval
    would restart, which is no longer the algorithm. Refused, with one line."""
    x = samplers.noise.latents([0], SHAPE, dtype=torch.float64) * 20.0
    with pytest.raises(ValueError, match="whole schedule"):
        samplers.sample(toy, x, KARRAS(6, 0.02, 20.0), "restart", seeds=[0], **between)


def test_corrector_nfe_by_hand():
    sigmas = KARRAS(10, 0.02, 20.0)
    assert registry.nfe_on("heun", sigmas, corrector_steps=2) == 19 + 20
    assert registry.nfe_on("euler", sigmas, corrector_steps=1) == 20
    assert samplers.get("heun").nfe(10, corrector_steps=2) == 39
    # with RePaint's resampling too: parts of 5 steps, the first solved twice
    assert registry.nfe_on("euler", sigmas, corrector_steps=1, resample=(5, 2)) == 2 * (5 + 5) + (5 + 5)


@pytest.mark.parametrize("sampler", ["heun", "euler", "dpmpp_2m", "euler_ancestral", "dpm_2", "dpmpp_sde"])
@pytest.mark.parametrize("m", [0, 1, 2, 5])
def test_steps_for_nfe_with_corrector_inverts_nfe(sampler, m):
    spec = samplers.get(sampler)
    for budget in range(spec.nfe(1, corrector_steps=m), 60):
        n = samplers.steps_for_nfe(sampler, budget, corrector_steps=m)
        assert spec.nfe(n, corrector_steps=m) <= budget < spec.nfe(n + 1, corrector_steps=m)
        sigmas = KARRAS(n, 0.02, 20.0)
        assert registry.nfe_on(sampler, sigmas, corrector_steps=m) == spec.nfe(n, corrector_steps=m)
    if spec.nfe(1, corrector_steps=m) > 1:
        with pytest.raises(ValueError, match="at least"):
            samplers.steps_for_nfe(sampler, spec.nfe(1, corrector_steps=m) - 1, corrector_steps=m)


def test_steps_for_nfe_counted_run():
    """The budget a run is planned with is what it spends."""
    model = Counting(toy)
    n = samplers.steps_for_nfe("heun", 40, corrector_steps=2)
    assert n == 10  # 2 n - 1 + 2 n <= 40
    sigmas = KARRAS(n, 0.02, 20.0)
    x = samplers.noise.latents([0], SHAPE, dtype=torch.float64) * 20.0
    samplers.sample(model, x, sigmas, "heun", seeds=[0], langevin=LangevinCorrector(steps=2))
    assert model.calls == 39


def test_corrector_runs_before_each_step_at_its_level():
    """The sigma of each evaluation shows the order: M corrector evaluations at sigma_i, then the
    predictor's step (heun: sigma_i and sigma_{i+1}; Euler onto 0 on the last)."""
    seen = []

    def record(x, sigma, **cond):
        seen.append(round(float(sigma[0]), 9))
        return toy(x, sigma)

    sigmas = [4.0, 2.0, 1.0, 0.0]
    x = torch.ones(1, 3, dtype=torch.float64)
    samplers.sample(record, x, sigmas, "heun", seeds=[0], langevin=LangevinCorrector(steps=2))
    assert seen == [4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("sampler", ["heun", "euler_ancestral", "dpmpp_sde", "dpmpp_2m"])
def test_corrector_batch_invariance(sampler):
    seeds = [3, 1, 4]
    sigmas = KARRAS(5, 0.02, 20.0)

    def run(idx):
        chosen = [seeds[i] for i in idx]
        x = samplers.noise.latents(chosen, SHAPE, dtype=torch.float64) * 20.0
        return samplers.sample(toy, x, sigmas, sampler, seeds=chosen, langevin=LangevinCorrector(steps=2))

    together = run([0, 1, 2])
    assert torch.equal(together, torch.cat([run([i]) for i in range(3)]))
    assert torch.equal(together[[2, 0, 1]], run([2, 0, 1]))
    x = samplers.noise.latents(seeds, SHAPE, dtype=torch.float64) * 20.0
    plain = samplers.sample(toy, x, sigmas, sampler, seeds=seeds)
    assert (together - plain).abs().max() > 1e-3  # the corrector really acts


# --- annealed Langevin ------------------------------------------------------------------------------


def test_annealed_langevin_is_registered():
    assert "annealed_langevin" in samplers.list()
    spec = samplers.get("annealed_langevin")
    assert spec.stochastic and spec.noise == "iid"
    defaults = {k: p.default for k, p in inspect.signature(spec.fn).parameters.items()
                if k in ("steps_per_level", "step_size")}
    assert dict(spec.options) == defaults and len(defaults) == 2
    for steps in (1, 2, 7, 20):
        assert spec.nfe(steps) == steps * defaults["steps_per_level"] + 1
        for t in (1, 3, 10):
            assert spec.nfe(steps, {"steps_per_level": t}) == steps * t + 1
            assert spec.nfe(steps, {"steps_per_level": t, "step_size": 0.5}) == steps * t + 1
    assert spec.step_costs({"steps_per_level": 4}) == (4, 5)
    assert samplers.steps_for_nfe("annealed_langevin", 31, {"steps_per_level": 3}) == 10
    assert samplers.steps_for_nfe("annealed_langevin", 30, {"steps_per_level": 3}) == 9


@pytest.mark.parametrize("steps,t", [(1, 1), (4, 3), (6, 2)])
def test_annealed_langevin_counted_calls(steps, t):
    model = Counting(toy)
    sigmas = KARRAS(steps, 0.05, 10.0)
    x = samplers.noise.latents([0, 1], SHAPE, dtype=torch.float64) * 10.0
    samplers.sample(model, x, sigmas, "annealed_langevin", seeds=[0, 1], steps_per_level=t)
    assert model.calls == steps * t + 1 == registry.nfe_on("annealed_langevin", sigmas, steps_per_level=t)


def test_annealed_langevin_step_written_out():
    """One level, two Langevin steps and the final denoising, with the sampler's own noise replayed."""
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    draws = []

    def noise(sigma, sigma_next):
        draws.append(torch.randn(x.shape, generator=torch.Generator().manual_seed(len(draws)),
                                 dtype=torch.float64))
        return draws[-1]

    out = samplers.sample(toy, x, [3.0, 0.0], "annealed_langevin", noise=noise, steps_per_level=2,
                          step_size=0.2)
    a = 0.2 * 3.0**2
    expected = x
    for z in draws:
        expected = expected + (a / 2) * (toy(expected, 3.0) - expected) / 9.0 + math.sqrt(a) * z
    torch.testing.assert_close(out, toy(expected, 3.0), rtol=0, atol=1e-14)


@pytest.mark.slow
def test_annealed_langevin_samples_the_target_variance():
    """On data N(0, s^2) the exact score makes each level's chain a Gaussian AR(1):
    Var' = (1 - a / (2 v))^2 Var + a with v = s^2 + sigma^2, and the final D scales by s^2 / v_L. That
    recursion predicts the output variance exactly; the sampler matches it, and it is s^2 to 2%."""
    s, levels, t, step_size = 1.0, 60, 20, 1.0
    sigmas = samplers.schedules.get("exponential")(levels, 0.01, 50.0)  # geometric, as NCSN
    sigma_list = sigmas.tolist()
    var = sigma_list[0] ** 2
    for sigma in sigma_list[:-1]:
        a, v = step_size * sigma**2, s**2 + sigma**2
        for _ in range(t):
            var = (1 - a / (2 * v)) ** 2 * var + a
    var *= (s**2 / (s**2 + sigma_list[-2] ** 2)) ** 2
    assert var == pytest.approx(s**2, rel=0.02)

    seeds = list(range(6))
    x = samplers.noise.latents(seeds, (3000,), dtype=torch.float64) * sigma_list[0]
    out = samplers.sample(gaussian(s), x, sigmas, "annealed_langevin", seeds=seeds, steps_per_level=t,
                          step_size=step_size)
    empirical = float(out.var())
    assert abs(float(out.mean())) < 0.03
    assert empirical == pytest.approx(var, rel=0.04)  # 18000 samples: relative std ~1.1%
    assert empirical == pytest.approx(s**2, rel=0.05)


@pytest.mark.parametrize("bad", [{"steps_per_level": 0}, {"steps_per_level": 2.5}, {"steps_per_level": True},
                                 {"step_size": 0.0}, {"step_size": -0.1}, {"step_size": math.inf},
                                 {"step_size": math.nan}, {"step_size": "big"}, {"temperature": 1.0}])
def test_annealed_langevin_bad_options(bad):
    x = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError):
        samplers.sample(toy, x, [2.0, 1.0, 0.0], "annealed_langevin", seeds=[0], **bad)


def test_annealed_langevin_batch_invariance():
    seeds = [3, 1, 4]
    sigmas = KARRAS(5, 0.02, 20.0)

    def run(idx):
        chosen = [seeds[i] for i in idx]
        x = samplers.noise.latents(chosen, SHAPE, dtype=torch.float64) * 20.0
        return samplers.sample(toy, x, sigmas, "annealed_langevin", seeds=chosen, steps_per_level=3)

    together = run([0, 1, 2])
    assert torch.equal(together, torch.cat([run([i]) for i in range(3)]))
    assert torch.equal(together[[1, 2, 0]], run([1, 2, 0]))

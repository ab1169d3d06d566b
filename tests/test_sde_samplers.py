"""The SDE samplers of ``samplers.sde`` (er_sde, seeds_2, seeds_3, sa_solver, sa_solver_pece).

Oracles: diffusers' ``SASolverScheduler`` run on the same model and the same normal draws; scipy's adaptive
quadrature for ER-SDE's integrals; solve_ivp's probability-flow solution for ER-SDE's ODE limit (its noise
scaler N(sigma) = sigma); the closed-form marginal of Gaussian data for the law the SDEs sample; and a
fine-step run on the same Brownian path for their strong order. (The deterministic limits of seeds and
SA-Solver, eta = 0, are rows of tests/test_convergence.py; batch invariance per seed is tests/test_noise.py,
which takes every stochastic sampler in the registry.)
"""

from __future__ import annotations

import bisect
import math

import diffusers
import pytest
import torch
from scipy.integrate import quad

import samplers
from _support import Counting, assert_usage_error, invoke, start
from edm.gaussian_mixture import GaussianMixture
from samplers.api import Model
from samplers.sde import er_sde_integrals, er_sde_noise_scaler, er_sde_solver
from tools.ode import solve_probability_flow

NAMES = ("er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece")
EVERYWHERE = {"sde_sigma_min": 0.0, "sde_sigma_max": math.inf}  # SA-Solver's tau = eta on every step
SIGMA_MIN, SIGMA_MAX, RHO = 0.02, 20.0, 7.0


def karras(n: int) -> torch.Tensor:
    """n steps of Karras' rho = 7 schedule from SIGMA_MAX to SIGMA_MIN (no final 0); the grids of n and 2n
    steps are nested, so runs on them can share one Brownian path point for point."""
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    return (SIGMA_MAX ** (1 / RHO) + ramp * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO


def orders(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


# --- registry and NFE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [
    ("er_sde", {}), ("er_sde", {"max_stage": 1}), ("seeds_2", {}), ("seeds_2", {"r": 1.0}), ("seeds_3", {}),
    ("sa_solver", {}), ("sa_solver_pece", {}), ("sa_solver_pece", {"corrector_order": 0}),
])
def test_nfe_is_the_declared_one(name, options):
    spec = samplers.get(name)
    assert spec.stochastic and spec.noise == "brownian"
    for steps in (1, 2, 7):
        sigmas = samplers.schedules.get("karras")(steps, 0.02, 20.0)
        model = Counting(GaussianMixture.random((2, 4, 4), k=2, seed=0, dtype=torch.float64))
        samplers.sample(model, start(batch=2, sigma_max=20.0)[:, :2, :4, :4], sigmas, name, seeds=[0, 1],
                        **options)
        assert model.calls == spec.nfe(steps, options), (steps, model.calls)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("er_sde", {"max_stage": 4}, "max_stage must be an integer in 1..3"),
    ("seeds_2", {"r": 0.0}, "r must be in"),
    ("seeds_2", {"solver_type": "midpoint"}, "solver_type must be phi_1 or phi_2"),
    ("seeds_3", {"r_1": 0.7}, "0 < r_1 < r_2 <= 1"),
    ("sa_solver", {"predictor_order": 0}, "predictor_order must be an integer in 1..6"),
    ("sa_solver_pece", {"sde_sigma_min": 5.0, "sde_sigma_max": 1.0}, "sde_sigma_min <= sde_sigma_max"),
])
def test_bad_options_are_refused_before_any_evaluation(name, options, message):
    model = Counting(GaussianMixture.random((2, 4, 4), k=2, seed=0, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        samplers.sample(model, torch.zeros(1, 2, 4, 4, dtype=torch.float64),
                        samplers.schedules.get("karras")(4, 0.02, 20.0), name, seeds=[0], **options)
    assert model.calls == 0


def test_cli_lists_them_and_refuses_a_bad_option_in_one_line(tmp_path):
    from tools.cli import main

    listing = invoke(main, "samplers")
    assert listing.exit_code == 0, listing.output
    for name in NAMES:
        assert name in listing.output
    out = tmp_path / "out"
    result = invoke(main, "generate", "--model", "digits", "--sampler", "seeds_2", "--r", "0", "--steps", "4",
                    "--seeds", "0", "--outdir", out)
    assert_usage_error(result, "--r must be in (0, 1]")
    assert not out.exists()


# --- ER-SDE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "sigma_next"), [(80.0, 50.0), (20.0, 2.0), (1.0, 0.9), (0.05, 0.002)])
def test_er_sde_integrals_equal_adaptive_quadrature(sigma, sigma_next):
    first, second = er_sde_integrals(er_sde_noise_scaler, sigma, sigma_next)
    opts = {"epsabs": 0.0, "epsrel": 1e-13, "limit": 200}
    assert first == pytest.approx(quad(lambda s: 1 / er_sde_noise_scaler(s), sigma_next, sigma, **opts)[0],
                                  rel=1e-12)
    assert second == pytest.approx(
        quad(lambda s: (s - sigma) / er_sde_noise_scaler(s), sigma_next, sigma, **opts)[0], rel=1e-12)


@pytest.fixture(scope="module")
def ode_problem():
    mixture = GaussianMixture.random((3, 8, 8), k=4, seed=0, std_range=(0.2, 0.4), dtype=torch.float64)
    x = start(batch=4, sigma_max=SIGMA_MAX)
    return mixture, x, solve_probability_flow(mixture, x, SIGMA_MAX, SIGMA_MIN, rtol=1e-12, atol=1e-12)


# ComfyUI's (and the paper's code's) D'' and D' are divided differences that leave the three-stage method
# second order: measured 2.20, 2.10 (two stages: 2.12, 2.05; one: 1.00).
@pytest.mark.parametrize(("max_stage", "order"), [(1, 1), (2, 2), (3, 2)])
def test_er_sde_ode_limit_converges_at_its_order(ode_problem, max_stage, order):
    """With N(sigma) = sigma the ER-SDE is the probability-flow ODE (no noise: r = sigma_t / sigma_s)."""
    mixture, x, reference = ode_problem
    errors = []
    for n in (32, 64, 128):
        sigmas = samplers.schedules.get("karras")(n, SIGMA_MIN, SIGMA_MAX)[:-1].tolist()
        out = er_sde_solver(Model(mixture), x.clone(), sigmas, noise=None, callback=None, s_noise=1.0,
                            max_stage=max_stage, scaler=lambda s: s)
        errors.append(((out - reference) ** 2).mean().sqrt().item())
    observed = orders(errors)
    assert order - 0.3 <= observed[-1] <= order + 0.5, (observed, errors)
    if max_stage == 3:
        assert samplers.get("er_sde").order == order


# --- SA-Solver against diffusers ---------------------------------------------------------------------------

STEPS = 12


@pytest.mark.parametrize(("predictor_order", "corrector_order"), [(3, 4), (2, 2), (1, 1), (4, 4), (2, 3)])
def test_sa_solver_equals_diffusers_sasolverscheduler(predictor_order, corrector_order):
    """diffusers' VP loop (x0-prediction model output, float64 tables) against ours in sigma, with the same
    normal draws: diffusers draws one per step whatever tau, ours only where tau > 0, so ours reads the
    draw of the step it is on. diffusers tests tau at a step's start timestep, ours at its target sigma,
    so diffusers is given the tau function that selects the same steps; it lowers no orders at the end
    (``lower_order_final=False``, ours: the schedule does not end in 0) and always simplifies order 2."""
    diffusers.utils.logging.set_verbosity_error()
    mixture = GaussianMixture.random((2, 4, 4), k=3, seed=0, dtype=torch.float64)
    scheduler = diffusers.SASolverScheduler(predictor_order=predictor_order, corrector_order=corrector_order,
                                            prediction_type="sample", lower_order_final=False)
    scheduler.set_timesteps(STEPS)
    scheduler.sigmas = scheduler.sigmas.double()
    sigmas = scheduler.sigmas.tolist()  # STEPS + 1 levels, the last sigma(t = 0) > 0
    sde_min, sde_max = sigmas[9], sigmas[3]
    noisy = {t for i, t in enumerate(scheduler.timesteps.tolist()) if sde_min <= sigmas[i + 1] <= sde_max}
    scheduler.tau_func = lambda t: 1 if int(t) in noisy else 0
    latent = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    generator = torch.Generator().manual_seed(5)
    x_vp = latent.clone()
    for i, t in enumerate(scheduler.timesteps):
        alpha = 1 / math.sqrt(1 + sigmas[i] ** 2)
        x0 = mixture(x_vp / alpha, torch.full((2,), sigmas[i], dtype=torch.float64))
        x_vp = scheduler.step(x0, t, x_vp, generator=generator).prev_sample

    generator = torch.Generator().manual_seed(5)
    draws = {sigma: torch.randn(latent.shape, generator=generator, dtype=torch.float64)
             for sigma in sigmas[:-1]}
    ours = samplers.sample(mixture, latent * math.sqrt(1 + sigmas[0] ** 2), scheduler.sigmas, "sa_solver",
                           noise=lambda sigma, sigma_next: draws[sigma], eta=1.0,
                           predictor_order=predictor_order, corrector_order=corrector_order,
                           sde_sigma_min=sde_min, sde_sigma_max=sde_max, simple_order_2=True)
    ours = ours / math.sqrt(1 + sigmas[-1] ** 2)
    assert 3 <= len(noisy) < STEPS
    assert (ours - x_vp).abs().max().item() <= 1e-11 * x_vp.abs().max().item()


# --- the law sampled, and strong convergence ----------------------------------------------------------------

SDE_CASES = [("er_sde", {}), ("seeds_2", {}), ("seeds_2", {"solver_type": "phi_2"}), ("seeds_3", {}),
             ("sa_solver", EVERYWHERE), ("sa_solver_pece", EVERYWHERE), ("sa_solver", {})]


def gaussian(shape=(3, 8, 8)) -> GaussianMixture:
    """Gaussian data (one component): its SDEs are linear, so paths neither branch between modes nor
    reach sampler-dependent modes, and the marginal at every sigma is known."""
    return GaussianMixture.random(shape, k=1, seed=0, std_range=(0.3, 0.5), dtype=torch.float64)


def noise_at_sigma_max(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


def case_id(case):
    return case[0] + ("-" + "-".join(f"{k}={v}" for k, v in case[1].items()) if case[1] else "")


@pytest.mark.parametrize("case", SDE_CASES, ids=case_id)
def test_samples_have_the_gaussian_marginal(case):
    """On Gaussian data N(mu, s^2) the samples at sigma_end are N(mu, s^2 + sigma_end^2): the z-scores of
    8192 coordinates have mean 0 and variance 1 within 5 standard errors (drift and noise scale agree)."""
    name, options = case
    data = gaussian((2, 8, 8))
    x = noise_at_sigma_max((64, 2, 8, 8), seed=11)
    out = samplers.sample(data, x, karras(24), name, seeds=range(64), **options)
    z = ((out - data.means[0]) / math.sqrt(data.stds[0].item() ** 2 + SIGMA_MIN**2)).flatten()
    n = z.numel()
    assert abs(z.mean().item()) <= 5 / math.sqrt(n), z.mean().item()
    assert abs(z.var().item() - 1) <= 5 * math.sqrt(2 / n), z.var().item()


class SharedPath:
    """One Brownian path W(sigma) per sample that any number of runs query, in any order: new points are
    drawn from the exact law given every point known so far (bridge between neighbours, free beyond)."""

    def __init__(self, shape, seed):
        self.generator = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.times, self.values = [], []

    def _draw(self):
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float64)

    def value(self, t: float) -> torch.Tensor:
        times, values = self.times, self.values
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return values[i]
        if not times:
            w = torch.zeros(self.shape, dtype=torch.float64)
        elif i == 0:
            w = values[0] - math.sqrt(times[0] - t) * self._draw()
        elif i == len(times):
            w = values[-1] + math.sqrt(t - times[-1]) * self._draw()
        else:
            t0, t1 = times[i - 1], times[i]
            w = (values[i - 1] + (t - t0) / (t1 - t0) * (values[i] - values[i - 1])
                 + math.sqrt((t - t0) * (t1 - t) / (t1 - t0)) * self._draw())
        times.insert(i, t)
        values.insert(i, w)
        return w

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = float(sigma), float(sigma_next)
        return (self.value(sigma_next) - self.value(sigma)) / math.sqrt(abs(sigma - sigma_next))


# Measured (last two doublings, against 512 steps): er_sde 1.0, seeds_2 0.9, seeds_3 0.85, sa_solver 1.0 —
# strong order 1, the order of additive noise entering as one increment per interval.
@pytest.mark.parametrize("case", SDE_CASES, ids=case_id)
def test_strong_order_on_one_brownian_path(case):
    name, options = case
    data = gaussian()
    x = noise_at_sigma_max((8, 3, 8, 8), seed=1)
    path = SharedPath(x.shape, seed=7)
    reference = samplers.sample(data, x.clone(), karras(512), name, noise=path, **options)
    errors = [((samplers.sample(data, x.clone(), karras(n), name, noise=path, **options) - reference) ** 2)
              .mean().sqrt().item() for n in (16, 32, 64)]
    observed = orders(errors)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert 0.7 <= observed[-1] <= 1.5, (observed, errors)

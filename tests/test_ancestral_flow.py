"""Ancestral sampling on flow models (x_t = (1 - t) y + t n): our ancestral step, run on the flow model's
EDM denoiser, against ComfyUI's RF variant written out here in flow time as ComfyUI's
sample_euler_ancestral_RF has it.

What is checked (samplers/ancestral.py's docstring has the derivation):
(a) ours keeps the law of x_t given the clean image exactly; with the exact denoiser (the posterior mean
    of y, not y), one step from exact marginal samples keeps the mean and loses exactly
    (1 - sigma_down / sigma)^2 E[Var(y | x)] of variance (its discretization error);
(b) the RF variant keeps it too, and is our step with a different split: at its eta, it is ours at a
    per-step eta' (not a constant), which tends to sqrt(eta) as the steps shrink.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from edm.flow import FlowDenoiser, from_flow, to_flow
from edm.gaussian_mixture import GaussianMixture
from samplers.ancestral import euler_ancestral

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
N = 20000


def mixture() -> GaussianMixture:
    means = torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 1.5]], dtype=F64)
    stds, weights = torch.tensor([0.5, 0.7, 0.4], dtype=F64), torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    return GaussianMixture(means, stds, weights)


def normals(n, seed):
    return torch.randn((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


def sigma_of(t: float) -> float:
    """EDM sigma = t / (1 - t) of flow time t, in Python floats (edm.flow.flow_sigma makes a float32
    tensor of a Python number)."""
    return t / (1 - t)


def oracle_flow(y: torch.Tensor) -> FlowDenoiser:
    """A flow model that knows each sample's clean image y: velocity (x_t - y) / t = n - y, so D = y."""
    return FlowDenoiser(lambda x_t, timestep: (x_t - y) / timestep.reshape(-1, 1), time_scale=1.0)


def rf_step(model, x_t, t, t_next, eta, noise):
    """ComfyUI's euler_ancestral_RF step in flow time (``model`` the EDM denoiser of the flow model;
    ComfyUI's denoised for a flow model is x_t - t v, the same D)."""
    denoised = model(from_flow(x_t, t), sigma_of(t))
    if t_next == 0:
        return denoised
    t_down = t_next * (1 + (t_next / t - 1) * eta)
    alpha_next, alpha_down = 1 - t_next, 1 - t_down
    renoise = math.sqrt(t_next**2 - t_down**2 * alpha_next**2 / alpha_down**2)
    x_t = t_down / t * x_t + (1 - t_down / t) * denoised
    return alpha_next / alpha_down * x_t + renoise * noise


def ours(model, x_t, t, t_next, eta, noise):
    """Our euler_ancestral for one step, given and returning flow-time states."""
    sigma, sigma_next = sigma_of(t), sigma_of(t_next)
    x = euler_ancestral(model, from_flow(x_t, t), [sigma, sigma_next], noise=lambda a, b: noise, eta=eta)
    return to_flow(x, sigma_next)


def rf_as_our_eta(sigma, sigma_next, eta):
    """The eta of our split with the RF variant's sigma_down: sigma_up^2 = sigma_next^2 - sigma_down^2
    and ours is sigma_up = eta' sigma_next sqrt(1 - sigma_next^2 / sigma^2)."""
    t, t_next = sigma / (1 + sigma), sigma_next / (1 + sigma_next)
    t_down = t_next * (1 + (t_next / t - 1) * eta)
    sigma_down = t_down / (1 - t_down)
    return math.sqrt(sigma_next**2 - sigma_down**2) / (sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2))


STEPS = [(0.8, 0.6), (0.5, 0.2), (0.3, 0.25), (0.05, 0.01)]  # (t, t_next)


@pytest.mark.parametrize("step", [ours, rf_step], ids=["ours", "rf"])
@pytest.mark.parametrize(("t", "t_next"), STEPS)
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_an_ancestral_step_keeps_the_law_of_x_t_given_y_exactly(step, t, t_next, eta):
    """Given the clean image (D = y), x_t = (1 - t) y + t n goes to (1 - t_next) y + t_next (a n + b n')
    with a^2 + b^2 = 1: exactly the flow's law at t_next given y, for both splits. (a, b) are recovered
    by least squares with zero residual: the step is that linear map, not merely close in moments."""
    y, n, n_fresh = mixture().sample(64, torch.Generator().manual_seed(0)), normals(64, 1), normals(64, 2)
    out = step(oracle_flow(y), (1 - t) * y + t * n, t, t_next, eta, n_fresh)
    residual = ((out - (1 - t_next) * y) / t_next).reshape(-1, 1)
    basis = torch.stack([n.reshape(-1), n_fresh.reshape(-1)], dim=1)
    coefficients = torch.linalg.lstsq(basis, residual).solution
    torch.testing.assert_close(basis @ coefficients, residual, rtol=0, atol=1e-12)
    a, b = coefficients.reshape(-1)
    assert float(a**2 + b**2) == pytest.approx(1.0, abs=1e-12)
    assert 0 < float(b) < 1  # fresh noise was added and old noise kept


def down_ratio(step, t, t_next, eta):
    """sigma_down / sigma of a step: ours (k-diffusion's split, sigma_up = eta sigma_next sqrt(1 -
    sigma_next^2 / sigma^2)) or the RF variant's (t_down = t_next (1 + (t_next / t - 1) eta))."""
    sigma, sigma_next = sigma_of(t), sigma_of(t_next)
    if step is ours:
        return math.sqrt(sigma_next**2 * (1 - eta**2 * (1 - sigma_next**2 / sigma**2))) / sigma
    return sigma_of(t_next * (1 + (t_next / t - 1) * eta)) / sigma


@pytest.mark.parametrize("step", [ours, rf_step], ids=["ours", "rf"])
@pytest.mark.parametrize(("t", "t_next"), [(0.5, 0.4), (0.6, 0.3)])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_one_step_from_exact_marginal_samples(step, t, t_next, eta):
    """With the exact mixture as a flow model, one step from samples of x_t's marginal: the mean is the
    next marginal's (within 5 standard errors), the variance the next marginal's less exactly
    (1 - t_next)^2 (1 - r)^2 E[Var(y | x_t)], r = sigma_down / sigma (the denoiser's posterior mean
    stands in for y: the ancestral step's discretization error, O(step^2), the same form for both
    splits). The deficit is estimated on independent samples; within 5 standard errors of both."""
    gm = mixture()
    flow = FlowDenoiser(gm.velocity_backbone(1.0), time_scale=1.0)
    y = gm.sample(N, torch.Generator().manual_seed(3))
    out = step(flow, (1 - t) * y + t * normals(N, 4), t, t_next, eta, normals(N, 5))
    y_2 = gm.sample(N, torch.Generator().manual_seed(6))
    error_2 = (flow(y_2 + sigma_of(t) * normals(N, 7), sigma_of(t)) - y_2) ** 2  # (D - y)^2
    deficit = (1 - t_next) ** 2 * (1 - down_ratio(step, t, t_next, eta)) ** 2
    mean = (1 - t_next) * gm.mean
    var = (1 - t_next) ** 2 * gm.variance + t_next**2 - deficit * error_2.mean(0)
    centered = out - out.mean(0)
    se_mean = (out.var(0) / N).sqrt()
    se_var = (((centered**4).mean(0) - out.var(0) ** 2) / N).sqrt() + deficit * (error_2.var(0) / N).sqrt()
    assert ((out.mean(0) - mean).abs() <= 5 * se_mean).all(), (out.mean(0), mean)
    assert ((out.var(0) - var).abs() <= 5 * se_var).all(), (out.var(0), var)
    assert (deficit * error_2.mean(0) > 3 * se_var).all()  # the deficit is really there, not noise


@pytest.mark.parametrize(("t", "t_next"), STEPS + [(0.999, 0.9)])
@pytest.mark.parametrize("eta", [1.0, 0.5, 0.25])
def test_the_rf_variant_is_our_step_at_another_eta(t, t_next, eta):
    """The RF step (Euler in t to t_down, rescale, renoise) is our Euler step to sigma(t_down) plus fresh
    noise of std sqrt(sigma_next^2 - sigma(t_down)^2): our ancestral step at eta' = rf_as_our_eta."""
    gm = mixture()
    flow = FlowDenoiser(gm.velocity_backbone(1.0), time_scale=1.0)
    x_t = (1 - t) * gm.sample(64, torch.Generator().manual_seed(6)) + t * normals(64, 7)
    n_fresh = normals(64, 8)
    eta_ours = rf_as_our_eta(sigma_of(t), sigma_of(t_next), eta)
    torch.testing.assert_close(ours(flow, x_t, t, t_next, eta_ours, n_fresh),
                               rf_step(flow, x_t, t, t_next, eta, n_fresh), rtol=1e-12, atol=1e-12)
    if eta != 1:
        assert not torch.allclose(ours(flow, x_t, t, t_next, eta, n_fresh),
                                  rf_step(flow, x_t, t, t_next, eta, n_fresh), rtol=0, atol=1e-6)


def test_the_rf_eta_is_ours_at_sqrt_eta_for_small_steps_and_not_a_constant():
    """As the step shrinks (sigma_next = sigma (1 - delta)), eta' -> sqrt(eta) at every noise level: the
    RF variant at eta = 1 tends to our eta = 1 (the DDPM posterior), at eta = 0.25 to our 0.5. On a
    20-step Karras schedule its eta = 1 is our eta' between about 0.90 (large steps at high noise) and 1."""
    for sigma in (0.05, 1.0, 20.0):
        for eta in (1.0, 0.5, 0.25):
            for delta, tol in ((1e-2, 3e-2), (1e-4, 3e-4)):
                eta_ours = rf_as_our_eta(sigma, sigma * (1 - delta), eta)
                assert eta_ours == pytest.approx(math.sqrt(eta), abs=tol)
    sigmas = samplers.schedules.get("karras")(20, 0.002, 80.0).tolist()
    etas = [rf_as_our_eta(a, b, 1.0) for a, b in zip(sigmas, sigmas[1:-1])]
    assert 0.89 < min(etas) < 0.91 and max(etas) == pytest.approx(1.0, abs=1e-3)

"""ipndm, deis (samplers/adams.py), res_multistep and dpmpp_3m (samplers/multistep.py): DEIS parity with
diffusers' DEISMultistepScheduler, closed-form coefficient checks, RES against its phi form. Their
convergence orders are checked with all the others in tests/test_convergence.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from _support import mixture, start
from edm.gaussian_mixture import GaussianMixture
from samplers.adams import deis_coefficients


def res_reference(denoiser, x, sigmas):
    """RES multistep in ComfyUI's phi form, written out independently: x' = e^{-h} x + h (b_1 D + b_2 D_prev)
    with c_2 = -h_prev / h, b_2 = phi_2(-h) / c_2, b_1 = phi_1(-h) - b_2; Euler-exponential first step."""
    phi_1 = lambda t: math.expm1(t) / t  # noqa: E731
    phi_2 = lambda t: (phi_1(t) - 1) / t  # noqa: E731
    previous = None
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        if previous is None:
            x = math.exp(-h) * x - math.expm1(-h) * denoised
        else:
            d_prev, h_prev = previous
            b_2 = phi_2(-h) / (-h_prev / h)
            b_1 = phi_1(-h) - b_2
            x = math.exp(-h) * x + h * (b_1 * denoised + b_2 * d_prev)
        previous = (denoised, h)
    return x


def test_res_multistep_equals_its_phi_form():
    denoiser, x = mixture(), start(sigma_max=20.0)
    sigmas = samplers.schedules.get("karras")(12, 0.02, 20.0)
    ours = samplers.sample(denoiser, x.clone(), sigmas, "res_multistep")
    expected = res_reference(denoiser, x.clone(), sigmas.tolist())
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def _quad(f, a, b, n=20001):
    # Composite Simpson on a fine grid, an independent check of the closed-form weights.
    s = np.linspace(a, b, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float((b - a) / (n - 1) / 3 * np.sum(w * f(s)))


@pytest.mark.parametrize("nodes,target", [
    ([1.0], 0.8), ([1.0, 1.3], 0.8), ([1.0, 1.3, 1.8], 0.7),  # small steps (moment quadrature branch)
    ([5.0, 40.0, 90.0], 0.5),  # |log ratio| > 1 (moment recursion branch)
])
def test_deis_coefficients_integrate_lagrange_basis_in_log_sigma(nodes, target):
    coeffs = deis_coefficients(nodes, target)
    logs = np.log(nodes)
    for j, c in enumerate(coeffs):
        def basis(s, j=j):
            u = np.log(s)
            return np.prod([(u - logs[k]) / (logs[j] - logs[k]) for k in range(len(nodes)) if k != j], axis=0)
        assert c == pytest.approx(_quad(basis, nodes[0], target), rel=1e-9, abs=1e-12)
    assert sum(coeffs) == pytest.approx(target - nodes[0], rel=1e-12)  # constants integrate exactly


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_matches_diffusers(order):
    import diffusers
    scheduler = diffusers.DEISMultistepScheduler(solver_order=order, prediction_type="sample",
                                                 algorithm_type="deis", lower_order_final=False)
    scheduler.set_timesteps(10)
    # diffusers keeps sigmas in float32: give both sides the same (float32-rounded) float64 values.
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    sigmas = scheduler.sigmas.tolist()
    assert all(s > 0 for s in sigmas) and all(a > b for a, b in zip(sigmas, sigmas[1:]))

    mixture = GaussianMixture.random((3, 8, 8), k=4, seed=0, std_range=(0.2, 0.4), dtype=torch.float64)
    x = start(batch=2, sigma_max=sigmas[0])
    ours = samplers.sample(mixture, x.clone(), sigmas, "deis", order=order)

    # diffusers runs the variance-preserving x_vp = x / sqrt(1 + sigma^2) with rho = sigma.
    sample = x / math.sqrt(1 + sigmas[0] ** 2)
    for i, t in enumerate(scheduler.timesteps):
        scale = math.sqrt(1 + sigmas[i] ** 2)
        denoised = mixture(sample * scale, sigmas[i])
        sample = scheduler.step(denoised, t, sample).prev_sample
    theirs = sample * math.sqrt(1 + sigmas[-1] ** 2)
    # measured difference <= 2e-14 (float64 on both sides)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * theirs.abs().max().item())


def test_option_validation():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="max_order"):
        samplers.get("ipndm").fn(lambda x, s: x, x, [1.0, 0.0], max_order=5)
    with pytest.raises(ValueError, match="order"):
        samplers.get("deis").fn(lambda x, s: x, x, [1.0, 0.0], order=4)

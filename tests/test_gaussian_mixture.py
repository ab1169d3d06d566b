"""Tests for the exact Gaussian-mixture denoiser and the probability-flow ODE reference."""

import math

import pytest
import torch

from edm.gaussian_mixture import GaussianMixture
from tools.ode import reference_sample, solve_probability_flow

SIGMAS = [0.01, 0.1, 0.5, 1.0, 3.0, 20.0]


# The tensors here are tiny: one intra-op thread is fastest, and robust to a loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _small_mixture(diagonal: bool, seed: int = 0, dtype=torch.float64) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    k, shape = 4, (2, 3)
    means = 0.6 * torch.randn((k, *shape), generator=g, dtype=torch.float64)
    std_shape = (k, *shape) if diagonal else (k,)
    stds = 0.1 + 0.4 * torch.rand(std_shape, generator=g, dtype=torch.float64)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(means.to(dtype), stds.to(dtype), weights.to(dtype))


def _independent_log_prob(gm: GaussianMixture, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log p_sigma(x) from torch.distributions, independent of GaussianMixture's own math."""
    k = gm.k
    mu = gm.means.double().reshape(k, -1)
    s = gm.stds.double().reshape(k, -1).expand_as(mu)
    comp = torch.distributions.Independent(torch.distributions.Normal(mu, (s**2 + sigma**2).sqrt()), 1)
    cat = torch.distributions.Categorical(probs=gm.weights.double())
    mix = torch.distributions.MixtureSameFamily(cat, comp)
    return mix.log_prob(x.reshape(x.shape[0], -1))


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_denoiser_matches_tweedie(diagonal, sigma):
    gm = _small_mixture(diagonal)
    g = torch.Generator().manual_seed(1)
    x = gm.sample(8, generator=g) + sigma * torch.randn((8, *gm.shape), generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    logp = _independent_log_prob(gm, x, sigma)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    tweedie = x.detach() + sigma**2 * grad
    x = x.detach()
    torch.testing.assert_close(gm.denoise(x, sigma), tweedie, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.log_prob(x, sigma), logp.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(gm.score(x, sigma), grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("diagonal", [False, True])
def test_single_component_is_gaussian_closed_form(diagonal):
    g = torch.Generator().manual_seed(2)
    mu = torch.randn((1, 3, 4), generator=g, dtype=torch.float64)
    s = 0.2 + torch.rand((1, 3, 4) if diagonal else (1,), generator=g, dtype=torch.float64)
    gm = GaussianMixture(mu, s)
    x = torch.randn((5, 3, 4), generator=g, dtype=torch.float64) * 2
    s2 = (s.reshape(1, 1, 1) if not diagonal else s) ** 2
    for sigma in SIGMAS:
        expected = mu + s2 / (s2 + sigma**2) * (x - mu)
        torch.testing.assert_close(gm(x, sigma), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_monte_carlo_posterior_mean():
    gm = GaussianMixture.random((3, 4, 4), k=8, seed=3, dtype=torch.float64)
    sigma = 0.8
    g = torch.Generator().manual_seed(4)
    x = gm.sample(1, generator=g) + sigma * torch.randn((1, *gm.shape), generator=g, dtype=torch.float64)
    n = 150_000
    y = gm.sample(n, generator=g).reshape(n, -1)
    logw = -0.5 * ((x.reshape(1, -1) - y) ** 2).sum(1) / sigma**2
    w = torch.softmax(logw, 0)
    est = (w[:, None] * y).sum(0)
    # self-normalized importance sampling standard error (delta method)
    se = ((w[:, None] ** 2) * (y - est) ** 2).sum(0).sqrt()
    ess = 1.0 / (w**2).sum()
    assert ess > 500, f"importance sampling degenerate (ESS={ess:.0f})"
    exact = gm.denoise(x, sigma).reshape(-1)
    z = (est - exact).abs() / se
    assert z.max() < 5.5, f"max z-score {z.max():.2f}"
    assert z.pow(2).mean() < 2.0, f"mean squared z-score {z.pow(2).mean():.2f}"


# ---------------------------------------------------------------------------- API behaviour


def test_sigma_forms_and_dtypes():
    gm = GaussianMixture.random((3, 8, 8), k=16, seed=0)
    g = torch.Generator().manual_seed(5)
    x64 = gm.sample(6, generator=g, dtype=torch.float64) + 0.7 * torch.randn(6, 3, 8, 8, generator=g,
                                                                            dtype=torch.float64)
    x32 = x64.float()
    ref = gm(x64, torch.full((6,), 0.7, dtype=torch.float64))
    assert ref.dtype == torch.float64 and ref.shape == x64.shape
    sigma_forms = [0.7, torch.tensor(0.7), torch.tensor([0.7]), torch.full((6,), 0.7),
                   torch.full((6, 1, 1, 1), 0.7)]
    for sigma in sigma_forms:
        out = gm(x64, sigma)
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)
        out32 = gm(x32, sigma, class_labels=None)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5)
    # per-sample sigmas agree with one-at-a-time evaluation
    sig = torch.tensor([0.05, 0.2, 0.5, 1.0, 3.0, 10.0])
    batched = gm(x64, sig)
    for i in range(6):
        single = gm(x64[i : i + 1], float(sig[i]))
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-12, atol=1e-12)
    # sigma = 0 returns x
    assert torch.equal(gm(x32, 0.0), x32)
    mixed = gm(x64, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert torch.equal(mixed[0::2], x64[0::2])
    torch.testing.assert_close(mixed[1::2], gm(x64[1::2], 1.0), rtol=1e-12, atol=1e-12)
    assert gm.log_prob(x32, 0.7).shape == (6,)
    assert gm.score(x32, 0.7).shape == x32.shape
    with pytest.raises(ValueError):
        gm(x64, torch.ones(4))


def test_extreme_sigmas_are_finite():
    gm = GaussianMixture.random((3, 8, 8), k=16, seed=0)
    x = torch.randn(4, 3, 8, 8)
    for sigma in [1e-4, 0.002, 80.0, 1e4]:
        for dt in (torch.float32, torch.float64):
            assert torch.isfinite(gm(x.to(dt), sigma)).all()
    # large sigma: denoiser tends to the data mean
    torch.testing.assert_close(gm(x.double() * 1e4, 1e4)[0], gm.mean.double(), rtol=0, atol=1e-3)


def test_point_mass_components():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    gm = GaussianMixture(means, torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[0.3, 0.1], [-2.0, 1.0]], dtype=torch.float64)
    assert torch.equal(gm(x, 0.0), x)
    out = gm(x, 0.5)
    logits = -((x[:, None] - means[None]) ** 2).sum(-1) / (2 * 0.25)
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ means)


def test_random_is_reproducible_and_image_like():
    a = GaussianMixture.random((3, 8, 8), k=16, seed=7)
    b = GaussianMixture.random((3, 8, 8), k=16, seed=7)
    c = GaussianMixture.random((3, 8, 8), k=16, seed=8)
    assert torch.equal(a.means, b.means) and torch.equal(a.stds, b.stds) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.means, c.means)
    assert a.means.shape == (16, 3, 8, 8) and a.means.dtype == torch.float32
    assert abs(float(a.weights.sum()) - 1) < 1e-6
    y = a.sample(4000, generator=torch.Generator().manual_seed(0))
    assert y.shape == (4000, 3, 8, 8)
    assert (y.abs() > 1).float().mean() < 0.05
    assert 0.15 < a.sigma_data < 0.6
    assert abs(y.double().std(0).pow(2).mean().sqrt() - a.sigma_data) < 0.02
    d = GaussianMixture.random((3, 8, 8), k=5, seed=7, diagonal=True)
    assert d.diagonal and d.stds.shape == (5, 3, 8, 8)
    # the posterior over components is genuinely mixed over the whole sigma range 0.05..5
    x0 = a.sample(256, generator=torch.Generator().manual_seed(1)).double()
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def entropy(sigma):
        r = a.responsibilities(x0 + sigma * n, sigma)
        return float(-(r * r.clamp_min(1e-300).log()).sum(1).mean())

    ent = [entropy(s) for s in (0.05, 0.5, 5.0)]
    assert 0.1 < ent[0] < ent[1] < ent[2] < math.log(16)


def test_sample_statistics_single_component():
    mu = torch.tensor([[0.5, -0.25, 1.0]])
    s = torch.tensor([[0.1, 0.2, 0.3]])
    gm = GaussianMixture(mu, s)
    y = gm.sample(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.mean(0), mu[0], rtol=0, atol=0.01)
    torch.testing.assert_close(y.std(0), s[0], rtol=0.03, atol=0)


# ---------------------------------------------------------------------------- ODE reference


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("sigmas", [(0.1, 10.0), (20.0, 0.01), (80.0, 0.002)])
@pytest.mark.slow
def test_pf_ode_single_gaussian_closed_form(diagonal, sigmas):
    sigma0, sigma1 = sigmas
    g = torch.Generator().manual_seed(6)
    mu = 0.5 * torch.randn((1, 3, 4, 4), generator=g, dtype=torch.float64)
    s = 0.1 + 0.5 * torch.rand((1, 3, 4, 4) if diagonal else (1,), generator=g, dtype=torch.float64)
    gm = GaussianMixture(mu, s)
    x0 = mu + (s.reshape(1, 1, 1, 1) if not diagonal else s) * torch.randn((3, 3, 4, 4), generator=g,
                                                                            dtype=torch.float64)
    x0 = x0 + sigma0 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s2 = (s.reshape(1, 1, 1, 1) if not diagonal else s) ** 2
    expected = mu + ((s2 + sigma1**2) / (s2 + sigma0**2)).sqrt() * (x0 - mu)
    out = solve_probability_flow(gm, x0, sigma0, sigma1)
    assert out.dtype == torch.float64 and out.shape == x0.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_pf_ode_round_trip():
    gm = GaussianMixture.random((3, 8, 8), k=16, seed=0)
    g = torch.Generator().manual_seed(9)
    x = gm.sample(8, generator=g, dtype=torch.float64) + 0.1 * torch.randn(8, 3, 8, 8, generator=g,
                                                                           dtype=torch.float64)
    fwd = solve_probability_flow(gm, x, 0.1, 10.0)
    assert (fwd - x).abs().max() > 1.0  # it actually moved
    back = solve_probability_flow(gm, fwd, 10.0, 0.1)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


def test_pf_ode_float32_input_and_cond():
    calls = []

    def denoiser(x, sigma, **cond):
        calls.append((x.dtype, sigma.dtype, tuple(sigma.shape), cond))
        return torch.zeros_like(x)  # D = 0: x(sigma) = x0 * sigma / sigma0

    x = torch.ones(2, 3)
    out = solve_probability_flow(denoiser, x, 1.0, 4.0, cond={"class_labels": None})
    torch.testing.assert_close(out, torch.full((2, 3), 4.0, dtype=torch.float64), rtol=1e-9, atol=0)
    assert all(c == (torch.float64, torch.float64, (2,), {"class_labels": None}) for c in calls)
    torch.testing.assert_close(solve_probability_flow(denoiser, x, 2.0, 2.0), x.double())
    with pytest.raises(ValueError):
        solve_probability_flow(denoiser, x, 1.0, 0.0)


@pytest.mark.slow
def test_reference_sample_final_jump():
    g = torch.Generator().manual_seed(10)
    mu = torch.randn((1, 2, 3), generator=g, dtype=torch.float64)
    gm = GaussianMixture(mu, torch.tensor([0.5], dtype=torch.float64))
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    x = sigmas[0] * torch.randn((4, 2, 3), generator=g, dtype=torch.float64)
    out = reference_sample(gm, x, sigmas)
    x_last = mu + math.sqrt((0.25 + 0.2**2) / (0.25 + 10.0**2)) * (x - mu)
    expected = gm(x_last, 0.2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-8)
    # a schedule that ends above zero is integrated all the way, without a jump
    out2 = reference_sample(gm, x, [10.0, 3.0, 0.2])
    torch.testing.assert_close(out2, x_last, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_reference_sample_tracks_heun_convergence():
    """Heun's method over finer schedules converges to the reference at second order."""
    gm = GaussianMixture.random((3, 8, 8), k=16, seed=0)

    def heun(x, sigmas):
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            d = (x - gm(x, s)) / s
            x_next = x + (s_next - s) * d
            if s_next > 0:
                x_next = x + (s_next - s) * 0.5 * (d + (x_next - gm(x_next, s_next)) / s_next)
            x = x_next
        return x

    latent = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    errors = []
    for n in (16, 32, 64):
        sigmas = torch.cat([torch.exp(torch.linspace(math.log(5.0), math.log(0.05), n, dtype=torch.float64)),
                            torch.zeros(1, dtype=torch.float64)])
        x = sigmas[0] * latent
        errors.append(float((heun(x, sigmas) - reference_sample(gm, x, sigmas)).abs().max()))
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.6 < r < 2.6 for r in rates), (errors, rates)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gm = GaussianMixture.random((3, 8, 8), k=16, seed=0)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0])
    for dt in (torch.float32, torch.float64):
        out = gm(x.to("cuda", dt), sigma.cuda())
        assert out.device.type == "cuda" and out.dtype == dt
        torch.testing.assert_close(out.cpu().double(), gm(x.double(), sigma.double()), rtol=1e-5, atol=1e-5)
    y = gm.sample(5, generator=torch.Generator("cuda").manual_seed(0), device="cuda")
    assert y.device.type == "cuda" and y.shape == (5, 3, 8, 8)
    ref = solve_probability_flow(gm, x.cuda(), 10.0, 0.5)
    assert ref.device.type == "cuda"
    torch.testing.assert_close(ref.cpu(), solve_probability_flow(gm, x, 10.0, 0.5), rtol=1e-8, atol=1e-8)

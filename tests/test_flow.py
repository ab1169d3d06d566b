"""The flow scheme: flow-matching velocity models as EDM denoisers (edm.flow), and sampling from t = 1.

Oracles: the closed forms in flow time t, diffusers' FlowMatchEulerDiscreteScheduler (time shifts and its
Euler loop), and the exact Gaussian mixture, which is both an EDM denoiser and, through its exact velocity,
a flow model: wrapped by FlowDenoiser it must give the mixture's denoiser and the same samples.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from edm.flow import (
    FlowDenoiser,
    FlowScheme,
    dynamic_shift_sigmas,
    flow_sigma,
    flow_time,
    from_flow,
    shift_sigmas,
    to_flow,
)
from edm.gaussian_mixture import GaussianMixture
from edm.loss import PrecondLoss, SchemeLoss
from edm.precond import Precond, schemes
from edm.wrappers import ContinuousTimeDenoiser, DiscreteTimeDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
INF = math.inf
TIME_SCALE = 1000.0  # SD3 / Flux transformers take timestep = 1000 t


def mixture() -> GaussianMixture:
    """A 2-D mixture, wide enough that stochastic samplers reach it closely in a few dozen steps."""
    means = torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 1.5]], dtype=F64)
    stds, weights = torch.tensor([0.5, 0.7, 0.4], dtype=F64), torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    return GaussianMixture(means, stds, weights)


@pytest.fixture(scope="module")
def gm():
    return mixture()


@pytest.fixture(scope="module")
def flow(gm):
    return FlowDenoiser(gm.velocity_backbone(TIME_SCALE), time_scale=TIME_SCALE)


def latents(n, seed=0):
    return torch.randn((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------------------------
# The scheme in closed form


def test_coefficients_are_the_flow_formulas_in_t():
    scheme = schemes.get("flow", time_scale=TIME_SCALE)
    assert isinstance(scheme, FlowScheme)
    sigma = torch.logspace(-3, 3, 25, dtype=F64)
    t = sigma / (1 + sigma)
    # 1 - t cancels at large sigma (relative error up to 1e-13 at sigma = 1e3): the reference is the rough one
    torch.testing.assert_close(scheme.c_skip(sigma), 1 - t, rtol=1e-12, atol=0)
    torch.testing.assert_close(scheme.c_in(sigma), 1 - t, rtol=1e-12, atol=0)
    torch.testing.assert_close(scheme.c_out(sigma), -t, rtol=1e-14, atol=0)
    torch.testing.assert_close(scheme.c_noise(sigma), TIME_SCALE * t, rtol=1e-14, atol=0)
    torch.testing.assert_close(scheme.loss_weight(sigma), t**-2, rtol=1e-13, atol=0)
    assert scheme.at_infinity() == (1.0, -1.0, 1.0, TIME_SCALE)


def test_time_and_state_maps_round_trip():
    sigma = torch.tensor([0.0, 1e-3, 0.5, 1.0, 7.0, 1e3, INF], dtype=F64)
    t = flow_time(sigma)
    assert t[0] == 0 and t[-1] == 1 and t[3] == 0.5
    torch.testing.assert_close(flow_sigma(t), sigma, rtol=1e-13, atol=0)
    y, n = latents(7, 1), latents(7, 2)
    x_t = (1 - t[:, None]) * y + t[:, None] * n
    x = torch.where(sigma[:, None].isinf(), n, y + sigma[:, None] * n)  # u = n at sigma = inf
    torch.testing.assert_close(to_flow(x, sigma), x_t, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(from_flow(x_t, t), x, rtol=1e-12, atol=1e-15)


def test_target_is_the_velocity():
    scheme = FlowScheme()
    y, n = latents(6, 1), latents(6, 2)
    sigma = torch.logspace(-2, 2, 6, dtype=F64)[:, None]
    torch.testing.assert_close(scheme.target(y, y + sigma * n, sigma), n - y, rtol=1e-11, atol=1e-12)


def test_training_sigma_is_sd3_logit_normal():
    scheme = FlowScheme(P_mean=0.3, P_std=1.4)
    sigma = scheme.sample_sigma((500,), generator=torch.Generator().manual_seed(5), dtype=F64)
    logit_t = torch.randn(500, generator=torch.Generator().manual_seed(5), dtype=F64) * 1.4 + 0.3
    torch.testing.assert_close(flow_time(sigma), torch.sigmoid(logit_t), rtol=1e-13, atol=1e-15)


def test_edm_loss_is_the_plain_velocity_mse():
    def backbone(x_t, timestep):
        return torch.tanh(x_t) * (1 + timestep[:, None] / TIME_SCALE)

    net = FlowDenoiser(backbone, time_scale=TIME_SCALE)
    y = latents(64, 3)
    loss = SchemeLoss(net.scheme)(net, y, generator=torch.Generator().manual_seed(9))
    raw = PrecondLoss()(net, y, generator=torch.Generator().manual_seed(9))
    # the same draws by hand: sigma, then noise n * sigma (edm.loss.draw_noise)
    g = torch.Generator().manual_seed(9)
    sigma = net.scheme.sample_sigma((64,), generator=g, dtype=F64)[:, None]
    n = torch.randn(y.shape, generator=g, dtype=F64)
    t = sigma / (1 + sigma)
    mse = (backbone((1 - t) * y + t * n, TIME_SCALE * t[:, 0]) - (n - y)) ** 2
    torch.testing.assert_close(loss, mse, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(raw, mse, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Shifts against diffusers


def _scheduler(**config):
    import diffusers
    return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


T_GRID = torch.linspace(1.0, 0.02, 12, dtype=torch.float32).double()  # diffusers keeps float32


def _compare_in_sigma(scheduler_t, ours):
    """Scheduler's t (float32, with its final 0) against our shifted sigma, in EDM sigma and in t."""
    assert ours[0] == INF and scheduler_t[0] == 1
    torch.testing.assert_close(flow_time(ours), scheduler_t, rtol=0, atol=1e-6)  # float32 arithmetic
    # sigma = t / (1 - t) amplifies the float32 error of t by 1 / (1 - t) <= 50 here
    torch.testing.assert_close(ours[1:], flow_sigma(scheduler_t[1:]), rtol=1e-4, atol=0)


def test_shift_is_diffusers_time_shift():
    scheduler = _scheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=T_GRID.tolist())
    ours = shift_sigmas(flow_sigma(torch.cat([T_GRID, T_GRID.new_zeros(1)])), 3.0)
    assert ours[-1] == 0
    _compare_in_sigma(scheduler.sigmas.double(), ours)


def test_dynamic_shift_is_diffusers_dynamic_shifting():
    mu = 0.8
    scheduler = _scheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=T_GRID.tolist(), mu=mu)
    ours = dynamic_shift_sigmas(flow_sigma(torch.cat([T_GRID, T_GRID.new_zeros(1)])), mu)
    assert ours[-1] == 0
    _compare_in_sigma(scheduler.sigmas.double(), ours)


def test_flow_denoiser_range_is_diffusers_shifted_range():
    scheduler = _scheduler(shift=3.0)
    net = FlowDenoiser(lambda x, t: x, shift=3.0)
    assert net.shift == 3.0 and net.time_scale == TIME_SCALE
    assert net.sigma_min == pytest.approx(3.0 / 999) and net.sigma_max == pytest.approx(3.0 * 999)
    # diffusers' training range in t is [1/N, 1] shifted; ours stops one timestep short of t = 1
    assert float(net.sigma_to_t(net.sigma_min)) == pytest.approx(scheduler.sigma_min, rel=1e-6)
    assert float(net.sigma_to_t(net.sigma_max)) == pytest.approx(1 - 1 / (1 + 3.0 * 999))


# ----------------------------------------------------------------------------------------------
# The exact mixture as a flow model


def test_flow_wrapped_mixture_is_the_mixture_denoiser(gm, flow):
    x = latents(8, 1)
    for sigma in (0.002, 0.05, 0.7, 3.0, 80.0, 1e4):
        x_edm = x * (1 + sigma)
        torch.testing.assert_close(flow(x_edm, sigma), gm(x_edm, sigma), rtol=0, atol=1e-10)
    # at t = 1 both give the limit E[y] for any u
    torch.testing.assert_close(flow(x, INF), gm.mean.expand(8, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(gm(x, INF), gm.mean.expand(8, 2), rtol=0, atol=1e-12)


def test_mixture_velocity_ends(gm):
    x = latents(5, 4)
    torch.testing.assert_close(gm.velocity(x, 1.0), x - gm.mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(gm.velocity(x, 0.0), -x, rtol=0, atol=0)
    # between: v = (x_t - D(x_t / (1 - t); t / (1 - t))) / t
    t = 0.3
    expected = (x - gm(x / (1 - t), t / (1 - t))) / t
    torch.testing.assert_close(gm.velocity(x, t), expected, rtol=1e-13, atol=1e-14)


DETERMINISTIC = [name for name in samplers.list() if not samplers.get(name).stochastic]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_agree(gm, flow, name):
    sigmas = samplers.schedules.karras(12, 0.002, 80.0)
    x = latents(16) * 80.0
    expected = samplers.sample(gm, x, sigmas, name)
    torch.testing.assert_close(samplers.sample(flow, x, sigmas, name), expected, rtol=0, atol=1e-10)


# stochastic samplers (ancestral, SDE, restart, Langevin) and churn, each with its registered order
STOCHASTIC = [(name, {}) for name in samplers.list() if samplers.get(name).stochastic] + [
    ("euler", {"s_churn": 40.0}),
    ("heun", {"s_churn": 40.0}),
]
N_SAMPLES, N_STEPS = 1500, 32


@pytest.mark.parametrize(("name", "options"), STOCHASTIC,
                         ids=[f"{n}{'-churn' if o else ''}" for n, o in STOCHASTIC])
@pytest.mark.slow
def test_stochastic_samplers_agree_and_reach_the_mixture(gm, flow, name, options):
    """Same seeds, same samples; and their moments are the mixture's.

    Means: within 5 standard errors ``sqrt(var / n)``.  Variances: within 5 standard errors
    ``sqrt((m4 - var^2) / n)`` (about 4% relative at n = 1500) plus the samplers' discretization bias,
    which is O(1/steps): measured on this mixture at 24 and 48 steps it is below 6 / steps relative for
    first-order samplers (Euler-Maruyama-like: ancestral, DDPM, churn) and below 3.5 / steps for the
    others, so the allowance is 8 / steps and 4 / steps.  A wrong scaling between x_t and x (a factor
    1 + sigma) would put the variance off by far more.
    """
    sigmas = samplers.schedules.karras(N_STEPS, 0.002, 80.0)
    x = latents(N_SAMPLES) * 80.0
    seeds = range(N_SAMPLES)
    ours = samplers.sample(flow, x, sigmas, name, seeds=seeds, **options)
    torch.testing.assert_close(ours, samplers.sample(gm, x, sigmas, name, seeds=seeds, **options),
                               rtol=0, atol=1e-10)
    mean, var = ours.mean(0), ours.var(0)
    centered = ours - mean
    se_mean = (var / N_SAMPLES).sqrt()
    se_var = (((centered**4).mean(0) - var**2) / N_SAMPLES).sqrt()
    bias = (8.0 if samplers.get(name).order == 1 else 4.0) / N_STEPS
    assert ((mean - gm.mean).abs() <= 5 * se_mean).all(), (mean, gm.mean)
    assert ((var - gm.variance).abs() <= 5 * se_var + bias * gm.variance).all(), (var, gm.variance)


# ----------------------------------------------------------------------------------------------
# Starting at t = 1 (sigma = inf)


def test_infinite_start_is_diffusers_flow_match_euler(gm):
    shift, steps = 3.0, 10
    scheduler = _scheduler(shift=shift)
    scheduler.set_timesteps(steps)
    t = scheduler.sigmas.double()  # 1.0, ..., 0.0
    assert t[0] == 1 and t[-1] == 0
    net = FlowDenoiser(gm.velocity_backbone(TIME_SCALE), time_scale=TIME_SCALE, shift=shift)
    u = latents(16, 7)
    ours = samplers.sample(net, u, flow_sigma(t), "euler")  # sigma = 0 at the end: x = x_t
    # diffusers' loop, with the step x_t' = x_t + (t' - t) v(x_t, t) carried out in float64 on its schedule
    x_t = u.clone()
    for i in range(steps):
        x_t = x_t + (t[i + 1] - t[i]) * gm.velocity(x_t, t[i])
    torch.testing.assert_close(ours, x_t, rtol=0, atol=1e-10)
    # the scheduler's own step, which keeps its state in float32: equal to float32 accuracy
    x_t = u.float()
    for timestep in scheduler.timesteps:
        velocity = gm.velocity(x_t.double(), timestep.double() / TIME_SCALE)
        x_t = scheduler.step(velocity, timestep, x_t).prev_sample
    torch.testing.assert_close(ours, x_t.double(), rtol=0, atol=1e-5)


def test_infinite_start_step_callback_cond_and_seeds(gm):
    received = []

    def backbone(x_t, timestep, *, scale):
        received.append(scale)
        return scale * gm.velocity(x_t, timestep / TIME_SCALE)

    net = FlowDenoiser(backbone, time_scale=TIME_SCALE)
    sigmas = [INF, 20.0, 3.0, 0.5, 0.0]
    u = latents(3, 8)
    steps = []
    out = samplers.sample(net, u, sigmas, "euler", cond={"scale": 1.0},
                          callback=lambda info: steps.append((info["i"], info["sigma"])))
    assert [i for i, _ in steps] == [0, 1, 2, 3] and steps[0][1] == INF and steps[1][1] == 20.0
    assert received == [1.0] * 4  # one more evaluation than euler on sigmas[1:]
    first = gm.mean + 20.0 * u  # D(u; inf) + sigmas[1] u
    torch.testing.assert_close(out, samplers.sample(gm, first, sigmas[1:], "euler"), rtol=0, atol=1e-10)
    # per-seed noise: a sample does not depend on its batch
    batch = samplers.sample(net, u, sigmas, "euler_ancestral", seeds=[5, 6, 7], cond={"scale": 1.0})
    alone = samplers.sample(net, u[1:2], sigmas, "euler_ancestral", seeds=[6], cond={"scale": 1.0})
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
    # one step from infinity is the denoiser's limit
    torch.testing.assert_close(samplers.sample(net, u, torch.tensor([INF, 0.0], dtype=F64), "heun",
                                               cond={"scale": 1.0}), gm.mean.expand(3, 2), rtol=0, atol=1e-12)


def test_limits_at_infinity_are_limits():
    def backbone(x, t):
        return torch.sin(x) * (1 + t[:, None] / 1000)

    u, big = latents(4, 9), 1e9
    abar = torch.linspace(0.999, 0.01, 50, dtype=F64)
    for net in (FlowDenoiser(backbone), DiscreteTimeDenoiser(backbone, abar, "v"),
                DiscreteTimeDenoiser(backbone, abar, "x0"),
                ContinuousTimeDenoiser(backbone, "v", sigma_to_t=flow_time, sigma_data=0.5)):
        torch.testing.assert_close(net(u, INF), net(big * u, big), rtol=0, atol=1e-6)
    v_net = DiscreteTimeDenoiser(backbone, abar, "v")
    expected = -backbone(u, torch.full((4,), 49.0, dtype=F64))  # -F(u; T - 1): zero SNR at the table's end
    torch.testing.assert_close(v_net(u, INF), expected, rtol=0, atol=1e-15)


def test_schemes_without_a_limit_raise():
    def backbone(x, c_noise):
        return x

    u = latents(2)
    for net in (Precond(backbone, "edm"), Precond(backbone, "vp"), ContinuousTimeDenoiser(backbone, "eps"),
                ContinuousTimeDenoiser(backbone, "v")):  # v conditioned on sigma itself: inf time
        with pytest.raises(ValueError, match="no finite limit at sigma = inf"):
            net(u, INF)
        with pytest.raises(ValueError, match="no finite limit at sigma = inf"):
            samplers.sample(net, u, [INF, 1.0, 0.0], "euler")


def test_finite_sigmas_are_untouched_by_the_infinite_path(flow):
    x = latents(3, 2)
    mixed = flow(x, torch.tensor([0.5, INF, 2.0], dtype=F64))
    finite = flow(x[[0, 2]], torch.tensor([0.5, 2.0], dtype=F64))
    torch.testing.assert_close(mixed[[0, 2]], finite, rtol=0, atol=0)

"""``consistency``, ``lcm`` and ``tcd`` (``samplers.distilled``) against diffusers' schedulers, closed forms
and each other.

The oracle is diffusers' own loop (``set_timesteps``, then ``step`` per timestep with one generator) on a
toy network: an elementwise nonlinear function of its input and time. Our side is ``samplers.sample`` with
the scheduler's levels in sigma form (VP ``sqrt((1 - abar) / abar)`` of its table; the consistency model's
Karras sigmas) and a ``noise`` callable replaying the same generator, on the toy network as a denoiser
``D(x; sigma)`` that includes the output scalings diffusers applies (CM's and LCM's boundary conditions).
"""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

import samplers
from _support import assert_usage_error, invoke
from samplers.distilled import CONSISTENCY_EPS, tcd_level
from tools.generate.cli import generate

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, SEED = (2, 2, 4, 4), 5
STEPS = (1, 2, 4)
CM = dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, s_noise=1.0, rho=7.0,
          clip_denoised=False)


@pytest.fixture(autouse=True)
def quiet_diffusers():
    diffusers.utils.logging.set_verbosity_error()


def network(x, t):
    """The toy 'UNet': elementwise and nonlinear in x, and in its time input t (any real)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh(x) * (0.8 + 0.3 * torch.sin(t / 300)) + 0.1 * x * torch.cos(t / 170)


def latent() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def replay(shape):
    """Our noise source: the draws diffusers' steps make from ``torch.Generator().manual_seed(SEED)``, in
    the same order (diffusers draws the whole batch at once from one generator)."""
    generator = torch.Generator().manual_seed(SEED)
    return lambda sigma, sigma_next: torch.randn(shape, generator=generator, dtype=torch.float32)


def diffusers_loop(scheduler, x, model, **step_kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


def assert_equal_to_float32(ours, reference):
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5 * max(1.0, reference.abs().max().item()), error


# --- consistency models: CMStochasticIterativeScheduler ------------------------------------------------


def cm_denoiser(x, sigma):
    """A consistency model as diffusers' CM pipeline runs it: the network on ``x / sqrt(sigma^2 + sd^2)``
    at ``t = 250 log sigma``, then the boundary-condition scalings with epsilon = sigma_min."""
    sd, eps = CM["sigma_data"], CM["sigma_min"]
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    out = network(x / (s**2 + sd**2).sqrt(), 250 * torch.log(sigma.double()))
    c_skip = sd**2 / ((s - eps) ** 2 + sd**2)
    c_out = (s - eps) * sd / (s**2 + sd**2).sqrt()
    return c_skip * x + c_out * out


@pytest.mark.parametrize("steps", STEPS)
def test_consistency_equals_diffusers_cm_stochastic_iterative(steps):
    scheduler = diffusers.CMStochasticIterativeScheduler(**CM)
    scheduler.set_timesteps(steps)
    # diffusers' last level is sigma_min, reached with no noise (sqrt(eps^2 - eps^2)): ours ends in 0
    sigmas = scheduler.sigmas[:-1].tolist() + [0.0]
    assert scheduler.sigmas[-1].item() == pytest.approx(CM["sigma_min"]) and len(sigmas) == steps + 1
    x = latent()

    def unet(scaled, t):
        return network(scaled, t)

    reference = diffusers_loop(scheduler, x * scheduler.init_noise_sigma, unet)
    ours = samplers.sample(cm_denoiser, x * sigmas[0], sigmas, "consistency", noise=replay(SHAPE),
                           eps=CM["sigma_min"])
    assert_equal_to_float32(ours, reference)


# --- LCM and TCD: VP schedulers on a discrete table -----------------------------------------------------


class VPToy:
    """The toy network as a discrete-time eps model in sigma form, on a scheduler's ``alphas_cumprod``:
    ``D(x; sigma)`` at the timestep whose level is sigma (``x_t = sqrt(abar_t) x``), with LCM's boundary
    scalings on the VP sample when ``timestep_scaling`` is given (as LCMScheduler.step applies them).
    Exposes the ascending table ``sigmas`` (index = timestep) as discrete models do."""

    def __init__(self, alphas_cumprod, timestep_scaling=None):
        self.abar = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
        self.timestep_scaling = timestep_scaling

    def timestep(self, sigma):
        return (self.sigmas.log()[None] - sigma.double().log()[:, None]).abs().argmin(dim=1)

    def __call__(self, x, sigma):
        t = self.timestep(sigma)
        abar = self.abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        x_t = abar.sqrt() * x
        x0 = (x_t - (1 - abar).sqrt() * network(x_t, t)) / abar.sqrt()
        if self.timestep_scaling is None:
            return x0
        scaled = (t * self.timestep_scaling).reshape(abar.shape).to(x.dtype)
        c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25).sqrt()
        return c_out * x0 + c_skip * x_t


def table_sigmas(model: VPToy, timesteps, last: float) -> list[float]:
    return [model.sigmas[int(t)].item() for t in timesteps] + [last]


@pytest.mark.parametrize("steps", STEPS)
def test_lcm_equals_diffusers_lcm_scheduler(steps):
    scheduler = diffusers.LCMScheduler()
    scheduler.set_timesteps(steps)
    model = VPToy(scheduler.alphas_cumprod, scheduler.config.timestep_scaling)
    sigmas = table_sigmas(model, scheduler.timesteps, 0.0)  # its last step returns the clean estimate
    x = latent()
    reference = diffusers_loop(scheduler, x * scheduler.init_noise_sigma, network)
    start = x / scheduler.alphas_cumprod[scheduler.timesteps[0]].sqrt()
    ours = samplers.sample(model, start, sigmas, "lcm", noise=replay(SHAPE))
    assert_equal_to_float32(ours, reference)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("steps", STEPS)
def test_tcd_equals_diffusers_tcd_scheduler(steps, gamma):
    scheduler = diffusers.TCDScheduler()
    scheduler.set_timesteps(steps)
    model = VPToy(scheduler.alphas_cumprod)
    # its last step lands on timestep 0 (abar_0 < 1) and returns that VP sample
    abar0 = scheduler.alphas_cumprod[0]
    sigmas = table_sigmas(model, scheduler.timesteps, model.sigmas[0].item())
    x = latent()
    reference = diffusers_loop(scheduler, x * scheduler.init_noise_sigma, network, eta=gamma)
    start = x / scheduler.alphas_cumprod[scheduler.timesteps[0]].sqrt()
    ours = samplers.sample(model, start, sigmas, "tcd", noise=replay(SHAPE), gamma=gamma) * abar0.sqrt()
    assert_equal_to_float32(ours, reference)


def test_tcd_level_on_the_table_is_the_paper_s_floor_rule():
    table = [0.1 * (i + 1) for i in range(1000)]  # entry t is level 0.1 (t + 1)
    assert tcd_level(table[759], 0.3, table) == table[math.floor(0.7 * 759)] == table[531]
    assert tcd_level(table[759], 1.0, table) == table[0]
    assert tcd_level(table[759], 0.0, table) == table[759]
    between = (table[10] * table[11]) ** 0.5  # timestep 10.5 in log sigma: floor(0.5 * 10.5) = 5
    assert tcd_level(between, 0.5, table) == table[5] and tcd_level(between, 0.0, table) == between
    # continuous models, and below the table: (1 - gamma) sigma'
    assert tcd_level(2.0, 0.25) == 1.5 and tcd_level(0.05, 0.5, table) == 0.025 and tcd_level(0.0, 0.3) == 0


# --- closed forms and relations -------------------------------------------------------------------------

KARRAS = samplers.schedules.get("karras")


def smooth(x, sigma):
    """A continuous-time toy denoiser (no table)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x / (1 + s**2).sqrt()) * 0.9


@pytest.mark.parametrize("name", ["consistency", "lcm"])
@pytest.mark.parametrize("steps", [1, 3])
def test_an_exact_clean_prediction_is_returned(name, steps):
    """A model that knows the data point (D = y at every level): the sample is y, in one step or several."""
    y = torch.linspace(-1, 1, 2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    x = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    out = samplers.sample(lambda x, sigma: y.clone(), x, KARRAS(steps, 0.002, 80.0), name, seeds=[3, 4])
    assert torch.equal(out, y)


def test_consistency_renoises_to_each_level_from_eps():
    """One step between two levels: ``x' = D + s_noise sqrt(sigma'^2 - eps^2) z``, z the seed's draw."""
    y = torch.full((1, 4), 0.25, dtype=torch.float64)
    sigmas = [10.0, 1.0, 0.0]
    seen = []

    def recorder(x, sigma):
        seen.append(x.clone())
        return y

    z = torch.randn((1, 4), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    samplers.sample(recorder, torch.zeros(1, 4, dtype=torch.float64), sigmas, "consistency",
                    noise=lambda s, sn: z, eps=0.5, s_noise=2.0)
    torch.testing.assert_close(seen[1], y + 2.0 * math.sqrt(1.0 - 0.25) * z, rtol=0, atol=1e-15)


def run(name, model, seeds, sigmas, **options):
    x = samplers.noise.latents(seeds, SHAPE[1:], dtype=torch.float64) * sigmas[0]
    return samplers.sample(model, x, sigmas, name, seeds=seeds, **options)


def test_tcd_with_gamma_1_is_lcm():
    sigmas = KARRAS(5, 0.01, 20.0)
    assert torch.equal(run("tcd", smooth, [0, 1], sigmas, gamma=1.0), run("lcm", smooth, [0, 1], sigmas))


@pytest.mark.parametrize("table", [False, True])
def test_tcd_with_gamma_0_is_deterministic_ddim(table):
    model = smooth
    if table:
        model = VPToy(diffusers.TCDScheduler().alphas_cumprod)
    sigmas = KARRAS(6, 0.03, 14.0)
    x = samplers.noise.latents([0, 1], SHAPE[1:], dtype=torch.float64) * sigmas[0]
    ours = samplers.sample(model, x, sigmas, "tcd", seeds=[0, 1], gamma=0.0)
    assert torch.equal(ours, samplers.sample(model, x, sigmas, "ddim", eta=0.0))
    assert torch.equal(ours, samplers.sample(model, x, sigmas, "tcd", seeds=[5, 6], gamma=0.0))  # no noise


CASES = [("consistency", {}, smooth), ("lcm", {}, smooth), ("tcd", {}, smooth), ("tcd", {"gamma": 0.7}, "vp")]


@pytest.mark.parametrize(("name", "options", "model"), CASES, ids=["consistency", "lcm", "tcd", "tcd-table"])
def test_a_seed_gives_the_same_sample_whatever_the_batch(name, options, model):
    if model == "vp":
        model = VPToy(diffusers.TCDScheduler().alphas_cumprod)
    sigmas = KARRAS(6, 0.03, 14.0)
    seeds = [3, 0, 7]
    together = run(name, model, seeds, sigmas, **options)
    for i, seed in enumerate(seeds):
        assert torch.equal(run(name, model, [seed], sigmas, **options)[0], together[i]), seed
    assert torch.equal(run(name, model, seeds[::-1], sigmas, **options), together.flip(0))
    assert not torch.equal(run(name, model, [4, 0, 7], sigmas, **options)[0], together[0])  # noise is used


def test_registry_entries():
    for name in ("consistency", "lcm", "tcd"):
        spec = samplers.get(name)
        assert (spec.order, spec.nfe_per_step, spec.last_step_nfe, spec.stochastic, spec.noise) == (
            1, 1, 1, True, "iid")
        assert spec.reference and spec.description
    assert dict(samplers.get("consistency").options) == {"eps": CONSISTENCY_EPS, "s_noise": 1.0}
    assert dict(samplers.get("lcm").options) == {}
    assert dict(samplers.get("tcd").options) == {"gamma": 0.3}


@pytest.mark.parametrize(("name", "options", "message"), [
    ("tcd", {"gamma": -0.1}, "tcd gamma must be a number in [0, 1], got -0.1"),
    ("tcd", {"gamma": 1.5}, "tcd gamma must be a number in [0, 1], got 1.5"),
    ("tcd", {"gamma": math.nan}, "tcd gamma must be a number in [0, 1], got nan"),
    ("tcd", {"gamma": "a"}, "tcd gamma must be a number in [0, 1], got 'a'"),
    ("consistency", {"eps": -1.0}, "consistency eps must be a finite number >= 0, got -1"),
    ("consistency", {"eps": math.inf}, "consistency eps must be a finite number >= 0, got inf"),
    ("consistency", {"s_noise": -1.0}, "s_noise must be a non-negative number, got -1"),
])
def test_bad_options_are_one_line_value_errors(name, options, message):
    with pytest.raises(ValueError) as info:
        run(name, smooth, [0], KARRAS(3, 0.03, 14.0), **options)
    assert str(info.value) == message


def test_tcd_level_keeps_a_table_level_that_went_through_float32():
    """A level rounded just below its entry is still timestep t: floor(0.5 t) is t / 2, not t / 2 - 1."""
    table = diffusers.TCDScheduler().alphas_cumprod.double()
    table = ((1 - table) / table).sqrt().tolist()
    t = next(t for t in range(500, 1000, 2) if float(torch.tensor(table[t], dtype=torch.float32)) < table[t])
    rounded = float(torch.tensor(table[t], dtype=torch.float32))
    assert tcd_level(rounded, 0.5, table) == table[t // 2]


@pytest.mark.usefixtures("offline")
def test_edm_generate_refuses_a_bad_gamma_in_one_line(tmp_path):
    result = invoke(generate, "--no-progress", "--device", "cpu", "--sampler", "tcd", "--gamma", 2,
                    "--steps", 4, "--seeds", "0-1", "--outdir", tmp_path / "out")
    assert_usage_error(result, "tcd --gamma must be a number in [0, 1], got 2")
    assert not any(tmp_path.iterdir())

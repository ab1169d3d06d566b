"""``tools.schedules.diffusers``: our samplers on a diffusers scheduler's own timesteps reproduce that
scheduler's loop, start noise and output included.

The oracle is diffusers' loop as its pipelines run it: ``x = randn(seed) * scheduler.init_noise_sigma``,
then ``model(scheduler.scale_model_input(x, t), t)`` and ``scheduler.step`` for each ``t`` in
``scheduler.timesteps``. Ours: ``samplers.sample(denoiser, plan.start_scale * latent, plan.sigmas, sampler,
**plan.options) * plan.end_scale``. VP models are a random-weight ``UNet2DModel`` saved with
``save_pretrained`` and loaded with ``load_model('diffusers:DIR')``; flow models an exact velocity (a
Gaussian's), since a flow model's velocity is all the schedulers see.
"""

from __future__ import annotations

import inspect
import math

import diffusers
import pipelines_tiny
import pytest
import torch

import samplers
from edm import DiscreteTimeDenoiser
from tools.models import load_model
from tools.models.diffusers import DiffusersBackbone
from tools.schedules.diffusers import (
    _ALGORITHM,
    COUNTERPARTS,
    FLOW_COUNTERPARTS,
    DiffusersPlan,
    diffusers_plan,
)

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

SIZE, CHANNELS, SEEDS = 8, 2, (0, 1)
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
            set_alpha_to_one=False, clip_sample=False, num_train_timesteps=1000)
CONFIGS = {
    "sd15": SD15,  # no timestep_spacing: each class's default (DDIM leading, the others linspace)
    "leading": {**SD15, "timestep_spacing": "leading"},
    "trailing": {**SD15, "timestep_spacing": "trailing"},
    "linspace": {**SD15, "timestep_spacing": "linspace"},
    "v": {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "zero_snr": {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                 "rescale_betas_zero_snr": True},
    "karras": {**SD15, "use_karras_sigmas": True},
}
#: (config, sampler, steps) that diffusers_plan refuses, and a word of why
REFUSED = {
    ("linspace", "ddim"): "not its next timestep",  # DDIM steps t -> t - T // n, not to its next timestep
    ("trailing", "ddim", 7): "not its next timestep",
    ("v", "ddim", 7): "not its next timestep",
    ("zero_snr", "ddim", 7): "not its next timestep",
    ("linspace", "dpm_2", 7): "fractional timesteps",  # steps linear in sigma, midpoints in log sigma
    ("linspace", "dpm_2_ancestral", 7): "fractional timesteps",
    ("sd15", "dpm_2", 7): "fractional timesteps",
    ("sd15", "dpm_2_ancestral", 7): "fractional timesteps",
    ("zero_snr", "heun"): "other noise levels",  # these classes do not take rescale_betas_zero_snr
    ("zero_snr", "lms"): "other noise levels",
    ("zero_snr", "dpm_2"): "other noise levels",
    ("zero_snr", "dpm_2_ancestral"): "other noise levels",
    ("zero_snr", "lcm"): "starting at zero SNR",  # LCM's loop starts at the first timestep's sigma: inf
    ("karras", "dpm_2"): "not its noise levels",  # Karras sigmas, timesteps rounded
    ("karras", "dpm_2_ancestral"): "not its noise levels",
    ("karras", "dpmpp_2m"): "rounds its timesteps",
    ("karras", "dpmpp_2m_sde"): "rounds its timesteps",
    ("karras", "unipc"): "rounds its timesteps",
}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}


@pytest.fixture(autouse=True)
def quiet_diffusers():
    diffusers.utils.logging.set_verbosity_error()


def random_unet() -> diffusers.UNet2DModel:
    return pipelines_tiny.random_unet2d(SIZE, CHANNELS)


@pytest.fixture(scope="module")
def unet():
    return random_unet()


def save(tmp_path, unet, scheduler):
    pipelines_tiny.save_unet_pipeline(tmp_path, scheduler, unet=unet)


def latents(dtype) -> torch.Tensor:
    """The pipelines' unit draws, one generator per seed."""
    return torch.stack([torch.randn(CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
                        for seed in SEEDS]).to(dtype)


def counterpart(config: dict, sampler: str, steps: int, flow=False, mu=None):
    name = (FLOW_COUNTERPARTS if flow else COUNTERPARTS)[sampler]
    settings = dict(_ALGORITHM.get(sampler, {}))
    if flow and not name.startswith("FlowMatch"):
        settings.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=config["shift"])
    scheduler = getattr(diffusers, name).from_config({**config, **settings})
    scheduler.set_timesteps(steps, **({"mu": mu} if mu is not None else {}))
    return scheduler


def diffusers_loop(model, scheduler, latent, time_of=None) -> torch.Tensor:
    """diffusers' pipeline loop; stochastic steps draw from one generator (``noise_source`` replays it)."""
    generator = torch.Generator().manual_seed(5)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = latent * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch pipelines take the latent as is
    with torch.no_grad():
        for t in scheduler.timesteps:
            time = t if time_of is None else time_of(scheduler, t)
            scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            out = model(scaled, time)
            kwargs = {"generator": generator} if takes_generator else {}
            x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def noise_source(shape, dtype):
    generator = torch.Generator().manual_seed(5)
    return lambda sigma, sigma_next: torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


def ours(denoiser, plan: DiffusersPlan, sampler: str, latent: torch.Tensor) -> torch.Tensor:
    x = latent if math.isinf(plan.sigmas[0]) else latent * plan.start_scale
    out = samplers.sample(denoiser, x, plan.sigmas, sampler, noise=noise_source(latent.shape, latent.dtype),
                          **plan.options)
    return out * plan.end_scale


def refused(config_name, sampler, steps):
    return REFUSED.get((config_name, sampler, steps)) or REFUSED.get((config_name, sampler))


# --- VP models: every counterpart, several configs and step counts, float32 ----------------------------


@pytest.mark.parametrize("steps", [4, 7])
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.slow
def test_counterparts_reproduce_diffusers_loops(tmp_path, unet, config_name, steps):
    config = {**CONFIGS[config_name], "_class_name": "DDPMScheduler"}
    save(tmp_path, unet, diffusers.DDPMScheduler.from_config(config))
    model = load_model(f"diffusers:{tmp_path}")
    assert model.info["interpolation"] == "linear"
    latent = latents(torch.float32)
    errors = {}
    for sampler in COUNTERPARTS:
        why = refused(config_name, sampler, steps)
        if why:
            with pytest.raises(ValueError, match=why):
                diffusers_plan(config, sampler, steps)
            continue
        plan = diffusers_plan(config, sampler, steps)
        assert plan.scheduler == COUNTERPARTS[sampler] and plan.sigmas.dtype == torch.float64
        assert len(plan.sigmas) == steps + 1 and len(plan.timesteps) == steps
        scheduler = counterpart(config, sampler, steps)
        reference = diffusers_loop(lambda x, t: unet(x, t).sample, scheduler, latent)
        denoiser = model.denoiser
        if plan.interpolation != "linear":  # Karras sigmas: diffusers' times interpolate log sigma
            denoiser = DiscreteTimeDenoiser(DiffusersBackbone(unet), scheduler.alphas_cumprod.double(),
                                            PREDICTIONS[config.get("prediction_type", "epsilon")],
                                            interpolation=plan.interpolation)
        error = (ours(denoiser, plan, sampler, latent) - reference).abs().max().item()
        errors[sampler] = error / max(1.0, reference.abs().max().item())
    # relative to the output's magnitude: a random eps network at SD's sigma_max (14.6) ends at |x| ~ 50,
    # where float32 round-off alone (which differs with the thread count) reaches 1.5e-4 in absolute terms.
    # Zero SNR: the sigma-space schedulers start at sigma = 4096 (alphas_cumprod 2**-24), where the float32
    # state x = 4096 latent carries 2.4e-4 of round-off into both loops' first step.
    tolerance = 1e-4 if config_name == "zero_snr" else 1e-5
    assert errors and max(errors.values()) <= tolerance, errors


def test_conventions_of_the_plans():
    """Start and end of each kind of state (see the module docstring of diffusers_schedule)."""
    sd = {**SD15, "timestep_spacing": "leading"}
    euler = diffusers_plan(sd, "euler", 10)  # sigma space, leading: init_noise_sigma = sqrt(sigma^2 + 1)
    assert euler.start_scale == pytest.approx(math.sqrt(1 + euler.sigmas[0].item() ** 2), rel=1e-12)
    assert euler.sigmas[-1] == 0 and euler.end_scale == 1
    trailing = diffusers_plan({**SD15, "timestep_spacing": "trailing"}, "euler", 10)
    assert trailing.start_scale == trailing.sigmas[0].item()  # linspace / trailing: sigma_max
    ddim = diffusers_plan(sd, "ddim", 10)  # VP, set_alpha_to_one=False: ends at abar[0], VP-scaled output
    abar0 = diffusers.DDIMScheduler.from_config(sd).alphas_cumprod[0].double()
    assert ddim.sigmas[-1].item() == pytest.approx(((1 - abar0) / abar0).sqrt().item(), rel=1e-12)
    assert ddim.end_scale == pytest.approx(abar0.sqrt().item(), rel=1e-12)
    assert ddim.start_scale == pytest.approx(math.sqrt(1 + ddim.sigmas[0].item() ** 2), rel=1e-12)
    assert ddim.timesteps.tolist() == list(range(901, 0, -100))
    one = diffusers_plan({**sd, "set_alpha_to_one": True}, "ddim", 10)
    assert one.sigmas[-1] == 0 and one.end_scale == 1
    unipc = diffusers_plan(sd, "unipc", 10)
    assert unipc.options == {"order": 2, "variant": "bh2", "lower_order_final": True}


# --- float64 -------------------------------------------------------------------------------------------


def _float64_scheduler(scheduler, plan):
    """diffusers' tables in float64: DDIM's alphas_cumprod; the others' sigmas are the plan's."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    if hasattr(scheduler, "sigmas") and plan.scheduler != "DDIMScheduler":
        scheduler.sigmas = plan.sigmas.clone()
    return scheduler


@pytest.mark.parametrize(("sampler", "tolerance"), [
    # DDIM and UniPC keep the state in its dtype: the float64 loops agree to round-off.
    ("ddim", 1e-8), ("unipc", 1e-8),
    # EulerDiscreteScheduler.step and DPMSolverMultistepScheduler.step cast the sample to float32 in every
    # step (``sample.to(torch.float32)``), so their float64 loop carries float32 round-off: ~1e-7 relative.
    ("euler", 2e-6), ("dpmpp_2m", 2e-6),
])
def test_float64(tmp_path, unet, sampler, tolerance):
    config = {**SD15, "timestep_spacing": "trailing", "_class_name": "DDPMScheduler"}
    save(tmp_path, unet, diffusers.DDPMScheduler.from_config(config))
    model = load_model(f"diffusers:{tmp_path}", dtype=torch.float64)
    net = random_unet().double()
    plan = diffusers_plan(config, sampler, 5)
    scheduler = _float64_scheduler(counterpart(config, sampler, 5), plan)
    latent = latents(torch.float64)
    reference = diffusers_loop(lambda x, t: net(x, t).sample, scheduler, latent)
    assert reference.dtype == torch.float64
    error = (ours(model.denoiser, plan, sampler, latent) - reference).abs().max().item()
    assert error <= tolerance * reference.abs().max().item(), error


# --- flow models ---------------------------------------------------------------------------------------

MEAN, STD = 0.3, 0.5  # data ~ N(MEAN, STD^2) in every coordinate


def velocity(x_t: torch.Tensor, t) -> torch.Tensor:
    """The exact flow velocity ``E[n - y | x_t]`` of Gaussian data, ``x_t = (1 - t) y + t n``."""
    t = torch.as_tensor(t, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    a = 1 - t
    mean_y = MEAN + a * STD**2 / (a**2 * STD**2 + t**2) * (x_t - a * MEAN)
    return (x_t - mean_y) / t


class VelocityBackbone(torch.nn.Module):
    def forward(self, x_t, timestep):
        return velocity(x_t, timestep / 1000)


def flow_denoiser():
    from edm.flow import FlowDenoiser

    return FlowDenoiser(VelocityBackbone(), time_scale=1000.0, validate_sigma=False)


FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLOW_DYNAMIC = {**FLOW, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}


def _scheduler_time(scheduler, t):
    """The scheduler's own t: DPM-Solver / UniPC with flow sigmas pass int64 timesteps (floor(1000 t)) to
    the model, a shift of up to 1/1000 in its time that our samplers (which take the time from sigma) do
    not make; the exact velocity is given the scheduler's t instead."""
    index = scheduler.step_index if scheduler.step_index is not None else 0
    return scheduler.sigmas[index] * 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("config", "mu"), [(FLOW, None), (FLOW_DYNAMIC, 0.8)])
@pytest.mark.parametrize("sampler", list(FLOW_COUNTERPARTS))
@pytest.mark.parametrize("steps", [3, 8])
def test_flow_counterparts(config, mu, sampler, steps, dtype):
    plan = diffusers_plan(config, sampler, steps, flow=True, mu=mu)
    scheduler = counterpart(config, sampler, steps, flow=True, mu=mu)
    if dtype == torch.float64:
        scheduler.sigmas = scheduler.sigmas.double()
    latent = latents(dtype)
    time_of = None if plan.scheduler.startswith("FlowMatch") else _scheduler_time
    reference = diffusers_loop(lambda x, t: velocity(x, t / 1000), scheduler, latent, time_of)
    if sampler == "euler":
        assert math.isinf(plan.sigmas[0]) and plan.start_scale == 1.0  # diffusers starts at t = 1
    error = (ours(flow_denoiser(), plan, sampler, latent) - reference).abs().max().item()
    # float64: the flow schedulers' steps cast the sample to float32 (FlowMatchEuler, DPM-Solver), and their
    # sigmas are float32 values: ~1e-7 relative
    assert error <= (1e-4 if dtype == torch.float32 else 2e-6), error


def test_flow_plan_conventions():
    plan = diffusers_plan(FLOW, "euler", 4, flow=True)
    t = counterpart(FLOW, "euler", 4, flow=True).sigmas.double()
    assert plan.scheduler == "FlowMatchEulerDiscreteScheduler" and t[0] == 1
    assert math.isinf(plan.sigmas[0]) and plan.sigmas[-1] == 0 and plan.end_scale == 1.0
    torch.testing.assert_close(plan.sigmas[1:-1], t[1:-1] / (1 - t[1:-1]), rtol=1e-12, atol=0)
    torch.testing.assert_close(plan.timesteps, t[:-1].float() * 1000)
    dpm = diffusers_plan(FLOW, "dpmpp_2m", 4, flow=True)  # starts below t = 1: x = latent / (1 - t_0)
    t0 = dpm.sigmas[0].item() / (1 + dpm.sigmas[0].item())
    assert dpm.start_scale == pytest.approx(1 / (1 - t0), rel=1e-12) and t0 < 1
    with pytest.raises(ValueError, match="give mu"):
        diffusers_plan(FLOW_DYNAMIC, "euler", 4, flow=True)
    with pytest.raises(ValueError, match="flow=True"):
        diffusers_plan(FLOW, "euler", 4)


# --- refusals --------------------------------------------------------------------------------------------


def test_unknown_sampler_names_the_ones_with_counterparts():
    with pytest.raises(ValueError, match="samplers with one: ddim, dpm_2, .*unipc") as error:
        diffusers_plan(SD15, "ipndm", 10)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="for flow models; samplers with one: dpmpp_2m, euler, unipc"):
        diffusers_plan(FLOW, "heun", 10, flow=True)
    with pytest.raises(ValueError, match="steps"):
        diffusers_plan(SD15, "euler", 0)


@pytest.mark.slow
def test_refusals_are_one_line():
    for (name, sampler, *steps), _ in REFUSED.items():
        with pytest.raises(ValueError) as error:
            diffusers_plan(CONFIGS[name], sampler, steps[0] if steps else 7)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="zero SNR"):
        diffusers_plan({**CONFIGS["zero_snr"], "prediction_type": "epsilon"}, "ddim", 10)


# --- the loader ------------------------------------------------------------------------------------------


def test_loader_reports_honoured_and_ignored_settings(tmp_path, unet):
    config = {**SD15, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
              "prediction_type": "v_prediction", "timestep_type": "continuous"}
    save(tmp_path, unet, diffusers.EulerDiscreteScheduler.from_config(config))
    model = load_model(f"diffusers:{tmp_path}")
    honoured = model.info["honoured"]
    keys = ("prediction_type", "beta_schedule", "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")
    for key in keys:
        assert key in honoured, key
    assert model.info["interpolation"] == "linear"
    assert model.sigma_max == pytest.approx(math.sqrt((1 - 2.0**-24) / 2.0**-24))  # zero SNR stored as 2**-24
    assert model.ignored == [
        "timestep_type='continuous' (the network is conditioned on 0.25 log sigma, not on DDPM timesteps)"]

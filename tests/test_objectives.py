"""Training objectives (``edm.objectives``, ``edm train --objective``).

Oracles: the closed forms of each objective computed here with numpy or by hand (Ho et al.'s linear betas
and simple loss, the cosine logSNR schedule's quantiles, Kingma & Gao's sigmoid weighting, the v-loss),
diffusers' ``DDPMScheduler`` table and its ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` loops run on
the raw eps-network of a DDPM-trained digits model, and a fine-step ODE solution for the other samplers.
"""

from __future__ import annotations

import json
import math
import shlex

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import samplers
from _support import assert_usage_error, invoke
from edm import DiscreteTimeDenoiser, EDMLoss, Precond
from edm.checkpoint import load_checkpoint
from edm.objectives import (
    CosineLogSNRScheme,
    SigmoidWeightedScheme,
    denoiser_from_config,
    objectives,
    sigmoid_weight,
)
from edm.precond import EDMScheme
from edm.train import load_training_state, train
from tools.models import load_model
from tools.train_cli import OBJECTIVE_FLAGS
from tools.train_cli import train as train_command

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
        "label_dropout": 0.1}
SD = 0.75


def _train(outdir, steps, objective="edm", **kwargs):
    options = {"batch": 16, "lr": 2e-3, "warmup": 2, "ema_halflife_kimg": 0.05, "seed": 3,
               "network_kwargs": TINY, "progress": False, "sigma_data": SD}
    options.update(kwargs)
    return train("digits", outdir, steps=steps, objective=objective, **options)


def _images(batch=6, seed=0) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def backbone(x, t, **cond):
    """A fixed nonlinear stand-in for a network ``F(x_in, t)``."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return torch.tanh(1.3 * x + 0.1 * torch.sin(t) + 0.2)


def column(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


# --- the registry, the flags ---------------------------------------------------------------------------


def test_registry_and_cli_agree():
    # edm train offers every objective but the distillation ones, which need a teacher (edm distill's)
    assert sorted(OBJECTIVE_FLAGS) == ["ddpm", "edm", "sigmoid", "v-cosine"]
    assert objectives.list() == sorted([*OBJECTIVE_FLAGS, "consistency", "progressive"])
    with pytest.raises(ValueError, match="unknown objective 'x'; valid objectives: consistency, ddpm, edm"):
        objectives.get("x")
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        objectives.get("ddpm", beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        objectives.get("v-cosine", sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="objective 'ddpm'.*unexpected keyword"):
        objectives.get("ddpm", P_mean=0.0)


# --- sigma distributions and weights against closed forms ----------------------------------------------


def test_ddpm_table_is_linear_betas():
    T, b0, b1 = 1000, 1e-4, 0.02
    abar = np.cumprod(1 - np.linspace(b0, b1, T))
    sigmas = np.sqrt((1 - abar) / abar)
    scheme = objectives.get("ddpm").scheme
    np.testing.assert_allclose(scheme.sigmas.numpy(), sigmas, rtol=1e-12)
    assert scheme.sigma_min == pytest.approx(sigmas[0], rel=1e-12)
    assert scheme.sigma_max == pytest.approx(sigmas[-1], rel=1e-12)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=b0, beta_end=b1).alphas_cumprod
    np.testing.assert_allclose(theirs.double().numpy(), abar, rtol=1e-5)  # diffusers' table is float32
    # other options
    short = objectives.get("ddpm", timesteps=50, beta_start=1e-3, beta_end=0.05).scheme
    abar = np.cumprod(1 - np.linspace(1e-3, 0.05, 50))
    np.testing.assert_allclose(short.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-12)


def test_ddpm_draws_uniform_timesteps():
    scheme = objectives.get("ddpm", timesteps=20).scheme
    sigma = scheme.sample_sigma((40000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.searchsorted(scheme.sigmas, sigma)
    assert torch.equal(scheme.sigmas[t], sigma)  # every draw is a table entry
    counts = torch.bincount(t, minlength=20).numpy()
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 45, counts  # 19 degrees of freedom: P(chi2 > 45) ~ 7e-4
    # the backbone sees the timestep itself, an integer, as in training
    assert torch.equal(scheme.c_noise(sigma.float()), t.float())


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_cosine_logsnr_quantiles(shift):
    scheme = CosineLogSNRScheme(sigma_data=SD, sigma_min=0.01, sigma_max=50.0, shift=shift)
    sigma = scheme.sample_sigma((200000,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logsnr = -2 * np.log(sigma.numpy())
    # closed form: t = (2/pi) atan(exp(-(lambda - shift) / 2)) uniform on [t(lambda_max), t(lambda_min)]
    t_of = lambda lam: 2 / math.pi * math.atan(math.exp(-(lam - shift) / 2))  # noqa: E731
    t_lo, t_hi = t_of(-2 * math.log(0.01)), t_of(-2 * math.log(50.0))
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        t = t_hi - q * (t_hi - t_lo)  # lambda decreases with t
        expected = shift - 2 * math.log(math.tan(math.pi * t / 2))
        # the share of draws below the closed-form quantile: q within 4 binomial standard deviations
        assert np.mean(logsnr <= expected) == pytest.approx(q, abs=4 * math.sqrt(q * (1 - q) / len(logsnr)))
    assert sigma.min() >= 0.01 - 1e-12 and sigma.max() <= 50.0 + 1e-9


def test_sigmoid_weight_values():
    logsnr = torch.tensor([-10.0, -2.0, 0.0, 2.0, 5.0, 12.0], dtype=torch.float64)
    for b in (2.0, -1.0):
        expected = 1 / (1 + np.exp(logsnr.numpy() - b))
        np.testing.assert_allclose(sigmoid_weight(logsnr, b).numpy(), expected, rtol=1e-12)
    assert sigmoid_weight(torch.tensor(2.0)).item() == 0.5  # default bias b = 2


def test_sigmoid_scheme_weight_is_w_times_jacobian_over_sigma_squared():
    scheme = SigmoidWeightedScheme(sigma_data=SD, bias=1.0, shift=0.5)
    u = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    logsnr = scheme.logsnr(u)
    h = 1e-6  # -d lambda / du by central differences of the map the sampler draws with
    jacobian = -(scheme.logsnr(u + h) - scheme.logsnr(u - h)) / (2 * h)
    torch.testing.assert_close(scheme.dlogsnr_du(logsnr), jacobian, rtol=1e-6, atol=0)
    sigma = torch.exp(-logsnr / 2)
    expected = 1 / (1 + torch.exp(logsnr - 1.0)) * jacobian / sigma**2
    torch.testing.assert_close(scheme.loss_weight(sigma), expected, rtol=1e-6, atol=0)


def test_edm_objective_is_edm_loss():
    """The default objective trains exactly as before objectives existed (same draws, same numbers)."""
    objective = objectives.get("edm", sigma_data=SD, P_mean=-1.0, P_std=1.4)
    net = objective.denoiser(backbone)
    assert isinstance(net.scheme, EDMScheme) and net.scheme.sigma_data == SD
    y = _images()
    ours = objective.loss(net, y, generator=torch.Generator().manual_seed(4))
    edm_loss = EDMLoss(P_mean=-1.0, P_std=1.4, sigma_data=SD)
    theirs = edm_loss(net, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(ours, theirs)
    sigma = torch.tensor([0.01, 0.5, 3.0])
    torch.testing.assert_close(objective.scheme.loss_weight(sigma), (sigma**2 + SD**2) / (sigma * SD) ** 2)


# --- the losses by hand --------------------------------------------------------------------------------


def test_ddpm_loss_is_the_simple_loss():
    objective = objectives.get("ddpm")
    calls = []

    def eps_net(x_t, t, **cond):
        calls.append(t)
        return backbone(x_t, t)

    net = objective.denoiser(eps_net)
    assert isinstance(net, DiscreteTimeDenoiser)
    y = _images()
    loss = objective.loss(net, y, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws: t, then eps
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(y.shape, generator=g)
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))[t].float()
    x_t = column(abar.sqrt()) * y + column((1 - abar).sqrt()) * eps
    assert torch.equal(calls[0], t.float())
    torch.testing.assert_close(loss, (eps - backbone(x_t, t)) ** 2, rtol=1e-5, atol=1e-5)


def _cosine_draws(y, seed, sigma_min=0.002, sigma_max=80.0):
    """u, then the noise, as the loss draws them; sigma by the cosine schedule (Salimans & Ho)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(y.shape[0], generator=g)
    eps = torch.randn(y.shape, generator=g)
    t_min, t_max = (2 / math.pi * math.atan(s) for s in (sigma_min, sigma_max))
    t = t_min + u.double() * (t_max - t_min)
    logsnr = -2 * torch.log(torch.tan(math.pi * t / 2))
    return logsnr, eps, t_max - t_min


def test_v_cosine_loss_is_the_v_mse():
    objective = objectives.get("v-cosine", sigma_data=SD)
    y = _images()
    loss = objective.loss(objective.denoiser(backbone), y, generator=torch.Generator().manual_seed(6))
    logsnr, eps, _ = _cosine_draws(y, 6)
    sigma = column(torch.exp(-logsnr / 2)).float()
    # VP pair of the data scaled to unit std, y / SD, at noise sigma / SD
    alpha, sigma_vp = SD / (sigma**2 + SD**2).sqrt(), sigma / (sigma**2 + SD**2).sqrt()
    z = alpha * y / SD + sigma_vp * eps
    v = alpha * eps - sigma_vp * y / SD
    v_hat = backbone(z, sigma.log().reshape(-1) / 4)
    torch.testing.assert_close(loss, (v - v_hat) ** 2, rtol=1e-4, atol=1e-5)


def test_sigmoid_loss_is_the_weighted_eps_loss():
    objective = objectives.get("sigmoid", sigma_data=SD, bias=2.0)
    net = objective.denoiser(backbone)
    y = _images()
    loss = objective.loss(net, y, generator=torch.Generator().manual_seed(7))
    logsnr, eps, span = _cosine_draws(y, 7)
    sigma = column(torch.exp(-logsnr / 2)).float()
    x = y + sigma * eps
    eps_hat = (x - net(x, sigma.reshape(-1))) / sigma
    # w(lambda) (-d lambda / du) with lambda = -2 log tan(pi t / 2): d lambda / dt = -2 pi / sin(pi t)
    t = 2 / math.pi * torch.atan(torch.exp(-logsnr / 2))
    weight = torch.sigmoid(2.0 - logsnr) * span * 2 * math.pi / torch.sin(math.pi * t)
    torch.testing.assert_close(loss, column(weight).float() * (eps - eps_hat) ** 2, rtol=1e-4, atol=1e-5)


def test_v_prediction_is_edm_preconditioning_with_the_sign_flipped():
    """D_v(x; sigma) = c_skip x - c_out F_v(c_in x) with EDM's c_skip, c_out, c_in for sigma_data = SD."""
    sigma = torch.tensor([0.002, 0.1, 0.75, 3.0, 80.0], dtype=torch.float64)
    v_scheme, edm_scheme = CosineLogSNRScheme(sigma_data=SD), EDMScheme(sigma_data=SD)
    torch.testing.assert_close(v_scheme.c_skip(sigma), edm_scheme.c_skip(sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close(v_scheme.c_out(sigma), -edm_scheme.c_out(sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close(v_scheme.c_in(sigma), edm_scheme.c_in(sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close(v_scheme.c_noise(sigma), edm_scheme.c_noise(sigma), rtol=1e-14, atol=0)
    x = _images(5).double() * 3
    ours = objectives.get("v-cosine", sigma_data=SD).denoiser(backbone)(x, sigma)
    edm = Precond(lambda x_in, c_noise: -backbone(x_in, c_noise), "edm", sigma_data=SD)(x, sigma)
    torch.testing.assert_close(ours, edm, rtol=1e-12, atol=1e-12)
    # the v-network's target is v of the scaled data: alpha eps - sigma_vp y / SD
    y, eps = _images(5).double(), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    s = column(sigma)
    alpha, sigma_vp = SD / (s**2 + SD**2).sqrt(), s / (s**2 + SD**2).sqrt()
    torch.testing.assert_close(v_scheme.target(y, y + s * eps, s), alpha * eps - sigma_vp * y / SD)


# --- checkpoints ---------------------------------------------------------------------------------------


EXPECTED_DENOISERS = {"edm": EDMScheme, "ddpm": type(objectives.get("ddpm").scheme),
                      "v-cosine": CosineLogSNRScheme, "sigmoid": SigmoidWeightedScheme}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edm", "ddpm", "v-cosine", "sigmoid"])
def test_checkpoint_round_trip(tmp_path, name):
    result = _train(tmp_path, 2, objective=name)
    config = json.loads(result.checkpoint.with_suffix(".json").read_text())
    objective = objectives.get(config["objective"]["name"], **config["objective"]["params"])
    assert config["objective"]["name"] == name
    assert config["precond"] == objective.precond_record()
    if name != "ddpm":
        assert config["objective"]["params"]["sigma_data"] == SD
    # the training record keeps only the run options the objective uses
    used = {"edm": {"sigma_data", "P_mean", "P_std"}, "ddpm": set()}.get(name, {"sigma_data"})
    assert {"sigma_data", "P_mean", "P_std"} & set(config["training"]) == used
    ckpt = load_checkpoint(result.checkpoint)
    assert type(ckpt.denoiser.scheme) is EXPECTED_DENOISERS[name]
    model = load_model(str(result.checkpoint))
    x = _images(4) * 2
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0])
    labels = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    with torch.no_grad():
        expected = objective.denoiser(ckpt.denoiser.backbone)(x, sigma, class_labels=labels)
        assert torch.equal(ckpt.denoiser(x, sigma, class_labels=labels), expected)
        assert torch.equal(model.denoiser(x, sigma, class_labels=labels), expected)
    if name == "ddpm":
        assert isinstance(ckpt.denoiser, DiscreteTimeDenoiser)
        assert torch.equal(model.sigmas, objective.scheme.sigmas)
        assert model.sigma_min == pytest.approx(float(objective.scheme.sigmas[0]))
        assert model.denoiser.round_sigma(torch.tensor(0.5)).item() in objective.scheme.sigmas.float()
    else:
        assert model.sigmas is None and (model.sigma_min, model.sigma_max) == (0.002, 80.0)


@pytest.mark.slow
def test_checkpoints_without_an_objective_load_as_edm(tmp_path):
    import edm

    shipped = load_checkpoint(edm.__path__[0] + "/weights/digits")
    assert "objective" not in shipped.config
    by_hand = Precond(shipped.denoiser.backbone, "edm", **shipped.config["precond"]["params"])
    x, sigma = _images(4) * 5, torch.tensor([0.002, 0.3, 4.0, 80.0])
    with torch.no_grad():
        assert torch.equal(shipped.denoiser(x, sigma), by_hand(x, sigma))
    assert repr(shipped.denoiser.scheme) == repr(by_hand.scheme)
    # a new edm checkpoint with its objective record removed loads the same
    result = _train(tmp_path, 1)
    config = json.loads(result.checkpoint.with_suffix(".json").read_text())
    del config["objective"]
    with torch.no_grad():
        backbone_ = load_checkpoint(result.checkpoint).denoiser.backbone
        assert torch.equal(denoiser_from_config(backbone_, config)(x, sigma),
                           load_checkpoint(result.checkpoint).denoiser(x, sigma))


@pytest.mark.slow
def test_resume_restores_the_objective(tmp_path):
    options = {"objective_options": {"timesteps": 100, "beta_end": 0.05}}
    whole = _train(tmp_path / "whole", 3, objective="ddpm", **options)
    _train(tmp_path / "part", 2, objective="ddpm", **options)
    resumed = train(resume=tmp_path / "part", steps=3, progress=False)  # objective="edm" by default: ignored
    config = json.loads(resumed.checkpoint.with_suffix(".json").read_text())
    assert config["objective"] == {"name": "ddpm", "params": {"timesteps": 100, "beta_start": 1e-4,
                                                              "beta_end": 0.05}}
    assert load_training_state(resumed.state)[0]["options"]["objective"] == "ddpm"
    a, b = (load_file(r.checkpoint.with_suffix(".safetensors")) for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_states_without_an_objective_resume_as_edm(tmp_path):
    _train(tmp_path, 1, objective="edm")
    state = tmp_path / "training-state.json"
    record = json.loads(state.read_text())
    for key in ("objective", "objective_options"):
        del record["options"][key]
    state.write_text(json.dumps(record))
    resumed = train(resume=tmp_path, steps=2, progress=False)
    config = json.loads(resumed.checkpoint.with_suffix(".json").read_text())
    assert config["objective"]["name"] == "edm" and config["objective"]["params"]["sigma_data"] == SD


# --- DDPM-trained digits model against diffusers' schedulers ---------------------------------------------

T, BETA_START, BETA_END = 1000, 1e-4, 0.02
STEPS = 10


@pytest.fixture(scope="module")
def ddpm_model(tmp_path_factory):
    """A tiny UNet trained a few steps on digits with the DDPM objective, loaded through tools.models."""
    out = tmp_path_factory.mktemp("ddpm")
    _train(out, 6, objective="ddpm", objective_options={"timesteps": T, "beta_start": BETA_START,
                                                         "beta_end": BETA_END})
    return load_model(str(out / "network"), dtype=torch.float64)


def _eps_network(model, labels):
    """The raw eps-network ``eps(x_t, t)`` (diffusers' calling convention, one timestep for the batch)."""
    net = model.denoiser.inner.backbone
    return lambda x_t, t: net(x_t, torch.as_tensor(t, dtype=x_t.dtype).reshape(1), class_labels=labels)


def _start(model, batch=4):
    noise = torch.randn(batch, *model.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.arange(batch) % 10, 10).double()
    return noise, labels


def _diffusers_loop(scheduler, eps, noise, step):
    x_t = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_t = step(eps(x_t, t), t, x_t)
    return x_t


def _table(model):
    return model.sigmas.to(torch.float64)


@pytest.mark.slow
def test_ddpm_model_ddim_matches_diffusers_ddim(ddpm_model):
    model = ddpm_model
    noise, labels = _start(model)
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(BETA_START, BETA_END, T)))
    ddim = diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                                   clip_sample=False, set_alpha_to_one=True)
    ddim.alphas_cumprod = abar.clone()  # the model's table, float64 (diffusers' own is float32)
    ddim.set_timesteps(STEPS)
    reference = _diffusers_loop(ddim, _eps_network(model, labels), noise,
                                lambda eps, t, x: ddim.step(eps, t, x, eta=0.0).prev_sample)
    sigmas = torch.cat([_table(model)[ddim.timesteps.long()], torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(_table(model), ((1 - abar) / abar).sqrt(), rtol=1e-14, atol=0)
    with torch.no_grad():
        ours = samplers.sample(model.denoiser, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, "ddim",
                               cond={"class_labels": labels})
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5 and reference.abs().max() > 0.1, error


def _dpm_solver_step(scheduler):
    """DPMSolverMultistepScheduler.step (dpmsolver++, order 2) without its per-step cast of the sample to
    float32, so that the float64 loop stays in float64: the same calls in the same order."""

    def step(model_output, t, sample):
        if scheduler.step_index is None:
            scheduler._init_step_index(t)
        last = scheduler.step_index == len(scheduler.timesteps) - 1
        x0 = scheduler.convert_model_output(model_output, sample=sample)
        scheduler.model_outputs[0], scheduler.model_outputs[1] = scheduler.model_outputs[1], x0
        if scheduler.lower_order_nums < 1 or last:  # final sigma 0: a first-order last step
            out = scheduler.dpm_solver_first_order_update(x0, sample=sample)
        else:
            out = scheduler.multistep_dpm_solver_second_order_update(scheduler.model_outputs, sample=sample)
        scheduler.lower_order_nums = min(scheduler.lower_order_nums + 1, 2)
        scheduler._step_index += 1
        return out

    return step


def _dpm_solver(steps, abar):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", euler_at_final=False, final_sigmas_type="zero")
    scheduler.alphas_cumprod = abar.clone()
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.slow
def test_ddpm_model_dpmpp_2m_matches_diffusers_dpm_solver(ddpm_model):
    model = ddpm_model
    noise, labels = _start(model)
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(BETA_START, BETA_END, T)))
    # the replica of step is step itself in float32
    float32 = [_dpm_solver(STEPS, abar) for _ in range(2)]
    eps64 = _eps_network(model, labels)

    def eps32(x_t, t):
        return eps64(x_t.double(), t).float()

    with torch.no_grad():
        theirs = _diffusers_loop(float32[0], eps32, noise.float(),
                                 lambda eps, t, x: float32[0].step(eps.float(), t, x).prev_sample)
        replica = _diffusers_loop(float32[1], eps32, noise.float(), _dpm_solver_step(float32[1]))
    torch.testing.assert_close(replica.float(), theirs, rtol=0, atol=1e-6)

    scheduler = _dpm_solver(STEPS, abar)
    # diffusers keeps these sigmas in float32: the model's table at its timesteps, in float64
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), _table(model)[scheduler.timesteps.long()],
                               rtol=1e-7, atol=0)
    sigmas = torch.cat([_table(model)[scheduler.timesteps.long()], torch.zeros(1, dtype=torch.float64)])
    scheduler.sigmas = sigmas.clone()
    reference = _diffusers_loop(scheduler, _eps_network(model, labels), noise, _dpm_solver_step(scheduler))
    with torch.no_grad():
        ours = samplers.sample(model.denoiser, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, "dpmpp_2m",
                               cond={"class_labels": labels})
    error = (ours - reference).abs().max().item()
    assert error <= 1e-5 and reference.abs().max() > 0.1, error


@pytest.mark.slow
def test_ddpm_model_euler_matches_diffusers_euler(ddpm_model):
    """EulerDiscreteScheduler keeps its sigmas and state in float32 whatever the model's dtype: its loop
    carries float32 round-off (~1e-7 relative), so the bound is relative to the output's size."""
    model = ddpm_model
    noise, labels = _start(model)
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(BETA_START, BETA_END, T)))
    euler = diffusers.EulerDiscreteScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END)
    euler.alphas_cumprod = abar.clone()
    euler.set_timesteps(STEPS)
    assert torch.equal(euler.timesteps, euler.timesteps.round())  # linspace over 0..999 in 10: integers
    eps = _eps_network(model, labels)
    x = noise.float() * euler.init_noise_sigma
    with torch.no_grad():
        for t in euler.timesteps:
            out = eps(euler.scale_model_input(x, t).double(), t).float()
            x = euler.step(out, t, x).prev_sample
    sigmas = torch.cat([_table(model)[euler.timesteps.long()], torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(euler.sigmas.double(), sigmas, rtol=1e-7, atol=0)
    with torch.no_grad():
        ours = samplers.sample(model.denoiser, noise * sigmas[0], sigmas, "euler",
                               cond={"class_labels": labels})
    error = (ours - x.double()).abs().max().item()
    assert error <= 2e-6 * x.abs().max().item(), (error, x.abs().max().item())


DETERMINISTIC = [name for name in samplers.list() if not samplers.get(name).stochastic]


def _table_schedule(model, steps):
    """The Karras schedule over the model's table range, rounded to the table (as NVlabs' samplers round
    discrete models' steps), ending in 0."""
    sigmas = samplers.schedules.get("karras")(steps, model.sigma_min, model.sigma_max)
    rounded = torch.unique_consecutive(model.denoiser.round_sigma(sigmas[:-1]))
    return torch.cat([rounded, sigmas.new_zeros(1)])


def _solve(model, sampler, steps, noise, labels):
    sigmas = _table_schedule(model, steps)
    with torch.no_grad():
        return samplers.sample(model.denoiser, noise * sigmas[0], sigmas, sampler,
                               cond={"class_labels": labels})


@pytest.fixture(scope="module")
def fine_solution(ddpm_model):
    noise, labels = _start(ddpm_model, batch=3)
    return noise, labels, _solve(ddpm_model, "heun", 100, noise, labels)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_every_deterministic_sampler_converges_on_the_ddpm_model(ddpm_model, fine_solution, sampler):
    """At 8 and 16 steps each deterministic sampler's error against the fine-step solution (heun, 100
    steps), relative to its largest value, shrinks (adaptive dpm_adaptive: stays) and ends below 25%."""
    noise, labels, fine = fine_solution
    scale = fine.abs().max()

    def errors_of(name):
        return [((_solve(ddpm_model, name, steps, noise, labels) - fine).abs().max() / scale).item()
                for steps in (8, 16)]

    errors = errors_of(sampler)
    if sampler == "gradient_estimation":
        # Its gamma = 2 extrapolation cancels most of the error at 8 steps on this model (1.8e-4 of the
        # scale, against 9.5e-4 at 16; the reference is good to 3e-5), so it is held to beating the Euler
        # steps it corrects at both step counts instead (euler: 4.2e-3, 2.0e-3).
        assert all(e < u for e, u in zip(errors, errors_of("euler"))), errors
        return
    assert errors[1] <= errors[0] and errors[1] < 0.25, errors


# --- the command ---------------------------------------------------------------------------------------

FAST = ["--steps", "2", "--batch", "8", "--channels", "8", "--channel-mult", "1,2", "--blocks", "1",
        "--no-progress"]


@pytest.mark.slow
def test_cli_trains_ddpm_and_records_a_command_that_repeats_it(tmp_path):
    result = invoke(train_command, "--outdir", tmp_path / "a", "--objective", "ddpm", "--timesteps", "200",
                    "--beta-end", "0.04", *FAST)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "a" / "network.json").read_text())
    assert config["objective"] == {"name": "ddpm", "params": {"timesteps": 200, "beta_start": 0.0001,
                                                              "beta_end": 0.04}}
    command = config["command"]
    assert "--objective ddpm --timesteps 200" in command and "--beta-start 0.0001" in command
    for absent in ("--p-mean", "--p-std", "--sigma-data", "--sigmoid-bias", "--patch"):
        assert absent not in command, command
    words = shlex.split(command)
    assert words[:2] == ["edm", "train"]
    words[words.index("--outdir") + 1] = str(tmp_path / "b")
    again = invoke(train_command, *words[2:])
    assert again.exit_code == 0, again.output
    a, b = (load_file(tmp_path / d / "network.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = load_model(str(tmp_path / "b"))
    assert model.sigmas is not None and len(model.sigmas) == 200


@pytest.mark.slow
def test_cli_sigmoid_bias_is_recorded(tmp_path):
    result = invoke(train_command, "--outdir", tmp_path, "--objective", "sigmoid", "--sigmoid-bias", "-1",
                    "--sigma-data", "0.6", *FAST)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "network.json").read_text())
    params = config["objective"]["params"]
    assert params["bias"] == -1.0 and params["sigma_data"] == 0.6
    assert "--sigmoid-bias -1.0" in config["command"] and "--p-mean" not in config["command"]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--objective", "ddpm", "--p-mean", "0"], ["--p-mean belongs to --objective edm",
                                                "does not apply to --objective ddpm"]),
    (["--objective", "v-cosine", "--p-std", "1"], ["--p-std", "--objective v-cosine"]),
    (["--objective", "ddpm", "--sigma-data", "0.5"], ["--sigma-data", "--objective ddpm"]),
    (["--timesteps", "100"], ["--timesteps belongs to --objective ddpm", "--objective edm"]),
    (["--objective", "v-cosine", "--sigmoid-bias", "1"], ["--sigmoid-bias belongs to --objective sigmoid"]),
    (["--objective", "sigmoid", "--beta-end", "0.01"], ["--beta-end", "--objective sigmoid"]),
    (["--objective", "nope"], ["--objective"]),
    (["--objective", "ddpm", "--beta-start", "0.1", "--beta-end", "0.01"], ["beta_start <= beta_end"]),
])
def test_cli_refuses_flags_of_other_objectives(tmp_path, args, fragments):
    result = invoke(train_command, "--outdir", tmp_path / "run", *args, *FAST)
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "run").exists()

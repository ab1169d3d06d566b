"""A diffusers model's own x0 thresholding (its scheduler's ``clip_sample`` / ``thresholding``) is honoured:
``load_model('diffusers:DIR').threshold`` wraps the denoiser in ``samplers.guidance.Thresholded`` and our
samplers then reproduce diffusers' loops with it.

The oracles are diffusers' own: ``_threshold_sample`` for dynamic thresholding, and its DDIM and
DPM-Solver++ loops (``unet`` + ``scheduler.step``) on a random-weight UNet saved with ``save_pretrained``.
A random network's x0 prediction lies far outside [-1, 1] at high noise, so the clip is active at every
step; each parity test also checks that sampling without it ends elsewhere, so it could fail.
diffusers works in VP variables ``x_vp = sqrt(abar) x``, our samplers in ``x = y + sigma n``: the start
noise converts with ``x = x_vp * sqrt(1 + sigma^2)``, and both end at sigma = 0 where the two coincide.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re

import diffusers
import pipelines_tiny
import pytest
import torch

import samplers
from _support import invoke
from samplers.guidance.threshold import Thresholded, dynamic_threshold
from tools.models import load_model
from tools.models.diffusers import APPLIED

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, CHANNELS, BATCH, STEPS = 8, 3, 2, 6
SETTINGS = ("clip_sample", "thresholding")
# beta_end 0.005 (diffusers' default 0.02) puts sigma_max near 3.4 instead of ~157, so float32 round-off
# in x = x_vp * sqrt(1 + sigma^2) stays far below the 1e-5 the float32 comparisons ask for.
BETA_END = 0.005


#: save(path, scheduler=None) -> the random UNet saved with ``scheduler`` as a diffusers:DIR model
save = functools.partial(pipelines_tiny.save_unet_pipeline, size=SIZE, channels=CHANNELS)


def initial_noise(dtype) -> torch.Tensor:
    return torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(7)).to(dtype)


def table_sigmas(model, scheduler) -> torch.Tensor:
    """The sigmas of diffusers' timesteps, from the model's table, then 0 (diffusers' last step goes to
    abar = 1: DDIM's ``set_alpha_to_one``, DPM-Solver's ``final_sigmas_type='zero'``)."""
    table = model.sigmas.to(torch.float64)
    return torch.cat([table[scheduler.timesteps.long()], table.new_zeros(1)])


def tolerance(reference: torch.Tensor) -> float:
    scale = reference.abs().max().item()
    return (1e-9 if reference.dtype == torch.float64 else 1e-5) * scale


def ddim_step(scheduler):
    return lambda eps, t, x: scheduler.step(eps, t, x, eta=0.0).prev_sample


def run_loop(unet, scheduler, noise, step) -> torch.Tensor:
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = step(unet(x, t).sample, t, x)
    return x


# --- dynamic thresholding is diffusers' _threshold_sample ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize(("ratio", "max_value"), [(0.995, 1.0), (0.9, 1.5), (0.6, 3.0), (0.995, math.inf),
                                                  (1.0, 2.0)])
def test_dynamic_threshold_is_diffusers_threshold_sample(dtype, ratio, max_value):
    scheduler = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                                        sample_max_value=max_value)
    x0 = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = (x0 * torch.tensor([0.3, 1.0, 2.0, 6.0], dtype=torch.float64)[:, None, None, None]).to(dtype)
    ours = dynamic_threshold(x0, ratio, max_value)
    theirs = scheduler._threshold_sample(x0)
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x0)  # the larger samples are thresholded


# --- what the loader reads from the scheduler ------------------------------------------------------------


def test_applied_table_matches_diffusers_source():
    """``APPLIED`` lists, for every diffusers scheduler taking clip_sample or thresholding, the ones its
    code branches on: a diffusers release that adds a scheduler or changes one fails here, not silently."""
    seen = set()
    for name in dir(diffusers):
        cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
        if not inspect.isclass(cls) or not hasattr(cls, "from_config"):
            continue
        declared = [key for key in SETTINGS if key in inspect.signature(cls.__init__).parameters]
        if not declared:
            continue
        source = inspect.getsource(inspect.getmodule(cls))
        used = {key for key in SETTINGS if re.search(rf"^\s*(el)?if self\.config\.{key}\b", source, re.M)}
        assert set(APPLIED.get(name, ("missing from APPLIED",))) == used, name
        seen.add(name)
    assert {"DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "TCDScheduler"} <= seen


def _dpm_from_ddim_config():
    # a DPMSolverMultistepScheduler made from a DDIM config: diffusers drops its clip_sample
    return diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler().config)


@pytest.mark.parametrize(("make", "expected", "shown"), [
    (lambda: diffusers.DDIMScheduler(), {"kind": "static", "limit": 1.0}, "static clip to [-1, 1]"),
    (lambda: diffusers.DDPMScheduler(clip_sample_range=2.0), {"kind": "static", "limit": 2.0},
     "static clip to [-2, 2]"),
    (lambda: diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
     {"kind": "dynamic", "percentile": 0.9, "max_value": 1.5}, "dynamic"),  # over clip_sample=True
    (lambda: diffusers.DDIMScheduler(thresholding=True),
     {"kind": "dynamic", "percentile": 0.995, "max_value": 1.0}, "static clip to [-1, 1]"),
    (lambda: diffusers.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=2.0),
     {"kind": "dynamic", "percentile": 0.995, "max_value": 2.0}, "dynamic"),
    (lambda: diffusers.HeunDiscreteScheduler(clip_sample=True), {"kind": "static", "limit": 1.0}, "static"),
    (lambda: diffusers.DDIMScheduler(clip_sample=False), None, "none"),
    (_dpm_from_ddim_config, None, "none"),
    (lambda: diffusers.EulerDiscreteScheduler.from_config(diffusers.DDPMScheduler().config), None, "none"),
    (lambda: diffusers.TCDScheduler(clip_sample=True, thresholding=True), None, "none"),  # never applied
    (lambda: diffusers.UniPCMultistepScheduler(thresholding=True, predict_x0=False), None, "none"),
])
def test_threshold_follows_what_the_scheduler_class_applies(tmp_path, make, expected, shown):
    save(tmp_path, make())
    model = load_model(f"diffusers:{tmp_path}")
    assert model.threshold == expected
    assert model.info["threshold"] == expected and model.info["x0_thresholding"].startswith(shown)
    assert model.ignored == []


def test_a_minimal_config_gets_the_class_defaults(tmp_path):
    """A DDPMScheduler config without clip_sample clips all the same: diffusers' default is True."""
    save(tmp_path)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}))
    assert load_model(f"diffusers:{tmp_path}").threshold == {"kind": "static", "limit": 1.0}


def test_what_cannot_be_honoured_is_reported(tmp_path):
    save(tmp_path, diffusers.DDIMScheduler(thresholding=True, sample_max_value=0.5))
    model = load_model(f"diffusers:{tmp_path}")
    assert model.threshold is None
    assert model.ignored == [
        "thresholding=True (sample_max_value=0.5 is not a number >= 1, so it is not applied)"]
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_class_name": "NoSuchScheduler", "sample_max_value": 1.0}))
    model = load_model(f"diffusers:{tmp_path}")
    assert model.threshold is None and len(model.ignored) == 2
    assert model.ignored[0] == "thresholding=True ('NoSuchScheduler' is no scheduler of this diffusers)"


# --- sampling parity with diffusers' loops -------------------------------------------------------------


def load(tmp_path, scheduler, dtype):
    """(diffusers' unet in ``dtype``, our loaded model, the start noise in VP variables)."""
    unet = save(tmp_path, scheduler).to(dtype)
    return unet, load_model(f"diffusers:{tmp_path}", dtype=dtype), initial_noise(dtype)


def ours(model, noise, sigmas, sampler, threshold="model"):
    denoiser = model.denoiser
    if threshold is not None:
        denoiser = Thresholded(denoiser, **(model.threshold if threshold == "model" else threshold))
    x = noise * (1 + sigmas[0] ** 2).sqrt().to(noise.dtype)  # VP -> VE
    return samplers.sample(denoiser, x, sigmas, sampler)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ddim_with_clip_sample_matches_diffusers_ddim_loop(tmp_path, dtype):
    """DDIMScheduler at its default clip_sample=True and the ``ddim`` sampler under the model's threshold.

    diffusers' DDIM clips x0 but keeps the network's own epsilon for the direction to x_{t-1}
    (``use_clipped_model_output=False``), so x_next = clip(x0) + sigma_next (x - x0) / sigma, not the
    Euler step with the clipped x0 everywhere: that one ends elsewhere too, checked below.
    """
    unet, model, noise = load(tmp_path, diffusers.DDIMScheduler(beta_end=BETA_END), dtype)
    assert model.threshold == {"kind": "static", "limit": 1.0}
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "scheduler")
    if dtype == torch.float64:
        # DDIM's step takes its coefficients from this float32 table in float32 arithmetic
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.set_timesteps(STEPS)
    reference = run_loop(unet, scheduler, noise, ddim_step(scheduler))
    sigmas = table_sigmas(model, scheduler)
    error = (ours(model, noise, sigmas, "ddim") - reference).abs().max().item()
    assert error <= tolerance(reference), error
    unclipped = (ours(model, noise, sigmas, "ddim", threshold=None) - reference).abs().max().item()
    clipped_eps = (ours(model, noise, sigmas, "euler") - reference).abs().max().item()
    assert unclipped > 0.1 and clipped_eps > 0.1, (unclipped, clipped_eps)


def dpm_step_without_float32_cast(scheduler):
    """DPMSolverMultistepScheduler.step (solver order 2) without its cast of the sample to float32.

    diffusers "upcasts" the sample to float32 in every step, which in a float64 run rounds x to float32
    precision (a ~1e-7 error); the same calls in the same order, in float64, are its float64 loop.
    ``test_dpm_step_replica_is_diffusers_step`` checks them against ``step`` in float32.
    """
    def step(model_output, t, sample):
        if scheduler.step_index is None:
            scheduler._init_step_index(t)
        config = scheduler.config
        assert config.solver_order == 2 and config.algorithm_type == "dpmsolver++"
        last = scheduler.step_index == len(scheduler.timesteps) - 1
        first_order = last and (config.euler_at_final or config.final_sigmas_type == "zero"
                                or (config.lower_order_final and len(scheduler.timesteps) < 15))
        x0 = scheduler.convert_model_output(model_output, sample=sample)
        scheduler.model_outputs[0] = scheduler.model_outputs[1]
        scheduler.model_outputs[1] = x0
        if scheduler.lower_order_nums < 1 or first_order:
            out = scheduler.dpm_solver_first_order_update(x0, sample=sample)
        else:
            out = scheduler.multistep_dpm_solver_second_order_update(scheduler.model_outputs, sample=sample)
        scheduler.lower_order_nums = min(scheduler.lower_order_nums + 1, config.solver_order)
        scheduler._step_index += 1
        return out
    return step


def dpm_scheduler(**settings):
    return diffusers.DPMSolverMultistepScheduler(beta_end=BETA_END, thresholding=True, **settings)


def test_dpm_step_replica_is_diffusers_step(tmp_path):
    unet, _, noise = load(tmp_path, dpm_scheduler(sample_max_value=1.5), torch.float32)
    theirs, replica = (diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "scheduler")
                       for _ in range(2))
    theirs.set_timesteps(STEPS)
    replica.set_timesteps(STEPS)
    expected = run_loop(unet, theirs, noise, lambda eps, t, x: theirs.step(eps, t, x).prev_sample)
    assert torch.equal(run_loop(unet, replica, noise, dpm_step_without_float32_cast(replica)), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("ratio", "max_value"), [(0.995, 1.0), (0.9, 1.5)])
def test_dpmpp_2m_with_thresholding_matches_diffusers_dpm_solver_loop(tmp_path, dtype, ratio, max_value):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, final sigma 0) with thresholding and
    the ``dpmpp_2m`` sampler under the model's threshold: diffusers thresholds the converted x0 that all
    its updates use, i.e. the thresholded denoiser everywhere. Its last step, to sigma 0, is first order
    (lower_order_final), which is x = x0 as ours."""
    unet, model, noise = load(tmp_path, dpm_scheduler(dynamic_thresholding_ratio=ratio,
                                                      sample_max_value=max_value), dtype)
    assert model.threshold == {"kind": "dynamic", "percentile": ratio, "max_value": max_value}
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "scheduler")
    scheduler.set_timesteps(STEPS)
    sigmas = table_sigmas(model, scheduler)
    assert torch.allclose(scheduler.sigmas.double(), sigmas, rtol=1e-6, atol=0)  # diffusers': float32
    if dtype == torch.float64:
        scheduler.sigmas = sigmas.clone()
        step = dpm_step_without_float32_cast(scheduler)
    else:
        def step(eps, t, x):
            return scheduler.step(eps, t, x).prev_sample
    reference = run_loop(unet, scheduler, noise, step)
    error = (ours(model, noise, sigmas, "dpmpp_2m") - reference).abs().max().item()
    assert error <= tolerance(reference), error
    unthresholded = (ours(model, noise, sigmas, "dpmpp_2m", threshold=None) - reference).abs().max().item()
    assert unthresholded > 0.1, unthresholded
    if max_value > 1:  # dynamic, not the static clip
        static = (ours(model, noise, sigmas, "dpmpp_2m", threshold={"kind": "static"}) - reference)
        assert static.abs().max().item() > 0.01


# --- edm info and edm generate ---------------------------------------------------------------------------


def test_edm_info_shows_the_honoured_thresholding(tmp_path):
    from tools.cli import main

    save(tmp_path, diffusers.DDIMScheduler(beta_end=BETA_END))
    shown = invoke(main, "info", f"diffusers:{tmp_path}")
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^x0 thresholding +static clip to \[-1, 1\] \(DDIMScheduler clip_sample=True\)$",
                     shown.output, re.M), shown.output
    assert "not honoured" not in shown.output and "clip_sample=True (" not in shown.output
    record = json.loads(invoke(main, "info", f"diffusers:{tmp_path}", "--json").output)
    assert record["info"]["threshold"] == {"kind": "static", "limit": 1.0}
    assert "ignored" not in record["info"]


def test_edm_generate_applies_the_model_clip_sample(tmp_path):
    """``edm generate --sampler ddim`` on the diffusers schedule: no warning about clip_sample, and the
    images are diffusers' DDIM loop's (float64 on both sides; 8-bit images, so within one level)."""
    from tools import images
    from tools.cli import main
    from tools.schedules.file import save_schedule

    unet = save(tmp_path / "model", diffusers.DDIMScheduler(beta_end=BETA_END)).double()
    model = load_model(f"diffusers:{tmp_path / 'model'}", dtype=torch.float64)
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "model" / "scheduler")
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.set_timesteps(STEPS)
    sigmas = table_sigmas(model, scheduler)
    save_schedule(tmp_path / "diffusers.json", sigmas, what="DDIMScheduler's timesteps")
    seeds = [0, 1]
    latents = samplers.noise.latents(seeds, model.shape, dtype=torch.float64)
    x_vp = latents * float(sigmas[0]) / (1 + sigmas[0] ** 2).sqrt()  # edm generate's x = latents * sigma_max
    reference = images.to_uint8(run_loop(unet, scheduler, x_vp, ddim_step(scheduler)))
    unclipped = images.to_uint8(samplers.sample(model.denoiser, latents * float(sigmas[0]), sigmas, "ddim"))
    assert (abs(unclipped.astype(int) - reference.astype(int)) > 1).any()

    made = invoke(
        main, "generate", "--model", f"diffusers:{tmp_path / 'model'}", "--sampler", "ddim",
        "--schedule", f"file:{tmp_path / 'diffusers.json'}", "--steps", str(STEPS), "--seeds", "0,1",
        "--dtype", "float64", "--device", "cpu", "--no-progress", "--outdir", str(tmp_path / "out"))
    assert made.exit_code == 0, made.output
    assert not [line for line in made.stderr.splitlines() if line.startswith("warning:")], made.stderr
    for row, seed in enumerate(seeds):
        image = images.read_png(images.image_path(tmp_path / "out", seed))
        assert abs(image.astype(int) - reference[row].astype(int)).max() <= 1, seed

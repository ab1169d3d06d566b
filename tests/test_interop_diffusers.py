"""A diffusers UNet2DModel loaded with ``load_model('diffusers:DIR')`` samples as diffusers does.

The oracle is diffusers' own loop (``unet`` + ``scheduler.step``) on a random-weight UNet saved with
``save_pretrained``.  diffusers works in VP variables ``x_vp = sqrt(abar) x``; our samplers in VE
variables ``x = y + sigma n``; both end at sigma = 0 where the two coincide.
"""

from __future__ import annotations

import re

import diffusers
import pipelines_tiny
import pytest
import torch

import samplers
from _support import invoke
from tools.models import ModelError, load_model

SIZE, CHANNELS, BATCH, STEPS = 8, 2, 2, 10


def save(tmp_path, prediction_type="epsilon", layout="pipeline", num_class_embeds=None):
    """The random UNet and a DDPM scheduler saved as a diffusers:DIR model: (unet, scheduler)."""
    # beta_end 0.005 puts sigma_max near 3.4 (instead of ~157 for 0.02): a random-weight eps network
    # then ends at the data scale, where a float32 comparison to 1e-4 is meaningful.
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_end=0.005,
                                        prediction_type=prediction_type, clip_sample=False)
    unet = pipelines_tiny.save_unet_pipeline(tmp_path, scheduler, size=SIZE, channels=CHANNELS,
                                             num_class_embeds=num_class_embeds, layout=layout)
    return unet, scheduler


def assert_matches(ours: torch.Tensor, reference: torch.Tensor) -> None:
    error = (ours - reference).abs().max().item()
    assert error <= 1e-4, error


def initial_noise() -> torch.Tensor:
    return torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers_ddim_loop(tmp_path, prediction_type):
    unet, ddpm = save(tmp_path, prediction_type)
    model = load_model(f"diffusers:{tmp_path}")
    assert model.kind == "diffusers" and model.shape == (CHANNELS, SIZE, SIZE) and model.num_classes == 0

    ddim = diffusers.DDIMScheduler.from_config(ddpm.config)
    ddim.set_timesteps(STEPS)
    noise = initial_noise()
    x_vp = noise.clone()
    with torch.no_grad():
        for t in ddim.timesteps:
            eps = unet(x_vp, t).sample
            x_vp = ddim.step(eps, t, x_vp, eta=0.0).prev_sample

    table = model.sigmas.to(torch.float64)
    sigmas = torch.cat([table[ddim.timesteps.long()], table.new_zeros(1)])
    assert torch.allclose(model.denoiser.sigmas.to(torch.float64), table)
    x = noise * (1 + sigmas[0] ** 2).sqrt().float()  # x_T = noise in VP scale
    ours = samplers.sample(model.denoiser, x, sigmas, "ddim", eta=0.0)
    assert_matches(ours, x_vp)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_matches_diffusers_euler_loop(tmp_path, prediction_type):
    unet, ddpm = save(tmp_path, prediction_type, layout="flat")
    model = load_model(f"diffusers:{tmp_path}")

    euler = diffusers.EulerDiscreteScheduler.from_config(ddpm.config)
    euler.set_timesteps(STEPS)
    noise = initial_noise()
    x = noise * euler.init_noise_sigma
    with torch.no_grad():
        for t in euler.timesteps:
            out = unet(euler.scale_model_input(x, t), t).sample
            x = euler.step(out, t, x).prev_sample

    sigmas = euler.sigmas.to(torch.float64)
    assert sigmas[-1] == 0 and len(sigmas) == STEPS + 1
    ours = samplers.sample(model.denoiser, noise * sigmas[0].float(), sigmas, "euler")
    assert_matches(ours, x)


def test_class_conditional_unet_gets_integer_labels(tmp_path):
    unet, _ = save(tmp_path, num_class_embeds=4)
    model = load_model(f"diffusers:{tmp_path}", dtype=torch.float64)
    assert model.num_classes == 4
    unet = unet.double()
    x = initial_noise().double() * 3.0
    sigma = torch.full((BATCH,), 3.0, dtype=torch.float64)
    labels = torch.tensor([2, 0])
    ours = model.denoiser(x, sigma, class_labels=torch.nn.functional.one_hot(labels, 4).double())
    t = model.denoiser.sigma_to_t(sigma)
    with torch.no_grad():
        eps = unet(x / (1 + sigma[:, None, None, None] ** 2).sqrt(), t, class_labels=labels).sample
    torch.testing.assert_close(ours, x - sigma[:, None, None, None] * eps)
    with pytest.raises(ValueError, match="no unconditional"):
        model.denoiser(x, sigma)


def test_bad_diffusers_dirs(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(f"diffusers:{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="no diffusers UNet"):
        load_model(f"diffusers:{tmp_path}")
    pipelines_tiny.save_unet_pipeline(tmp_path, size=SIZE, channels=CHANNELS)
    with pytest.raises(ModelError, match="no scheduler config"):
        load_model(f"diffusers:{tmp_path}")
    with pytest.raises(ModelError, match="looks like a diffusers model"):
        load_model(str(tmp_path))


def test_scheduler_settings_not_honoured_are_shown(tmp_path):
    """A scheduler setting our samplers cannot apply (thresholding with sample_max_value below 1, which
    diffusers' clamp turns into a shrinking scale; clip_sample and valid thresholding are honoured, see
    test_diffusers_thresholding.py): `edm info` lists it and `edm generate` prints one warning naming it."""

    from tools.cli import main

    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_end=0.005, thresholding=True,
                                        sample_max_value=0.5)
    pipelines_tiny.save_unet_pipeline(tmp_path, scheduler, size=SIZE, channels=CHANNELS)
    model = load_model(f"diffusers:{tmp_path}")
    assert model.threshold is None and model.ignored and model.ignored[0].startswith("thresholding=True")
    info = invoke(main, "info", f"diffusers:{tmp_path}")
    assert info.exit_code == 0 and re.search(r"not honoured +thresholding=True", info.output), info.output
    made = invoke(main, "generate", "--model", f"diffusers:{tmp_path}", "--device", "cpu",
                  "--steps", "2",
                  "--seeds", "0", "--no-progress", "--outdir", str(tmp_path / "out"))
    assert made.exit_code == 0, made.output
    warnings = [line for line in made.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "thresholding=True" in warnings[0], made.stderr

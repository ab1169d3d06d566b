"""The Stable Diffusion x4 upscaler (``StableDiffusionUpscalePipeline``) as a model family: loaded from its
saved folder, its low-resolution conditioner, start latents and denoiser, sampled on the scheduler's own
sigmas (``--schedule diffusers``), give per seed the image the pipeline itself gives with
``generator=torch.Generator().manual_seed(seed)``.

The oracle is the pipeline loaded back from the same folder (a tiny random-weight one built offline by
``pipelines_tiny.build_upscale``). Ours runs as ``edm generate --low-res`` / ``--noise-level`` does, calling
the conditioner: ``encode`` for the denoiser's image arguments and
``start_latents`` for the start, the sampler through ``samplers.sample`` on the plan of
``--schedule diffusers`` with the denoiser pinned to the scheduler's timesteps, the negative prompt's
conditioning for classifier-free guidance. ``test_cli_generate_matches_the_pipeline`` below is the
CLI-level version.
"""

from __future__ import annotations

import json
import shutil

import diffusers
import pytest
import torch

from tools.common import BadInput
from tools.models import ModelError, load_model

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

PROMPT, STEPS, SEEDS = "a red bicycle", 4, [0, 1]
#: our sampler -> the diffusers scheduler class whose loop it reproduces (built from the saved config)
COUNTERPARTS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}


@pytest.fixture(scope="module")
def upscaler(tiny_pipeline):
    """``(the pipeline loaded from the saved folder, our model loaded from it, the folder)``."""
    path = tiny_pipeline("upscale")
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, load_model(f"diffusers:{path}"), path


def low_res_images(count: int, shape) -> torch.Tensor:
    """Seeded low-resolution images in [-1, 1] (each with negative pixels: the pipeline's preprocessing
    takes such a tensor as already in [-1, 1])."""
    gen = torch.Generator().manual_seed(1234)
    return torch.rand((count, *shape), generator=gen) * 2 - 1


def theirs(pipe, sampler: str, images, level: int, guidance_scale: float, seeds) -> torch.Tensor:
    """The pipeline's images ([B, 3, H, W] in [0, 1]), one call per seed, its scheduler the sampler's
    counterpart built from its own config."""
    pipe.scheduler = getattr(diffusers, COUNTERPARTS[sampler]).from_config(pipe.scheduler.config)
    out = []
    for image, seed in zip(images, seeds):
        with torch.no_grad():
            out.append(pipe(PROMPT, image=image[None], num_inference_steps=STEPS, noise_level=level,
                            guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
                            output_type="pt").images[0])
    return torch.stack(out)


def ours(model, sampler: str, images, level: int, w: float, seeds) -> torch.Tensor:
    """Our images ([B, 3, H, W] in [0, 1]) for ``seeds`` in one batch: what ``edm generate`` runs, with the
    pieces its low-res plumbing calls (the conditioner's ``encode`` and ``start_latents``)."""
    import samplers
    from samplers.guidance import ClassifierFreeGuidance
    from tools.schedules.steps import diffusers_schedule, pinned_to_timesteps
    from tools.steering.edit import plain_start

    plan = diffusers_schedule(model, sampler, STEPS)
    denoiser = pinned_to_timesteps(model.denoiser, plan)
    _, height, width = model.image_shape
    cond = {**model.conditioner.encode([PROMPT] * len(seeds), height=height, width=width),
            **model.low_res.encode(images, level, seeds)}
    if w:  # the pipeline's default negative prompt, the empty one
        denoiser = ClassifierFreeGuidance(denoiser, w, model.conditioner.encode([None], height=height,
                                                                                 width=width))
    latents = model.low_res.start_latents(seeds, model.shape, "cpu", torch.float32)
    x, sigmas, denoiser, finish = plain_start(denoiser, latents, plan.sigmas, plan.start_scale)
    with torch.no_grad():
        out = finish(samplers.sample(denoiser, x, sigmas, sampler, seeds=seeds, cond=cond, **plan.options))
        return (model.autoencoder.decode(out * plan.end_scale) / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Loading


def test_the_family_loads_the_folder_offline(upscaler):
    pipe, model, path = upscaler
    assert model.kind == "diffusers" and model.num_classes == 0
    assert model.shape == (4, 8, 8) and model.image_shape == (3, 32, 32)  # the VAE upsamples 4x
    assert model.default_guidance == 8.0  # guidance_scale 9
    low = model.low_res
    assert low.shape == (3, 8, 8) and low.level_flag == "noise_level" and low.default_level == 20
    assert low.max_level == pipe.config.max_noise_level == 350
    assert model.info["pipeline"] == "StableDiffusionUpscalePipeline"
    assert model.info["family"] == "Stable Diffusion x4 upscaler" and model.info["prediction"] == "v"
    assert model.info["conditions"] == ["encoder_hidden_states", "cond_image", "noise_level"]
    assert model.info["vae"]["scaling_factor"] == pipe.vae.config.scaling_factor == 0.08333
    assert model.info["low_res"] == {"scheduler": "DDPMScheduler", "max_noise_level": 350,
                                     "default_noise_level": 20, "conditions": ["cond_image", "noise_level"]}
    json.dumps(model.info)
    assert "8x8 image" in low.describe() and "0..350" in low.describe()


def test_edm_info_says_what_it_takes(upscaler):
    from _support import invoke
    from tools.cli import main

    result = invoke(main, "info", f"diffusers:{upscaler[2]}")
    assert result.exit_code == 0, result.output
    rows = {line[:16].strip(): line[16:].strip() for line in result.output.splitlines()}
    assert rows["low-res input"] == ("a 8 x 8 image (--low-res PNG, width x height; the output is 4x it), "
                                     "noised by DDPMScheduler to --noise-level 0..350 (default 20)")
    assert rows["image size"].startswith("32 x 32")
    assert rows["pipeline"] == "StableDiffusionUpscalePipeline (Stable Diffusion x4 upscaler)"
    assert rows["conditioning"] == ("text: encoder_hidden_states (--prompt, --negative-prompt; default "
                                    "--guidance 8 (guidance_scale 9)); image: cond_image, noise_level "
                                    "(--low-res, --noise-level)")


def test_resizing_moves_the_low_res_shape(upscaler):
    from tools.models.pipelines import resized

    model = upscaler[1]
    bigger = resized(model, 48, 64)
    assert bigger.shape == (4, 12, 16) and bigger.image_shape == (3, 48, 64)
    assert bigger.low_res.shape == (3, 12, 16) and model.low_res.shape == (3, 8, 8)
    assert bigger.low_res.max_level == 350


def test_check_level_refuses_out_of_range_levels_with_one_line(upscaler):
    low = upscaler[1].low_res
    assert low.check_level(0) == 0 and low.check_level(350) == 350 and low.check_level(20.0) == 20
    for bad in (-1, 351, 2.5, float("nan"), float("inf"), True, "20", None):
        with pytest.raises(BadInput) as error:
            low.check_level(bad)
        assert error.value.param == "noise_level"
        assert "\n" not in str(error.value) and "[0, 350]" in str(error.value)
    with pytest.raises(BadInput):
        low.encode(low_res_images(1, low.shape), 351, [0])


def test_encode_is_add_noise_with_each_seeds_first_draw(upscaler):
    pipe, model, _ = upscaler
    images = low_res_images(2, model.low_res.shape)
    cond = model.low_res.encode(images, 100, [5, 7])
    assert cond["noise_level"].tolist() == [100, 100] and cond["noise_level"].dtype == torch.long
    for row, seed in enumerate((5, 7)):
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, 3, 8, 8), generator=gen)
        expected = pipe.low_res_scheduler.add_noise(images[row:row + 1], noise, torch.tensor([100]))
        assert torch.equal(cond["cond_image"][row:row + 1], expected)
        latents = torch.randn((1, 4, 8, 8), generator=gen)  # the pipeline's second draw
        assert torch.equal(model.low_res.start_latents([seed], model.shape, "cpu", torch.float32), latents)


def test_a_max_noise_level_beyond_the_unet_is_refused(upscaler, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(upscaler[2], path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "max_noise_level": 1000}))
    with pytest.raises(ModelError, match="max_noise_level 1000 is beyond the UNet's 1000 noise-level"):
        load_model(f"diffusers:{path}")


def test_the_vae_scaling_is_the_one_the_pipeline_imposes(upscaler, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(upscaler[2], path)
    config = json.loads((path / "vae" / "config.json").read_text())
    (path / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5}))
    with pytest.warns(FutureWarning):  # diffusers' deprecation of a VAE saved with another factor
        pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(path, local_files_only=True)
    model = load_model(f"diffusers:{path}")
    assert pipe.vae.config.scaling_factor == model.autoencoder.scaling_factor == 0.08333
    assert model.info["vae"]["scaling_factor"] == 0.08333


# ----------------------------------------------------------------------------------------------
# Sampling: the pipeline's own image per seed


@pytest.mark.parametrize("sampler, level, guidance_scale", [
    ("ddim", 20, 9.0), ("ddim", 100, 9.0), ("ddim", 20, 1.0), ("ddim", 100, 1.0), ("euler", 100, 4.0)])
def test_schedule_diffusers_gives_the_pipelines_own_image_per_seed(upscaler, sampler, level, guidance_scale):
    pipe, model, _ = upscaler
    images = low_res_images(len(SEEDS), model.low_res.shape)
    expected = theirs(pipe, sampler, images, level, guidance_scale, SEEDS)
    batch = ours(model, sampler, images, level, guidance_scale - 1, SEEDS)
    assert batch.shape == expected.shape == (2, 3, 32, 32)
    assert (batch - expected).abs().max().item() <= 1e-4
    alone = ours(model, sampler, images[1:], level, guidance_scale - 1, SEEDS[1:])  # batch size 1
    assert (alone - expected[1:]).abs().max().item() <= 1e-4
    # not degenerate: the noise level and the text change the image
    other = ours(model, sampler, images, 300 if level != 300 else 0, guidance_scale - 1, SEEDS)
    assert (other - expected).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------------------------
# Through `edm generate`


def test_cli_generate_matches_the_pipeline(upscaler, tmp_path):
    import numpy as np
    from PIL import Image

    from _support import invoke
    from tools.cli import main
    from tools.images import from_uint8, read_png

    pipe, model, path = upscaler
    low = ((low_res_images(1, model.low_res.shape)[0].permute(1, 2, 0) / 2 + 0.5) * 255).round()
    Image.fromarray(low.to(torch.uint8).numpy()).save(tmp_path / "low.png")
    image = from_uint8(read_png(tmp_path / "low.png")[None])
    result = invoke(main, "generate", "--model", f"diffusers:{path}", "--low-res", tmp_path / "low.png",
                    "--noise-level", "20", "--prompt", PROMPT, "--schedule", "diffusers", "--sampler", "ddim",
                    "--steps", STEPS, "--seeds", "0-1", "--outdir", tmp_path / "out", "--no-progress",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    expected = theirs(pipe, "ddim", image.expand(2, -1, -1, -1), 20, 9.0, SEEDS)
    got = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "out" / f"{seed:06d}.png")
                                                   .convert("RGB"))).permute(2, 0, 1) for seed in SEEDS])
    assert (got.float() - (expected * 255).round()).abs().max().item() <= 1

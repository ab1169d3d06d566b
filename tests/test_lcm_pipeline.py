"""A latent consistency model (``LatentConsistencyModelPipeline``) saved with ``save_pretrained`` loads with
its guidance embedding as the model's guidance input and LCMScheduler's boundary scalings in its denoiser:
the sigma-form LCM loop (``x = D(x, sigma_i)``, then noise to ``sigma_{i+1}``) on ``--schedule diffusers``
gives the pipeline's latents per seed.

The oracle is the in-memory diffusers pipeline of ``pipelines_tiny.build_lcm``, run with one generator per
seed: its first draw is the start latent and each later one a step's re-noising, which
``samplers.noise.latent_draws`` draws in the same order from the same generators.
"""

from __future__ import annotations

import json

import numpy as np
import pipelines_tiny
import pytest
import torch
from PIL import Image

from _support import assert_usage_error, invoke, plan_of
from samplers.noise import latent_draws
from tools.cli import main
from tools.models.families.lcm import GuidanceEmbedding, guidance_scale_embedding
from tools.models.pipelines import load_pipeline
from tools.request import Prompting
from tools.schedules.steps import diffusers_schedule, pinned_to_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("lcm")
    pipe = pipelines_tiny.build_lcm(path)
    return pipe, load_pipeline(path, device="cpu", dtype=torch.float32), path


def test_loads_with_its_guidance_embedding(built):
    pipe, model, _ = built
    assert model.info["pipeline"] == "LatentConsistencyModelPipeline"
    assert isinstance(model.guidance_input, GuidanceEmbedding)
    assert model.guidance_input.dim == pipelines_tiny.LCM_EMBEDDING
    assert model.default_guidance == 7.5  # the pipeline's guidance_scale 8.5, less 1
    assert model.info["conditions"] == ["encoder_hidden_states", "timestep_cond"]
    assert "timestep_scaling" in model.info["scheduler"]["honoured"]
    assert "time_cond_proj_dim" in model.info["guidance_input"]
    assert (model.sampling.sampler, model.sampling.steps, model.sampling.schedule) == ("lcm", 4, "diffusers")
    json.dumps(model.info)
    w = torch.tensor([0.0, 1.5, 7.5])
    torch.testing.assert_close(guidance_scale_embedding(w, 16), pipe.get_guidance_scale_embedding(w, 16),
                               rtol=0, atol=0)
    torch.testing.assert_close(guidance_scale_embedding(w, 7), pipe.get_guidance_scale_embedding(w, 7),
                               rtol=0, atol=0)


def test_a_unet_and_pipeline_class_that_do_not_fit_are_refused(built, tiny_pipeline, tmp_path):
    import shutil

    from tools.models import ModelError

    _, _, path = built
    for source, class_name, named in ((path, "StableDiffusionPipeline", "time_cond_proj_dim"),
                                      (tiny_pipeline("sd"), "LatentConsistencyModelPipeline", "lacks")):
        copy = tmp_path / class_name
        shutil.copytree(source, copy)
        index = json.loads((copy / "model_index.json").read_text())
        (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
        with pytest.raises(ModelError, match=named):
            load_pipeline(copy)


def test_lcm_timesteps_skip_through_the_original_schedule(built):
    import diffusers

    _, model, _ = built
    for steps in (1, 2, 4, 7):
        plan = diffusers_schedule(model, "lcm", steps)
        scheduler = diffusers.LCMScheduler.from_config(pipelines_tiny.LCM_SCHEDULER)
        scheduler.set_timesteps(steps)
        assert plan.scheduler == "LCMScheduler"
        assert plan.timesteps.tolist() == scheduler.timesteps.tolist()
        abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
        torch.testing.assert_close(plan.sigmas[:-1], ((1 - abar) / abar).sqrt())
        assert plan.sigmas[-1] == 0 and plan.end_scale == 1
        assert plan.start_scale == pytest.approx(float((1 / abar[0]).sqrt()))
    assert diffusers_schedule(model, "lcm", 4).timesteps.tolist() == [999, 759, 499, 259]


def lcm_loop(model, steps: int, w: float, seeds: list[int], prompts: list[str]) -> torch.Tensor:
    """Our side: the model's denoiser pinned to LCMScheduler's timesteps, run by the sigma-form LCM loop
    with each seed's draws in the pipeline's order (latent first, then one per re-noising step)."""
    plan = diffusers_schedule(model, "lcm", steps)
    denoiser = pinned_to_timesteps(model.denoiser, plan)
    cond = model.conditioner.encode(prompts, height=16, width=16)
    cond.update(model.guidance_input.kwargs(w, len(seeds), "cpu", torch.float32))
    draws = latent_draws(seeds, [model.shape] * steps)
    x = draws[0] * plan.start_scale
    sigmas = plan.sigmas.to(torch.float32)
    with torch.no_grad():
        for i in range(steps):
            x = denoiser(x, torch.full((len(seeds),), float(sigmas[i])), **cond)
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * draws[i + 1]
    return x * plan.end_scale


def pipeline_latents(pipe, steps: int, w: float, seeds: list[int], prompts: list[str], **kwargs):
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=1 + w, generator=generators,
                    output_type="latent", height=16, width=16, **kwargs).images


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("w", [0.5, 7.5])
def test_the_lcm_loop_gives_the_pipelines_latents_per_seed(built, steps, w):
    pipe, model, _ = built
    theirs = pipeline_latents(pipe, steps, w, [3, 11], PROMPTS)
    ours = lcm_loop(model, steps, w, [3, 11], PROMPTS)
    assert (ours - theirs).abs().max() <= 1e-4
    alone = lcm_loop(model, steps, w, [11], PROMPTS[1:])  # batch 1: the same image for seed 11
    assert (alone[0] - theirs[1]).abs().max() <= 1e-4
    if steps == 4:  # not degenerate: the weight and the re-noising matter
        assert (lcm_loop(model, steps, w + 3, [3], PROMPTS[:1])[0] - ours[0]).abs().max() > 1e-3


def test_the_boundary_scalings_are_lcm_schedulers(built):
    """One step by hand: c_skip x_t + c_out x0 on the VP sample, from the UNet's own eps."""
    pipe, model, _ = built
    scheduler = pipe.scheduler
    t = 759
    abar = scheduler.alphas_cumprod[t].double()
    sigma = ((1 - abar) / abar).sqrt()
    cond = model.conditioner.encode(PROMPTS, height=16, width=16)
    embedding = guidance_scale_embedding(torch.full((2,), 2.0), 16)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigma)
    with torch.no_grad():
        ours = model.denoiser(x, torch.full((2,), float(sigma)), timestep_cond=embedding, **cond)
        x_t = x * abar.sqrt().float()
        eps = pipe.unet(x_t, torch.tensor([t, t]), encoder_hidden_states=cond["encoder_hidden_states"],
                        timestep_cond=embedding).sample
    x0 = (x_t - (1 - abar).sqrt().float() * eps) / abar.sqrt().float()
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
    assert (ours - (c_skip * x_t + c_out * x0)).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------------------
# The lcm sampler on --schedule diffusers (registered in samplers.distilled)


def _needs_lcm_sampler():
    import samplers

    if "lcm" not in samplers.list():
        pytest.skip("the lcm sampler is not registered (samplers/distilled.py)")


def pipeline_on_our_noise(pipe, steps: int, w: float, seeds: list[int], prompt: str, output_type: str):
    """The pipeline's images started from our latents (NVlabs' stream) and re-noised from each seed's
    sampler stream, one generator per seed: what our sampler draws, in the pipeline's loop."""
    from samplers.noise import SAMPLER_STREAM, latents, stream_seed

    generators = [torch.Generator().manual_seed(stream_seed(seed, SAMPLER_STREAM)) for seed in seeds]
    with torch.no_grad():
        return pipe(prompt=[prompt] * len(seeds), num_inference_steps=steps, guidance_scale=1 + w,
                    generator=generators, latents=latents(seeds, (4, 8, 8)), output_type=output_type,
                    height=16, width=16).images


@pytest.mark.parametrize(("steps", "w", "seeds"), [(1, 7.5, [3, 11]), (2, 0.5, [3, 11]), (4, 7.5, [11]),
                                                   (4, 2.0, [3, 11])])
def test_the_lcm_sampler_gives_the_pipelines_images(built, steps, w, seeds):
    _needs_lcm_sampler()
    pipe, _, path = built
    plan = plan_of(f"diffusers:{path}", seeds, path / "unused", sampler="lcm", schedule="diffusers",
                   steps=steps, guidance=w, device="cpu", prompting=Prompting(prompt="a cat"))
    assert plan.sampling.evaluations == steps  # one UNet call per step: the weight is an input, not CFG
    ours = (plan.sampling.images(seeds) / 2 + 0.5).clamp(0, 1)
    theirs = pipeline_on_our_noise(pipe, steps, w, seeds, "a cat", "pt")
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_the_pipelines_default_is_its_own_loop(built):
    _needs_lcm_sampler()
    _, _, path = built
    plan = plan_of(f"diffusers:{path}", [0], path / "unused", device="cpu", prompting=Prompting(prompt="a"))
    setup = plan.sampling
    assert (setup.sampler, setup.steps, setup.schedule, setup.guidance) == ("lcm", 4, "diffusers", 7.5)
    assert setup.settings()["guidance_input"] is True


def test_edm_generate_writes_the_pipelines_images(built, tmp_path):
    _needs_lcm_sampler()
    pipe, _, path = built
    command = ["generate", "--model", f"diffusers:{path}", "--sampler", "lcm", "--schedule", "diffusers",
               "--steps", 4, "--guidance", 3.0, "--prompt", "a cat", "--seeds", "3,11", "--no-progress",
               "--device", "cpu"]
    result = invoke(main, *command, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"{seed:06d}.png").convert("RGB"))
                     for seed in (3, 11)])
    theirs = np.stack([np.asarray(image) for image in pipeline_on_our_noise(pipe, 4, 3.0, [3, 11], "a cat",
                                                                             "pil")])
    assert (ours == theirs).mean() >= 0.999 and np.abs(ours.astype(int) - theirs).max() <= 1
    refused = invoke(main, *command, "--negative-prompt", "blurry", "--outdir", tmp_path / "other")
    assert_usage_error(refused, "--negative-prompt", "takes the guidance weight as an input")
    assert not (tmp_path / "other").exists()

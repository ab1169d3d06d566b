"""Text-to-image pipelines (Stable Diffusion 1.x / 2.x, SDXL, SD3) through `edm generate`: per seed, the
image diffusers' own pipeline gives with its scheduler replaced by the sampler's counterpart.

The oracle is the pipeline object itself (tiny random weights, built offline by ``pipelines_tiny``),
called once per seed with ``generator=torch.Generator().manual_seed(seed)``, the same prompts and
``guidance_scale = 1 + W``; its scheduler is ``Counterpart.from_config(pipe.scheduler.config)`` so that
spacing and offsets carry over, which is what ``--schedule diffusers`` promises to reproduce.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from _support import invoke, plan_of
from tools.cli import main

PROMPT, NEGATIVE, W, STEPS, SEEDS = "a red bicycle", "blurry", 2.0, 6, (0, 1, 2, 3)

#: our sampler -> (diffusers scheduler class, extra config) for DDPM-style and flow pipelines
VP_COUNTERPARTS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_COUNTERPARTS = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", FLOW_SIGMAS),
    "unipc": ("UniPCMultistepScheduler", FLOW_SIGMAS),
}
#: our case -> the conftest ``tiny_pipeline`` it loads (sd3: shift 3.0, no T5) and its pipeline class
TINY = {"sd1": "sd", "sd2v": "sd2", "sdxl": "sdxl", "sd3": "sd3"}
PIPELINES = {"sd1": diffusers.StableDiffusionPipeline, "sd2v": diffusers.StableDiffusionPipeline,
             "sdxl": diffusers.StableDiffusionXLPipeline, "sd3": diffusers.StableDiffusion3Pipeline}
#: components a saved SD3 pipeline without T5 lacks, named as absent when loading it
LOAD_EXTRA = {"sd3": {"text_encoder_3": None, "tokenizer_3": None, "image_encoder": None,
                      "feature_extractor": None}}
CASES = [(name, sampler) for name in ("sd1", "sd2v", "sdxl") for sampler in VP_COUNTERPARTS] + [
    ("sd3", sampler) for sampler in FLOW_COUNTERPARTS]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline):
    built = {}

    def get(name):
        if name not in built:
            path = tiny_pipeline(TINY[name])
            # the oracle is the pipeline as a user loads the saved folder: its scheduler config is then the
            # file's (an in-memory config also remembers which values were defaults, which from_config
            # treats differently)
            pipe = PIPELINES[name].from_pretrained(path, local_files_only=True, **LOAD_EXTRA.get(name, {}))
            pipe.set_progress_bar_config(disable=True)
            built[name] = (pipe, path)
        return built[name]

    return get


def counterpart(pipe, name: str, sampler: str):
    cls_name, extra = (FLOW_COUNTERPARTS if name == "sd3" else VP_COUNTERPARTS)[sampler]
    config = dict(pipe.scheduler.config)
    if name == "sd3":
        extra = {**extra, **({"flow_shift": config.get("shift", 1.0)} if "use_flow_sigmas" in extra else {})}
    return getattr(diffusers, cls_name).from_config(config, **extra)


def diffusers_images(pipe, name: str, sampler: str, output_type: str, seeds=SEEDS):
    pipe.scheduler = counterpart(pipe, name, sampler)
    images = []
    for seed in seeds:
        with torch.no_grad():
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=1 + W,
                       generator=torch.Generator().manual_seed(seed), output_type=output_type).images
        images.append(np.asarray(out[0]) if output_type == "pil" else out[0])
    return images


def our_command(path, sampler, outdir):
    return ["generate", "--model", f"diffusers:{path}", "--schedule", "diffusers", "--sampler", sampler,
            "--steps", str(STEPS), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--guidance", str(W),
            "--seeds", "0-3", "--outdir", str(outdir), "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("name,sampler", CASES)
@pytest.mark.slow
def test_float_images_match_the_pipeline(pipelines, name, sampler):
    from tools.request import Prompting

    pipe, path = pipelines(name)
    plan = plan_of(f"diffusers:{path}", list(SEEDS), path / "unused", sampler=sampler, schedule="diffusers",
                   steps=STEPS, guidance=W, device="cpu",
                   prompting=Prompting(prompt=PROMPT, negative_prompt=NEGATIVE))
    ours = (plan.sampling.images(list(SEEDS)) / 2 + 0.5).clamp(0, 1)
    theirs = torch.stack(diffusers_images(pipe, name, sampler, "pt"))
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name,sampler", [("sd1", "dpmpp_2m"), ("sdxl", "euler"), ("sd3", "euler")])
@pytest.mark.slow
def test_png_bytes_match_the_pipeline(pipelines, tmp_path, name, sampler):
    from PIL import Image

    pipe, path = pipelines(name)
    result = invoke(main, *our_command(path, sampler, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    theirs = np.stack(diffusers_images(pipe, name, sampler, "pil"))
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"{seed:06d}.png").convert("RGB"))
                     for seed in SEEDS])
    assert ours.shape == theirs.shape
    # the float images agree to 1e-4, so a byte differs only where a value sits at a rounding boundary
    assert (ours == theirs).mean() >= 0.999
    assert np.abs(ours.astype(int) - theirs).max() <= 1


@pytest.mark.slow
def test_batch_does_not_change_the_bytes(pipelines, tmp_path):
    _, path = pipelines("sd1")
    for batch in (1, 3):
        command = our_command(path, "dpmpp_2m", tmp_path / f"b{batch}") + ["--batch", str(batch)]
        result = invoke(main, *command)
        assert result.exit_code == 0, result.output
    for seed in SEEDS:
        name = f"{seed:06d}.png"
        assert (tmp_path / "b1" / name).read_bytes() == (tmp_path / "b3" / name).read_bytes()


def _init_and_mask(tmp_path, size: int):
    """A smooth RGB init image and a mask whose right half is white (generate), as PNG files."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy], axis=2)
    init = ((rgb - rgb.min()) / (rgb.max() - rgb.min()) * 255).round().astype(np.uint8)
    mask = np.zeros((size, size, 3), np.uint8)
    mask[:, size // 2:] = 255
    Image.fromarray(init).save(tmp_path / "init.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return Image.fromarray(init), Image.fromarray(mask)


@pytest.mark.parametrize("edit", ["img2img", "inpaint"])
def test_editing_matches_the_img2img_and_inpaint_pipelines(pipelines, tmp_path, edit):
    """img2img (strength 0.6) and inpainting with a 4-channel UNet (its mask-blending mode): the init
    image is encoded with the seed's first draw and the start noise is its second, as the pipelines do."""
    from tools.request import Prompting
    from tools.steering import Steering

    pipe, path = pipelines("sd1")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    init, mask = _init_and_mask(tmp_path, size)
    sampler, seeds = "dpmpp_2m", [0, 1]
    if edit == "img2img":
        steering = Steering(init_image=str(tmp_path / "init.png"), strength=0.6)
        oracle = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
        call = {"image": init, "strength": 0.6}
    else:
        steering = Steering(init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"))
        oracle = diffusers.StableDiffusionInpaintPipeline(**pipe.components)
        call = {"image": init, "mask_image": mask}
    oracle.set_progress_bar_config(disable=True)
    oracle.scheduler = counterpart(pipe, "sd1", sampler)
    plan = plan_of(f"diffusers:{path}", seeds, tmp_path / "unused", sampler=sampler, schedule="diffusers",
                   steps=STEPS, guidance=W, device="cpu", steering=steering,
                   prompting=Prompting(prompt=PROMPT, negative_prompt=NEGATIVE))
    ours = (plan.sampling.images(seeds) / 2 + 0.5).clamp(0, 1)
    theirs = []
    for seed in seeds:
        with torch.no_grad():
            theirs.append(oracle(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                                 guidance_scale=1 + W, generator=torch.Generator().manual_seed(seed),
                                 output_type="pt", **call).images[0])
    theirs = torch.stack(theirs)
    assert (ours - theirs).abs().max().item() <= 1e-4
    if edit == "img2img":  # and the edit kept something of the init image: not plain generation
        plain = plan_of(f"diffusers:{path}", seeds, tmp_path / "unused", sampler=sampler,
                        schedule="diffusers", steps=STEPS, guidance=W, device="cpu",
                        prompting=Prompting(prompt=PROMPT, negative_prompt=NEGATIVE))
        assert (plain.sampling.images(seeds) / 2 + 0.5 - ours).abs().max().item() > 1e-2


def _in_float64(scheduler, sigmas: torch.Tensor, flow: bool):
    """The scheduler with its tables in float64 after each ``set_timesteps``: diffusers keeps
    ``alphas_cumprod`` and its sigmas in float32 whatever the model's dtype (its step's coefficients then
    carry float32 round-off, ~1e-8 on these images); the sigmas are the plan's, exact in float64."""
    original = scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
        if hasattr(scheduler, "final_alpha_cumprod"):
            scheduler.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod).double()
        if hasattr(scheduler, "sigmas") and not isinstance(scheduler, diffusers.DDIMScheduler):
            scheduler.sigmas = sigmas / (1 + sigmas) if flow else sigmas.clone()  # flow: t

    scheduler.set_timesteps = set_timesteps
    return scheduler


@pytest.mark.parametrize("name,sampler", [("sd1", "ddim"), ("sd2v", "unipc"), ("sd3", "unipc")])
@pytest.mark.slow
def test_float64_through_the_python_api(pipelines, name, sampler):
    """In float64, where the scheduler's step keeps float64 (DDIM, UniPC; Euler and DPM-Solver cast the
    sample to float32 in every step) and with its float32 tables made float64, the same seeds give the
    pipeline's images to 1e-8. The pipeline draws float64 noise itself when run in float64, so it is
    handed our latents: the seed's float32 draw, cast (what `edm generate` samples from in every
    precision)."""
    from samplers.noise import latents as seed_latents
    from tools.request import Prompting

    pipe, path = pipelines(name)
    seeds = [0, 1]
    plan = plan_of(f"diffusers:{path}", seeds, path / "unused", sampler=sampler, schedule="diffusers",
                   steps=STEPS, guidance=W, device="cpu", dtype="float64",
                   prompting=Prompting(prompt=PROMPT, negative_prompt=NEGATIVE))
    ours = (plan.sampling.images(seeds) / 2 + 0.5).clamp(0, 1)
    pipe64 = type(pipe)(**pipe.components).to(dtype=torch.float64)
    pipe64.set_progress_bar_config(disable=True)
    pipe64.scheduler = _in_float64(counterpart(pipe, name, sampler), plan.sampling.sigmas, flow=name == "sd3")
    theirs = []
    for seed in seeds:
        latents = seed_latents([seed], plan.sampling.model.shape, dtype=torch.float64)
        with torch.no_grad():
            theirs.append(pipe64(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                                 guidance_scale=1 + W, latents=latents, output_type="pt").images[0])
    pipe.to(dtype=torch.float32)  # the components are shared with the float32 fixture
    assert ours.dtype == torch.float64
    error = (ours - torch.stack(theirs)).abs().max().item()
    assert error <= 1e-8

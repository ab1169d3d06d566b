"""Transformer pipelines through ``diffusers:DIR``: DiT (``DiTPipeline``, class-conditional, learned sigma)
and PixArt (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``, a T5 text encoder).

The oracle is the pipeline object itself, loaded from the saved tiny folder (``pipelines_tiny``), called
once per seed with ``generator=torch.Generator().manual_seed(seed)`` and ``guidance_scale = 1 + W``, its
scheduler replaced by the counterpart of our sampler built from its own config (what ``--schedule
diffusers`` reproduces). PixArt is called with ``clean_caption=False`` (the default needs bs4 / ftfy and
falls back to it without them) and ``use_resolution_binning=False`` (binning generates another size).
"""

from __future__ import annotations

import json
import shutil

import diffusers
import numpy as np
import pytest
import torch

from _support import assert_usage_error, invoke, plan_of
from tools.cli import main

W, STEPS, SEEDS = 2.0, 6, (0, 1)
PROMPT, NEGATIVE = "A Red bicycle ", "blurry"
CLASS = 207
#: our sampler -> (its diffusers counterpart, the settings that make it run our algorithm)
COUNTERPARTS = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "solver_type": "midpoint", "euler_at_final": False}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}
PIPELINES = {"dit": diffusers.DiTPipeline, "pixart": diffusers.PixArtAlphaPipeline,
             "pixart_sigma": diffusers.PixArtSigmaPipeline, "pixart_micro": diffusers.PixArtAlphaPipeline}
# (DDIM on PixArt's linspace spacing does not step to its next timestep: not reproducible, refused)
CASES = [("dit", "ddim"), ("dit", "dpmpp_2m"), ("dit", "unipc"), ("pixart", "dpmpp_2m"), ("pixart", "unipc"),
         ("pixart", "euler"), ("pixart_sigma", "dpmpp_2m"), ("pixart_micro", "dpmpp_2m")]

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline):
    built = {}

    def get(name):
        if name not in built:
            path = tiny_pipeline(name)
            pipe = PIPELINES[name].from_pretrained(path, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            built[name] = (pipe, path)
        return built[name]

    return get


def their_images(pipe, name, sampler, *, guidance_scale=1 + W, output_type="pt", seeds=SEEDS):
    """The pipeline's images, one call per seed (``guidance_scale`` None: the pipeline's default)."""
    cls_name, extra = COUNTERPARTS[sampler]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    kwargs = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    images = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if name == "dit":
                out = pipe([CLASS], num_inference_steps=STEPS, generator=generator, output_type=output_type,
                           **kwargs).images
            else:
                out = pipe(PROMPT, negative_prompt=NEGATIVE, height=16, width=16, num_inference_steps=STEPS,
                           generator=generator, output_type=output_type, clean_caption=False,
                           use_resolution_binning=False, **kwargs).images
        images.append(out[0] if output_type == "pt" else np.asarray(out[0]))
    return images


def conditioning(name) -> dict:
    from tools.request import Prompting

    if name == "dit":
        return {"class_label": CLASS}
    return {"prompting": Prompting(prompt=PROMPT, negative_prompt=NEGATIVE, height=16, width=16)}


@pytest.mark.parametrize("name,sampler", CASES)
def test_schedule_diffusers_gives_the_pipelines_own_image_per_seed(pipelines, name, sampler):
    pipe, path = pipelines(name)
    plan = plan_of(f"diffusers:{path}", list(SEEDS), path / "unused", sampler=sampler, schedule="diffusers",
                   steps=STEPS, guidance=W, device="cpu", **conditioning(name))
    ours = (plan.sampling.images(list(SEEDS)) / 2 + 0.5).clamp(0, 1)
    theirs = torch.stack(their_images(pipe, name, sampler))
    assert ours.shape == theirs.shape == (len(SEEDS), 3, 16, 16)
    assert theirs.std() > 0.05  # an image, not a constant
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_dit_without_guidance_is_the_conditional_model(pipelines):
    """w = 0 is guidance_scale 1, where DiTPipeline runs the class alone (no null-class half)."""
    pipe, path = pipelines("dit")
    plan = plan_of(f"diffusers:{path}", [3], path / "unused", sampler="dpmpp_2m", schedule="diffusers",
                   steps=STEPS, guidance=0.0, device="cpu", class_label=CLASS)
    ours = (plan.sampling.images([3]) / 2 + 0.5).clamp(0, 1)
    theirs = torch.stack(their_images(pipe, "dit", "dpmpp_2m", guidance_scale=1.0, seeds=(3,)))
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["dit", "pixart"])
def test_png_bytes_with_the_pipelines_default_guidance(pipelines, tmp_path, name):
    """`edm generate` without --guidance guides as the pipeline does by default (DiT's guidance_scale 4,
    PixArt's 4.5: w = guidance_scale - 1); the PNGs are the pipeline's PIL images."""
    from PIL import Image

    pipe, path = pipelines(name)
    args = ["--class", CLASS] if name == "dit" else ["--prompt", PROMPT, "--negative-prompt", NEGATIVE]
    result = invoke(main, "generate", "--model", f"diffusers:{path}", "--schedule", "diffusers", "--sampler",
                    "dpmpp_2m", "--steps", STEPS, "--seeds", "0-1", "--outdir", tmp_path, "--no-progress",
                    "--device", "cpu", *args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "edm-generate.json").read_text())
    assert record["guidance"] == (3.0 if name == "dit" else 3.5)
    theirs = np.stack(their_images(pipe, name, "dpmpp_2m", guidance_scale=None, output_type="pil"))
    ours = np.stack([np.asarray(Image.open(tmp_path / f"{s:06d}.png").convert("RGB")) for s in SEEDS])
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_dit_unconditional_takes_no_default_guidance(tiny_pipeline, tmp_path):
    """The pipeline's default guidance needs the class: --unconditional samples the null class, w = 0."""
    result = invoke(main, "generate", "--model", f"diffusers:{tiny_pipeline('dit')}", "--unconditional",
                    "--steps", 3, "--seeds", 0, "--outdir", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "edm-generate.json").read_text())
    assert record["guidance"] == 0.0 and record["class"] is None


@pytest.mark.parametrize("name", ["dit", "pixart"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_generic_samplers_run_on_them(tiny_pipeline, name, sampler):
    path = tiny_pipeline(name)
    plan = plan_of(f"diffusers:{path}", [0, 1], path / "unused", sampler=sampler, schedule="karras", steps=4,
                   guidance=1.0, device="cpu", **conditioning(name))
    images = plan.sampling.images([0, 1])
    assert images.shape == (2, 3, 16, 16)
    assert bool(torch.isfinite(images).all()) and float(images.std()) > 0.01


def test_dit_class_convention(tiny_pipeline):
    """One-hot labels give the class; an all-zero row is the null class (index num_classes = 1000, the
    pipeline's); the denoiser is eps-preconditioned on the first half of the learned-sigma output."""
    from tools.models import load_model

    model = load_model(f"diffusers:{tiny_pipeline('dit')}")
    assert model.num_classes == 1000 and model.default_guidance == 3.0
    transformer = model.denoiser.inner.backbone.transformer
    x = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.0, 2.0])
    labels = torch.zeros(2, 1000)
    labels[0, CLASS] = 1
    with torch.no_grad():
        ours = model.denoiser(x, sigma, class_labels=labels)
        t = model.denoiser.sigma_to_t(sigma)
        out = transformer(x / (1 + sigma**2).sqrt()[:, None, None, None], timestep=t,
                          class_labels=torch.tensor([CLASS, 1000])).sample
    assert out.shape[1] == 8
    expected = x - sigma[:, None, None, None] * out[:, :4]
    assert (ours - expected).abs().max().item() <= 1e-5


def test_info_shows_their_settings(tiny_pipeline):
    dit = invoke(main, "info", f"diffusers:{tiny_pipeline('dit')}")
    assert dit.exit_code == 0, dit.output
    for fragment in ("DiTPipeline (DiT", "DiTTransformer2DModel: 2 layers, width 32, 2 heads, patch 2",
                     "learned sigma", "the first 4 (the eps mean)", "207: golden retriever", "index 1000",
                     "DDIMScheduler", "--class 0..999; default --guidance 3 (guidance_scale 4)"):
        assert fragment in dit.output, dit.output
    assert "text encoders" not in dit.output
    for name, tokens in (("pixart", 120), ("pixart_sigma", 300)):
        result = invoke(main, "info", f"diffusers:{tiny_pipeline(name)}", "--json")
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)["info"]
        assert info["family"] == "PixArt-alpha / Sigma" and info["learned_sigma"] is True
        assert info["transformer"] == {"class": "PixArtTransformer2DModel", "layers": 2, "width": 48,
                                       "heads": 2, "patch_size": 2, "sample_size": 8}
        assert info["encoders"] == {"text_encoder": "T5EncoderModel"}
        assert info["max_sequence_length"] == tokens and info["micro_conditions"] is False
        assert info["guidance_scale"] == 4.5 and info["scheduler"]["class"] == "DPMSolverMultistepScheduler"
        assert info["conditions"] == ["encoder_hidden_states", "encoder_attention_mask"]
    text = invoke(main, "info", f"diffusers:{tiny_pipeline('pixart_micro')}")
    assert "micro-conditions     resolution and aspect ratio" in text.output, text.output
    assert "default --guidance 3.5 (guidance_scale 4.5)" in text.output


def test_the_hub_class_name_transformer2dmodel_loads(tiny_pipeline, tmp_path):
    """DiT and PixArt checkpoints on the hub name their transformer ``Transformer2DModel``, which diffusers
    loads as the DiT / PixArt class by its norm type."""
    from tools.models import load_model

    for name, family in (("dit", "DiT (class-conditional)"), ("pixart", "PixArt-alpha / Sigma")):
        copy = shutil.copytree(tiny_pipeline(name), tmp_path / name)
        for file in (copy / "model_index.json", copy / "transformer" / "config.json"):
            config = json.loads(file.read_text())
            if "transformer" in config:
                config["transformer"] = ["diffusers", "Transformer2DModel"]
            else:
                config["_class_name"] = "Transformer2DModel"
            file.write_text(json.dumps(config))
        assert load_model(f"diffusers:{copy}").info["family"] == family


def _generate(path, *args):
    return invoke(main, "generate", "--model", f"diffusers:{path}", "--steps", 3, "--seeds", 0,
                  "--no-progress", *map(str, args))


BAD = {
    "dit given a prompt": ("dit", ["--prompt", "a cat"], ["--prompt", "takes no text", "a class"]),
    "dit class out of range": ("dit", ["--class", 1000], ["--class", "out of range", "0..999"]),
    "dit with a width": ("dit", ["--width", 32], ["--width", "16x16 images only"]),
    "dit euler with the pipeline's loop": ("dit", ["--class", 1, "--schedule", "diffusers", "--sampler",
                                                   "euler"],
                                           ["--schedule", "scale_model_input", "ddim, dpmpp_2m"]),
    "pixart without a prompt": ("pixart", [], ["--prompt", "give --prompt TEXT or --prompts FILE"]),
    "pixart given a class": ("pixart", ["--prompt", "a cat", "--class", 3], ["--class", "takes no class"]),
    "pixart width off its patches": ("pixart", ["--prompt", "a cat", "--width", 18],
                                     ["--width", "multiple of 4"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_exit_2(tiny_pipeline, tmp_path, case):
    name, args, fragments = BAD[case]
    result = _generate(tiny_pipeline(name), *args, "--outdir", tmp_path / "out")
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "out").exists()

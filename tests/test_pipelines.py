"""Stable Diffusion 1.x/2.x, SDXL and SD3 pipelines saved with ``save_pretrained`` load into a LoadedModel
whose conditioner, denoiser and VAE give what the pipeline's own components give.

The oracle is the in-memory diffusers pipeline the tiny builders return (``tests/pipelines_tiny.py``); the
model under test is loaded back from its saved directory. Offline: HF_HUB_OFFLINE=1, local files only.
"""

from __future__ import annotations

import json
import shutil

import pipelines_tiny
import pytest
import torch
from pipelines_tiny import BUILDERS

from tools.common import BadInput
from tools.models import ModelError
from tools.models.pipelines import claims_pipeline, load_pipeline, resized

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = "a very long prompt " * 8  # 152 characters: one token each, beyond the 77 tokens of CLIP
PROMPTS = ["a cat", LONG]
NEGATIVES = ["blurry", "ugly dog"]
SIZE = 16  # the default image size of the tiny pipelines


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (in-memory pipeline, loaded model), built and loaded once per module."""
    out = {}
    for name, build in BUILDERS.items():
        path = tmp_path_factory.mktemp(name)
        pipe = build(path)
        out[name] = (pipe, load_pipeline(path, device="cpu", dtype=torch.float32), path)
    return out


def _equal(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 0.0, rtol: float = 0.0):
    """Equal to ``atol + rtol |theirs|`` elementwise (the default: exactly)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    error = ((ours - theirs).abs() - rtol * theirs.abs()).max().item()
    assert error <= atol, error


# ----------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("name, pipeline, prediction, guidance", [
    ("sd", "StableDiffusionPipeline", "eps", 6.5),
    ("sd2", "StableDiffusionPipeline", "v", 6.5),
    ("sdxl", "StableDiffusionXLPipeline", "eps", 4.0),
    ("sd3", "StableDiffusion3Pipeline", "flow", 6.0),
])
def test_loaded_model_fields(built, name, pipeline, prediction, guidance):
    pipe, model, path = built[name]
    assert claims_pipeline(path)
    assert model.kind == "diffusers" and model.num_classes == 0
    assert model.shape == (4, 8, 8) and model.image_shape == (3, SIZE, SIZE)
    assert model.default_guidance == guidance
    assert model.info["pipeline"] == pipeline and model.info["prediction"] == prediction
    assert model.info["default_size"] == [SIZE, SIZE]
    assert model.info["vae"]["scaling_factor"] == pipe.vae.config.scaling_factor
    assert model.info["parameters"] == sum(model.info["parameters_by_component"].values()) > 0
    json.dumps(model.info)  # edm info --json
    if prediction == "flow":
        assert model.sigmas is None and model.info["shift"] == 3.0
        assert model.info["vae"]["shift_factor"] == pipe.vae.config.shift_factor
        assert model.sigma_max == pytest.approx(3.0 * 999)
    else:
        abar = pipe.scheduler.alphas_cumprod.double()
        torch.testing.assert_close(model.sigmas.cpu(), ((1 - abar) / abar).sqrt())
        assert model.threshold is None
        assert "steps_offset" in model.info["scheduler"]["ignored"]
        assert "beta_schedule" in model.info["scheduler"]["honoured"]
        # sigma -> timestep as diffusers interpolates: the table's levels are its integer timesteps
        k = torch.tensor([0.0, 17.0, 500.0, 999.0], dtype=torch.float64)
        torch.testing.assert_close(model.denoiser.sigma_to_t(model.sigmas[k.long()]), k)
    assert not model.ignored


# ----------------------------------------------------------------------------------------------
# Conditioners: exactly the pipeline's encode_prompt


@pytest.mark.parametrize("name", ["sd", "sd2"])
def test_sd_conditioner_matches_encode_prompt(built, name):
    pipe, model, _ = built[name]
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=NEGATIVES)
        _, default = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=None)
    cond = model.conditioner.encode(PROMPTS, height=SIZE, width=SIZE)
    assert set(cond) == {"encoder_hidden_states"}
    _equal(cond["encoder_hidden_states"], positive)
    _equal(model.conditioner.encode(NEGATIVES, height=SIZE, width=SIZE)["encoder_hidden_states"], negative)
    _equal(model.conditioner.encode([None, None], height=SIZE, width=SIZE)["encoder_hidden_states"], default)
    assert model.conditioner.truncated(LONG) and not model.conditioner.truncated("a cat")
    # not degenerate: different prompts, different states
    assert (positive[0] - positive[1]).abs().max() > 1e-2


def test_sdxl_conditioner_matches_encode_prompt(built):
    pipe, model, _ = built["sdxl"]
    height, width = 24, 32
    with torch.no_grad():
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=NEGATIVES)
        _, zero, _, zero_pooled = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=positive.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    cond = model.conditioner.encode(PROMPTS, height=height, width=width)
    assert set(cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}
    _equal(cond["encoder_hidden_states"], positive)
    _equal(cond["text_embeds"], pooled)
    _equal(cond["time_ids"], time_ids.repeat(2, 1))
    neg = model.conditioner.encode(NEGATIVES, height=height, width=width)
    _equal(neg["encoder_hidden_states"], negative)
    _equal(neg["text_embeds"], negative_pooled)
    _equal(neg["time_ids"], time_ids.repeat(2, 1))
    # no negative prompt: force_zeros_for_empty_prompt
    assert not bool(zero.any()) and not bool(zero_pooled.any())
    empty = model.conditioner.encode([None, None], height=height, width=width)
    _equal(empty["encoder_hidden_states"], zero)
    _equal(empty["text_embeds"], zero_pooled)
    # None rows are zeros, the others as encoded on their own; an explicit "" is encoded, not zeroed
    mixed = model.conditioner.encode(["a cat", None, ""], height=height, width=width)
    torch.testing.assert_close(mixed["encoder_hidden_states"][0], positive[0])
    assert not bool(mixed["encoder_hidden_states"][1].any()) and bool(mixed["encoder_hidden_states"][2].any())


@pytest.mark.parametrize("name", ["sd3", "sd3_t5"])
def test_sd3_conditioner_matches_encode_prompt(built, name):
    pipe, model, _ = built[name]
    with torch.no_grad():
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True, negative_prompt=NEGATIVES)
        _, default, _, default_pooled = pipe.encode_prompt(
            PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True)
    cond = model.conditioner.encode(PROMPTS, height=SIZE, width=SIZE)
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    assert positive.shape == (2, 77 + 256, 96)  # CLIP states padded to the T5 width, then T5's (or zeros)
    assert bool(positive[:, 77:].any()) == (name == "sd3_t5")
    _equal(cond["encoder_hidden_states"], positive)
    _equal(cond["pooled_projections"], pooled)
    neg = model.conditioner.encode(NEGATIVES, height=SIZE, width=SIZE)
    _equal(neg["encoder_hidden_states"], negative)
    _equal(neg["pooled_projections"], negative_pooled)
    empty = model.conditioner.encode([None, None], height=SIZE, width=SIZE)
    _equal(empty["encoder_hidden_states"], default)
    _equal(empty["pooled_projections"], default_pooled)


# ----------------------------------------------------------------------------------------------
# Denoisers: the manual computation from the pipeline's own network


SIGMAS = torch.tensor([0.05, 1.0, 7.0])


def _latents(seed=0, batch=3, shape=(4, 8, 8)):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _column(sigma):
    return sigma.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("name", ["sd", "sd2", "sdxl"])
def test_unet_denoiser_matches_manual_computation(built, name):
    pipe, model, _ = built[name]
    prompts = ["a cat", "a dog", None]
    cond = model.conditioner.encode(prompts, height=SIZE, width=SIZE)
    x = _latents() * _column(SIGMAS)
    with torch.no_grad():
        ours = model.denoiser(x, SIGMAS, **cond)
        abar = 1 / (1 + _column(SIGMAS) ** 2)
        x_vp = x * abar.sqrt()
        t = model.denoiser.sigma_to_t(SIGMAS)
        added = None
        if name == "sdxl":
            added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        out = pipe.unet(x_vp, t, encoder_hidden_states=cond["encoder_hidden_states"],
                        added_cond_kwargs=added).sample
    if name == "sd2":  # v-prediction
        x0 = abar.sqrt() * x_vp - (1 - abar).sqrt() * out
    else:
        x0 = (x_vp - (1 - abar).sqrt() * out) / abar.sqrt()
    _equal(ours, x0, atol=1e-5, rtol=1e-5)
    # the conditions matter
    other = model.conditioner.encode(["a tree", "a dog", None], height=SIZE, width=SIZE)
    with torch.no_grad():
        changed = model.denoiser(x, SIGMAS, **other)
    assert (changed[0] - ours[0]).abs().max() > 1e-4
    _equal(changed[1:], ours[1:], atol=1e-5, rtol=1e-5)


def test_flow_denoiser_matches_manual_computation(built):
    pipe, model, _ = built["sd3"]
    cond = model.conditioner.encode(["a cat", "a dog", None], height=SIZE, width=SIZE)
    x = _latents() * _column(SIGMAS)
    with torch.no_grad():
        ours = model.denoiser(x, SIGMAS, **cond)
        t = SIGMAS / (1 + SIGMAS)
        x_t = x / (1 + _column(SIGMAS))
        v = pipe.transformer(hidden_states=x_t, timestep=1000 * t, encoder_hidden_states=cond[
            "encoder_hidden_states"], pooled_projections=cond["pooled_projections"]).sample
        _equal(ours, x_t - _column(t) * v, atol=1e-5, rtol=1e-5)
        # sigma = inf (diffusers' start at t = 1): x is the unit noise u = x_t, D = u - v(u, 1000)
        u = _latents(1)
        at_inf = model.denoiser(u, torch.full((3,), float("inf")), **cond)
        v1 = pipe.transformer(hidden_states=u, timestep=torch.full((3,), 1000.0), encoder_hidden_states=cond[
            "encoder_hidden_states"], pooled_projections=cond["pooled_projections"]).sample
    _equal(at_inf, u - v1, atol=1e-5, rtol=1e-5)


def test_denoiser_under_guidance_and_bad_conditions(built):
    from samplers.guidance import ClassifierFreeGuidance

    _, model, _ = built["sdxl"]
    cond = model.conditioner.encode(["a cat", "a dog"], height=SIZE, width=SIZE)
    negative = model.conditioner.encode([None, None], height=SIZE, width=SIZE)
    x, sigma = _latents(batch=2) * 2, torch.tensor([2.0, 2.0])
    with torch.no_grad():
        guided = ClassifierFreeGuidance(model.denoiser, 3.0, negative)(x, sigma, **cond)
        c, n = model.denoiser(x, sigma, **cond), model.denoiser(x, sigma, **negative)
        # a condition of batch 1 is broadcast
        one = model.denoiser(x[:1].expand(2, -1, -1, -1), sigma, **{k: v[:1] for k, v in cond.items()})
    _equal(guided, c + 3.0 * (c - n), atol=1e-4)
    _equal(one[1], c[0], atol=1e-5)
    with pytest.raises(ValueError, match="missing text_embeds"):
        model.denoiser(x, sigma, encoder_hidden_states=cond["encoder_hidden_states"],
                       time_ids=cond["time_ids"])
    with pytest.raises(ValueError, match="class labels"):
        model.denoiser(x, sigma, class_labels=torch.eye(2), **cond)


# ----------------------------------------------------------------------------------------------
# The VAE


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_vae_decode_and_encode_match_the_pipeline(built, name):
    pipe, model, _ = built[name]
    vae, config = model.autoencoder, pipe.vae.config
    shift = config.shift_factor or 0.0
    assert vae.factor == 2 and vae.scaling_factor == config.scaling_factor and vae.shift_factor == shift
    latents = _latents(2)
    images = vae.decode(latents)
    with torch.no_grad():
        reference = pipe.vae.decode(latents / config.scaling_factor + shift).sample
    _equal(images, reference, atol=1e-5)
    assert images.dtype == torch.float32 and images.std() > 1e-2  # not degenerate
    assert images.flatten(1).std(dim=1).min() > 1e-2
    pictures = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        dist = pipe.vae.encode(pictures).latent_dist
        mean = (dist.mean - shift) * config.scaling_factor
        sample = (dist.sample(torch.Generator().manual_seed(9)) - shift) * config.scaling_factor
    _equal(vae.encode(pictures), mean, atol=1e-5)
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(9))
    _equal(vae.encode(pictures, noise), sample, atol=1e-5)
    assert vae.image_shape((4, 5, 6)) == (3, 10, 12) and vae.latent_shape(10, 12) == (4, 5, 6)


# ----------------------------------------------------------------------------------------------
# Other sizes


def test_resized(built):
    _, sd, _ = built["sd"]
    model = resized(sd, 24, 30)
    assert model.shape == (4, 12, 15) and model.image_shape == (3, 24, 30) and sd.shape == (4, 8, 8)
    assert resized(sd, None, None) is sd and resized(sd, 20, None).shape == (4, 10, 8)
    with pytest.raises(BadInput, match="--height 17") as error:
        resized(sd, 17, 16)
    assert error.value.param == "height" and "\n" not in str(error.value)

    pipe, sd3, _ = built["sd3"]
    model = resized(sd3, 24, 32)
    assert model.shape == (4, 12, 16)
    cond = model.conditioner.encode(["a cat"], height=24, width=32)
    x = _latents(batch=1, shape=model.shape)
    with torch.no_grad():
        out = model.denoiser(x, torch.tensor([1.0]), **cond)
        v = pipe.transformer(hidden_states=x / 2, timestep=torch.tensor([500.0]), **cond).sample
    _equal(out, x / 2 - 0.5 * v, atol=1e-5)
    with pytest.raises(BadInput, match="--width 30 is not a positive multiple of 4") as error:
        resized(sd3, 24, 30)  # the VAE factor 2 times the patch size 2
    assert error.value.param == "width"
    with pytest.raises(BadInput, match="--height 72"):
        resized(sd3, 72, 16)  # beyond the position embedding (16 patches of 2 latent pixels)


# ----------------------------------------------------------------------------------------------
# Bad directories


def _one_line_error(path, match):
    with pytest.raises(ModelError, match=match) as error:
        load_pipeline(path)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_directories(built, tmp_path):
    _, _, sd = built["sd"]
    broken = tmp_path / "no_unet"
    shutil.copytree(sd, broken, ignore=shutil.ignore_patterns("unet"))
    assert "unet" in _one_line_error(broken, "is missing")

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    index = json.loads((sd / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    assert "model_index.json" in _one_line_error(unknown, "KandinskyPipeline")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model_index.json").write_text("{not json")
    assert "model_index.json" in _one_line_error(corrupt, "corrupt JSON")

    assert not claims_pipeline(tmp_path)
    _one_line_error(tmp_path, "model_index.json")


def _with_unet_of(pipeline, unet_source, target):
    """A copy of a saved pipeline (its folders linked) whose ``unet`` is another pipeline's."""
    target.mkdir()
    for entry in pipeline.iterdir():
        source = unet_source / "unet" if entry.name == "unet" else entry
        if entry.is_dir():
            (target / entry.name).symlink_to(source, target_is_directory=True)
        else:
            shutil.copy(entry, target / entry.name)
    return target


def test_a_unet_of_another_family_is_refused_at_load(built, tmp_path):
    """An SDXL UNet under an SD index (and SD's under an SDXL index) used to load and fail at its first call
    ("argument of type 'NoneType' is not iterable"): the load says which component does not fit."""
    sd, sdxl = built["sd"][2], built["sdxl"][2]
    line = _one_line_error(_with_unet_of(sd, sdxl, tmp_path / "sd_xl_unet"), "added 'text_time' embedding")
    assert "sd_xl_unet/unet" in line and "Stable Diffusion 1.x/2.x" in line
    _one_line_error(_with_unet_of(sdxl, sd, tmp_path / "sdxl_sd_unet"), "not an SDXL base UNet")
    wide = tmp_path / "wide"  # an SD UNet attending to text twice the encoder's width
    pipelines_tiny._unet(cross_attention_dim=2 * pipelines_tiny.HIDDEN).save_pretrained(wide / "unet")
    line = _one_line_error(_with_unet_of(sd, wide, tmp_path / "sd_wide_unet"), "attends to text of width")
    assert f"width {2 * pipelines_tiny.HIDDEN}" in line and f"gives {pipelines_tiny.HIDDEN}" in line


def _copy_with_index(source, target, **changes):
    """A copy of a saved pipeline (its folders linked) with ``changes`` to its model_index.json."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).symlink_to(entry, target_is_directory=True)
    index = json.loads((source / "model_index.json").read_text())
    (target / "model_index.json").write_text(json.dumps({**index, **changes}))
    return target


@pytest.mark.slow
def test_other_indexes(built, tmp_path):
    _, sd, sd_path = built["sd"]
    img2img = load_pipeline(_copy_with_index(sd_path, tmp_path / "img2img",
                                             _class_name="StableDiffusionImg2ImgPipeline"))
    assert img2img.shape == sd.shape and img2img.info["pipeline"] == "StableDiffusionImg2ImgPipeline"
    _, sdxl, sdxl_path = built["sdxl"]
    model = load_pipeline(_copy_with_index(sdxl_path, tmp_path / "sdxl", force_zeros_for_empty_prompt=False))
    assert model.info["force_zeros_for_empty_prompt"] is False
    empty = model.conditioner.encode([None], height=SIZE, width=SIZE)
    _equal(empty["encoder_hidden_states"], sdxl.conditioner.encode([""], height=SIZE, width=SIZE)[
        "encoder_hidden_states"])


@pytest.mark.slow
def test_float16_networks_with_an_upcast_vae(built):
    _, _, path = built["sdxl"]
    model = load_pipeline(path, dtype=torch.float16)
    assert model.denoiser.inner.backbone.unet.dtype == torch.float16
    assert model.autoencoder.run_dtype == torch.float32 and model.info["vae"]["force_upcast"]
    cond = model.conditioner.encode(["a cat"], height=SIZE, width=SIZE)
    assert all(v.dtype == torch.float16 for v in cond.values())
    x = _latents(batch=1)
    out = model.denoiser(x, torch.tensor([1.0]), **cond)
    assert out.dtype == torch.float32 and bool(out.isfinite().all())
    images = model.autoencoder.decode(out)
    assert images.dtype == torch.float32 and images.shape == (1, 3, SIZE, SIZE)

"""Tiny random-weight pipelines (Stable Diffusion 1.x / 2.x, SDXL, SD3, DiT, PixArt, the x4 upscaler, a
latent consistency model), built offline and saved with ``save_pretrained``: the test doubles of the real
checkpoints, with the real pipelines' scheduler configs.

Each builder seeds torch, builds the pipeline from tiny components, saves it to ``path`` and returns the
in-memory pipeline (in float32, on the CPU). Sizes: latents of 4 channels and 8 x 8 at the default size,
images of 16 x 16 (a two-level VAE: scale factor 2; the upscaler's three-level VAE makes 32 x 32 images of
its 8 x 8 latents and low-res images); CLIP text encoders of width 32, 2 layers, 2 heads, with
a byte-level tokenizer whose merges are empty (each word splits into its characters), 77 tokens long.

Nothing here touches the network: the tokenizers are written from a vocabulary built in code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["BUILDERS", "DIT_CLASSES", "build_dit", "build_lcm", "build_pixart", "build_sd", "build_sd3",
           "build_sdxl", "build_upscale", "byte_vocabulary", "random_unet2d",
           "save_unet_pipeline", "tiny_t5_tokenizer", "tiny_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
HIDDEN = 32  # width of the tiny CLIP encoders
PROJECTION = 32  # projection_dim of CLIPTextModelWithProjection
MAX_LENGTH = 77

# the schedulers as the real pipelines ship them (scheduler/scheduler_config.json)
_SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "trained_betas": None}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", **_SD_BETAS, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}
SD2_SCHEDULER = {"_class_name": "DDIMScheduler", **_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False,
                 "steps_offset": 1, "skip_prk_steps": True, "prediction_type": "v_prediction"}
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", **_SD_BETAS, "interpolation_type": "linear",
                  "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
                  "use_karras_sigmas": False, "clip_sample": False}


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE), in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_vocabulary() -> dict[str, int]:
    """The 256 byte characters, the same with ``</w>`` (a word's last character), then BOS and EOS: 514
    entries, EOS last (CLIP pools at the highest id's position in its legacy configs; ours name EOS)."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def tiny_tokenizer(pad_token: str = EOS):
    """A CLIPTokenizer with the byte vocabulary and no merges, ``model_max_length`` 77."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocabulary(), merges=[], unk_token=EOS, bos_token=BOS, eos_token=EOS,
                         pad_token=pad_token, model_max_length=MAX_LENGTH)


def _text_config(projection: bool):
    from transformers import CLIPTextConfig

    vocab = byte_vocabulary()
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
                          hidden_act="gelu",
                          projection_dim=PROJECTION if projection else HIDDEN, bos_token_id=vocab[BOS],
                          eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])


def _text_encoder(projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(_text_config(projection)).eval()


def _vae(*, shift_factor=None, scaling_factor=0.18215, sd3=False, levels: int = 2):
    from diffusers import AutoencoderKL

    extra = {"use_quant_conv": False, "use_post_quant_conv": False} if sd3 else {}
    return AutoencoderKL(block_out_channels=(32, 64, 64)[:levels], in_channels=3, out_channels=3,
                         latent_channels=4, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1,
                         norm_num_groups=32, sample_size=16, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, force_upcast=True, **extra).eval()


def _unet(*, cross_attention_dim=32, linear=False, sdxl=False, upscale=False, time_cond_proj_dim=None):
    from diffusers import UNet2DConditionModel

    extra = {"in_channels": 4}
    if time_cond_proj_dim is not None:  # LCM's guidance embedding
        extra["time_cond_proj_dim"] = time_cond_proj_dim
    if upscale:  # the low-res image's 3 channels after the latent's 4; the noise level as a class
        extra = {"in_channels": 7, "num_class_embeds": UPSCALE_CLASSES}
    if sdxl:  # addition embedding of (pooled text embedding of encoder 2, the 6 time ids)
        extra.update(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + PROJECTION)
    return UNet2DConditionModel(
        sample_size=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4), use_linear_projection=linear or sdxl or upscale, norm_num_groups=32,
        **extra).eval()


def _save(pipe, path):
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return pipe


def build_sd(path, prediction_type: str = "epsilon"):
    """Stable Diffusion 1.x (PNDM, eps), or 2.x-like with ``prediction_type="v_prediction"`` (DDIM, v,
    linear projections in the UNet's transformers)."""
    import diffusers

    torch.manual_seed(0)
    if prediction_type == "epsilon":
        scheduler = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER)
    else:
        scheduler = diffusers.DDIMScheduler.from_config({**SD2_SCHEDULER, "prediction_type": prediction_type})
    pipe = diffusers.StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(), tokenizer=tiny_tokenizer(),
        unet=_unet(linear=prediction_type != "epsilon"), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    return _save(pipe, path)


#: LCM-Dreamshaper-v7's scheduler, as it ships it
LCM_SCHEDULER = {"_class_name": "LCMScheduler", **_SD_BETAS, "clip_sample": False,
                 "original_inference_steps": 50, "prediction_type": "epsilon", "set_alpha_to_one": True,
                 "steps_offset": 1, "timestep_scaling": 10.0, "timestep_spacing": "leading"}
LCM_EMBEDDING = 16  # time_cond_proj_dim of the tiny LCM UNet (256 in LCM-Dreamshaper-v7)


def build_lcm(path):
    """A latent consistency model (``LatentConsistencyModelPipeline``): an SD 1.x UNet with a guidance
    embedding (``time_cond_proj_dim``, random like the rest, so the weight matters) and LCMScheduler."""
    import diffusers

    torch.manual_seed(0)
    pipe = diffusers.LatentConsistencyModelPipeline(
        vae=_vae(), text_encoder=_text_encoder(), tokenizer=tiny_tokenizer(),
        unet=_unet(time_cond_proj_dim=LCM_EMBEDDING),
        scheduler=diffusers.LCMScheduler.from_config(LCM_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    return _save(pipe, path)


def build_sdxl(path, force_zeros_for_empty_prompt: bool = True):
    """SDXL: CLIPTextModel + CLIPTextModelWithProjection (its tokenizer pads with "!", as SDXL's does),
    a text_time UNet, the Euler scheduler of the base model and ``force_zeros_for_empty_prompt``."""
    import diffusers

    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025), text_encoder=_text_encoder(), text_encoder_2=_text_encoder(True),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(pad_token="!"),
        unet=_unet(cross_attention_dim=2 * HIDDEN, sdxl=True),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    return _save(pipe, path)


def tiny_t5_tokenizer():
    """A T5Tokenizer (Unigram) over the lowercase letters and the word-start marker, no sentinels."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [("\u2581" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _t5_encoder(width: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tiny_t5_tokenizer()), d_model=width, d_ff=64, d_kv=16, num_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def build_sd3(path, shift: float = 3.0, t5: bool = False):
    """SD3: two CLIPTextModelWithProjection; no T5 (text_encoder_3 / tokenizer_3 None: zeros in its place)
    unless ``t5``: then a tiny T5EncoderModel of width 96 with a letter-level T5Tokenizer. A tiny
    SD3Transformer2DModel (patch 2, 2 layers, 2 heads of 16; joint_attention_dim 96 so the CLIP states are
    padded), the SD3 VAE's scaling and shift, FlowMatchEulerDiscreteScheduler(shift)."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=32,
        pooled_projection_dim=2 * PROJECTION, pos_embed_max_size=16).eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5305, sd3=True),
        text_encoder=_text_encoder(True), tokenizer=tiny_tokenizer(),
        text_encoder_2=_text_encoder(True), tokenizer_2=tiny_tokenizer(pad_token="!"),
        text_encoder_3=_t5_encoder(96) if t5 else None, tokenizer_3=tiny_t5_tokenizer() if t5 else None)
    return _save(pipe, path)


#: the schedulers as DiT-XL-2-256 and PixArt-alpha / -Sigma ship them
DIT_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                 "beta_end": 0.02, "beta_schedule": "linear", "trained_betas": None, "clip_sample": False,
                 "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon"}
PIXART_SCHEDULER = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000,
                    "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "trained_betas": None,
                    "prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2,
                    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
                    "thresholding": False, "sample_max_value": 1.0, "dynamic_thresholding_ratio": 0.995,
                    "timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False,
                    "variance_type": None, "lambda_min_clipped": float("-inf")}
#: DiT's classes: ImageNet's 1000 (its pipeline's null class is index 1000 whatever the model's count)
DIT_CLASSES = 1000


def build_dit(path, learned_sigma: bool = True):
    """DiT (``DiTPipeline``): a tiny ``DiTTransformer2DModel`` (patch 2, 2 layers, 2 heads of 16, 1000
    classes plus the null class), its output the eps mean and a learned variance (``learned_sigma``: 8
    channels, else 4), the SD VAE's scaling, DiT-XL-2-256's DDIM scheduler and a few ``id2label`` names."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8 if learned_sigma else 4,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=DIT_CLASSES).eval()
    with torch.no_grad():  # adaLN-Zero starts at zero: random modulations make the output depend on t and y
        for name, param in transformer.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                param.normal_(0, 0.2)
    id2label = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "207": "golden retriever"}
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=_vae(),
                                 scheduler=diffusers.DDIMScheduler.from_config(DIT_SCHEDULER),
                                 id2label=id2label)
    _save(pipe, path)
    # save_pretrained leaves id2label out (DiTPipeline does not register it); DiT's hub index has it
    index = Path(path) / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "id2label": id2label}, indent=2))
    return pipe


def build_pixart(path, sigma: bool = False, micro_conditions: bool = False):
    """PixArt-alpha (``PixArtAlphaPipeline``), or PixArt-Sigma with ``sigma``: a tiny
    ``PixArtTransformer2DModel`` (patch 2, 2 layers, 2 heads of 24: a width the size embeddings' thirds
    divide; learned sigma: 8 output channels)
    attending to a T5EncoderModel of width 48 (letter-level T5Tokenizer), the DPM-Solver scheduler PixArt
    ships. ``micro_conditions``: the transformer's ``sample_size`` is 128, as PixArt-alpha 1024's, so the
    alpha pipeline passes the resolution and aspect ratio (the images stay 16 x 16: the position embedding
    follows the input size)."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=48, sample_size=128 if micro_conditions else 8, patch_size=2,
        caption_channels=48, num_embeds_ada_norm=1000).eval()
    with torch.no_grad():  # random modulations (adaLN-single starts near zero) so t and the text matter
        for name, param in transformer.named_parameters():
            if "adaln_single.linear" in name or "scale_shift_table" in name or "proj_out" in name:
                param.normal_(0, 0.2)
    cls = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    pipe = cls(tokenizer=tiny_t5_tokenizer(), text_encoder=_t5_encoder(48), vae=_vae(),
               transformer=transformer,
               scheduler=diffusers.DPMSolverMultistepScheduler.from_config(PIXART_SCHEDULER))
    return _save(pipe, path)


#: the upscaler's schedulers and noise-level range, in the x4 upscaler's style: the low-res image noised by
#: a DDPMScheduler, the latent denoised by a v-prediction DDIMScheduler, both on betas 0.0001..0.02
UPSCALE_LOW_RES_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                             "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear",
                             "trained_betas": None, "clip_sample": True, "variance_type": "fixed_small"}
UPSCALE_SCHEDULER = {**SD2_SCHEDULER, "beta_start": 0.0001, "beta_end": 0.02}
UPSCALE_MAX_NOISE_LEVEL = 350
UPSCALE_CLASSES = 1000  # the UNet's noise-level embeddings (num_class_embeds)


def build_upscale(path):
    """The x4 upscaler (``StableDiffusionUpscalePipeline``): a tiny UNet of 7 input channels (the latent's 4,
    then the low-res image's 3) whose class embedding takes the noise level, a three-level VAE (latents of
    the low-res size, images 4x it; its scaling 0.08333, which the pipeline imposes), one CLIP encoder, the
    DDPM low_res_scheduler and a v-prediction DDIMScheduler, max_noise_level 350."""
    import diffusers

    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=_vae(scaling_factor=0.08333, levels=3), text_encoder=_text_encoder(), tokenizer=tiny_tokenizer(),
        unet=_unet(upscale=True),
        low_res_scheduler=diffusers.DDPMScheduler.from_config(UPSCALE_LOW_RES_SCHEDULER),
        scheduler=diffusers.DDIMScheduler.from_config(UPSCALE_SCHEDULER),
        max_noise_level=UPSCALE_MAX_NOISE_LEVEL)
    return _save(pipe, path)


#: name -> builder(path) of each tiny pipeline the tests use (conftest's ``tiny_pipeline`` builds them once)
BUILDERS = {
    "sd": build_sd,  # SD 1.x: PNDM, eps
    "sd2": lambda path: build_sd(path, prediction_type="v_prediction"),  # SD 2.x-like: DDIM, v
    "sdxl": build_sdxl,
    "sd3": build_sd3,  # shift 3, no T5
    "sd3_t5": lambda path: build_sd3(path, t5=True),
    "dit": build_dit,  # DDIM, eps, learned sigma
    "pixart": build_pixart,  # PixArt-alpha: DPM-Solver++, T5 of 120 tokens
    "pixart_sigma": lambda path: build_pixart(path, sigma=True),  # T5 of 300 tokens
    "pixart_micro": lambda path: build_pixart(path, micro_conditions=True),  # resolution, aspect ratio
    "upscale": build_upscale,  # x4: DDPM low-res noise, DDIM, v
    "lcm": build_lcm,  # latent consistency model: guidance embedding, LCMScheduler
}


def random_unet2d(size: int, channels: int, num_class_embeds: int | None = None):
    """A tiny seeded pixel-space ``UNet2DModel`` (the ``diffusers:DIR`` model of the interop tests)."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    ).eval()


def save_unet_pipeline(path, scheduler=None, *, unet=None, size: int = 8, channels: int = 2,
                       num_class_embeds: int | None = None, layout: str = "pipeline"):
    """A ``diffusers:DIR`` model: ``unet`` (default ``random_unet2d(size, channels, num_class_embeds)``) and
    ``scheduler`` (a diffusers scheduler object; None saves the UNet alone) written with
    ``save_pretrained`` into ``path/unet`` and ``path/scheduler`` (``layout="pipeline"``) or both into
    ``path`` (``layout="flat"``). Returns the UNet."""
    if layout not in ("pipeline", "flat"):
        raise ValueError(f"layout is 'pipeline' or 'flat', got {layout!r}")
    path = Path(path)
    unet = random_unet2d(size, channels, num_class_embeds) if unet is None else unet
    unet.save_pretrained(path / "unet" if layout == "pipeline" else path)
    if scheduler is not None:
        scheduler.save_pretrained(path / "scheduler" if layout == "pipeline" else path)
    return unet

"""Stable Diffusion pipelines saved with ``save_pretrained`` (a directory with ``model_index.json``): SD 1.x /
2.x (``StableDiffusionPipeline``, and the img2img / inpainting indexes of a 4-channel UNet), SDXL
(``StableDiffusionXLPipeline``) and SD3 (``StableDiffusion3Pipeline``).

The denoiser network becomes an EDM denoiser on the VAE's scaled latents: the UNet through
:class:`edm.DiscreteTimeDenoiser` (the scheduler's ``alphas_cumprod`` and prediction type, sigma -> timestep
interpolated linearly in sigma as diffusers' schedulers do), the SD3 transformer through
:class:`edm.flow.FlowDenoiser` (the scheduler's shift). The loaded :class:`~.base.LoadedModel` carries the VAE
(:class:`~.autoencoder.VAE`) and the text conditioner (:mod:`.text`); the denoiser takes the conditioner's
keyword arguments, ``D(x, sigma, **conditioner.encode(prompts, height=, width=))``.

What is *not* taken from the pipeline: its sampling loop. The scheduler's timestep spacing, offsets, Karras
options and the like are recorded in ``info["scheduler"]["ignored"]`` (the sampler and schedule are this
library's choice; ``--schedule diffusers`` reproduces them); only the x0 thresholding the scheduler applies is
honoured as :attr:`LoadedModel.threshold`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from samplers.protocol import forward_attribute
from tools.common import BadInput, one_line

from .base import LoadedModel, ModelError, parameter_count
from .diffusers import DIFFUSERS_PREDICTIONS, PREFIX, read_json, scheduler_of, x0_thresholding

__all__ = ["PIPELINES", "PipelineDenoiser", "SD3Backbone", "UNetBackbone", "claims", "claims_pipeline",
           "dynamic_shift_mu", "load", "load_pipeline", "resized"]

INDEX = "model_index.json"

#: model_index.json ``_class_name`` -> (family, the pipeline's default guidance_scale)
PIPELINES = {
    "StableDiffusionPipeline": ("sd", 7.5),
    "StableDiffusionImg2ImgPipeline": ("sd", 7.5),
    "StableDiffusionInpaintPipeline": ("sd", 7.5),
    "StableDiffusionXLPipeline": ("sdxl", 5.0),
    "StableDiffusion3Pipeline": ("sd3", 7.0),
}

_FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "Stable Diffusion XL", "sd3": "Stable Diffusion 3"}

#: components each family needs (the optional ones may be null in model_index.json)
_REQUIRED = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"),
    "sd3": ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
_OPTIONAL = {"sd": (), "sdxl": ("text_encoder", "tokenizer"), "sd3": ("text_encoder_3", "tokenizer_3")}

#: scheduler settings that define the trained model (and so the denoiser); every other setting is about the
#: sampling loop (spacing, offsets, sigma schedules), which this library chooses itself
_MODEL_SETTINGS = {
    "discrete": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "prediction_type", "rescale_betas_zero_snr", "timestep_type"),
    "flow": ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
             "base_image_seq_len", "max_image_seq_len", "time_shift_type"),
}
_X0_SETTINGS = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio",
                "sample_max_value")

# standard weight file names: with none of them but a ``.fp16.`` file, the folder holds only the fp16 variant
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json",
                 "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def claims_pipeline(root) -> bool:
    """Whether ``root`` is a saved pipeline (a directory with ``model_index.json``)."""
    return (Path(root) / INDEX).is_file()


def claims(spec: str) -> bool:
    """``diffusers:DIR`` of a saved text-to-image pipeline: a ``model_index.json`` whose UNet (if any) is not
    a pixel-space ``UNet2DModel`` (a DDPM/DDIM pipeline, which :mod:`.diffusers` loads)."""
    if not spec.startswith(PREFIX):
        return False
    root = Path(spec[len(PREFIX):]).expanduser()
    if not claims_pipeline(root):
        return False
    try:
        index = json.loads((root / INDEX).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # load_pipeline says what is wrong with it
    unet = index.get("unet") if isinstance(index, dict) else None
    return not (isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DModel")


def load(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    return load_pipeline(Path(spec[len(PREFIX):]).expanduser(), device=device, dtype=dtype, source=spec)


# ----------------------------------------------------------------------------------------------
# The backbones and the denoiser


def _cast(value: Tensor, dtype: torch.dtype) -> Tensor:
    return value.to(dtype) if value.is_floating_point() else value


class UNetBackbone(nn.Module):
    """``F(x_in, t, encoder_hidden_states, text_embeds=None, time_ids=None)`` for a diffusers
    ``UNet2DConditionModel``: its ``.sample``; SDXL's ``text_embeds`` / ``time_ids`` go in
    ``added_cond_kwargs``. The conditions are cast to the UNet's dtype."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                text_embeds: Tensor | None = None, time_ids: Tensor | None = None) -> Tensor:
        dtype = self.unet.dtype
        added = None
        if text_embeds is not None or time_ids is not None:
            added = {"text_embeds": _cast(text_embeds, dtype), "time_ids": _cast(time_ids, dtype)}
        return self.unet(x_in, t, encoder_hidden_states=_cast(encoder_hidden_states, dtype),
                         added_cond_kwargs=added, return_dict=False)[0]


class SD3Backbone(nn.Module):
    """``F(x_t, 1000 t, encoder_hidden_states, pooled_projections)`` for a diffusers
    ``SD3Transformer2DModel``: the velocity it predicts."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, x_in: Tensor, t: Tensor, encoder_hidden_states: Tensor,
                pooled_projections: Tensor) -> Tensor:
        dtype = self.transformer.dtype
        return self.transformer(hidden_states=x_in, timestep=t,
                                encoder_hidden_states=_cast(encoder_hidden_states, dtype),
                                pooled_projections=_cast(pooled_projections, dtype), return_dict=False)[0]


_TIME_MAPS = ("sigma_to_t", "t_to_sigma")
_EXTRA_ATTRIBUTES = ("shift", "num_train_timesteps", "time_scale", "interpolation", "quantize")


class PipelineDenoiser(nn.Module):
    """``D(x, sigma, **cond)`` of a text-to-image pipeline, ``cond`` being its conditioner's tensors
    (``keys``).

    Every condition must be given, each with a leading batch dimension of ``B`` (or 1: broadcast); there are
    no class labels (``class_labels`` may only be None or all zero). The output has the dtype of ``x``. The
    protocol's optional attributes and the time maps of ``inner`` are exposed unchanged.
    """

    def __init__(self, inner, keys):
        super().__init__()
        self.inner = inner
        self.keys = tuple(keys)
        self.num_classes = 0

    def forward(self, x: Tensor, sigma, class_labels=None, **cond) -> Tensor:
        if class_labels is not None and bool(torch.as_tensor(class_labels).ne(0).any()):
            raise ValueError("this text-to-image model takes prompts, not class labels")
        missing = [k for k in self.keys if cond.get(k) is None]
        unknown = sorted(set(cond) - set(self.keys))
        if missing or unknown:
            what = "; ".join(part for part in (
                f"missing {', '.join(missing)} (from the model's conditioner)" if missing else "",
                f"unknown {', '.join(unknown)}" if unknown else "") if part)
            raise ValueError(f"this model's conditions are {', '.join(self.keys)}: {what}")
        batch = x.shape[0]
        for key, value in cond.items():
            if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] not in (1, batch):
                shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{key} must be a tensor with a leading batch dimension of {batch}, "
                                 f"got {shape}")
            if value.shape[0] != batch:
                cond[key] = value.expand(batch, *value.shape[1:])
        out = self.inner(x, sigma, **cond)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _TIME_MAPS or name in _EXTRA_ATTRIBUTES:
                return getattr(self.inner, name)
            return forward_attribute(self.inner, name)


# ----------------------------------------------------------------------------------------------
# Loading


def _entry(index: dict, name: str, index_path: Path) -> tuple[str, str] | None:
    """``(library, class)`` of a component in model_index.json, None when it is null / absent."""
    entry = index.get(name)
    if entry is None or (isinstance(entry, (list, tuple)) and all(e is None for e in entry)):
        return None
    if (not isinstance(entry, (list, tuple)) or len(entry) != 2
            or not all(isinstance(e, str) for e in entry)):
        raise ModelError(f"{index_path}: component {name!r} is {entry!r}, expected [library, class]")
    return entry[0], entry[1]


def _component_class(library: str, name: str, folder: Path):
    if library == "diffusers":
        import diffusers as module
    elif library == "transformers":
        import transformers as module
    else:
        raise ModelError(f"{folder}: library {library!r} is not supported (diffusers or transformers)")
    cls = getattr(module, name, None)
    if cls is None and library == "transformers" and name.endswith(("Tokenizer", "TokenizerFast")):
        cls = getattr(module, "AutoTokenizer", None)  # a tokenizer class this transformers spells differently
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelError(f"{folder}: this {library} has no {name} (upgrade {library}?)")
    return cls


def _variant(folder: Path) -> str | None:
    names = {p.name for p in folder.iterdir()}
    if names.intersection(_WEIGHT_FILES):
        return None
    return "fp16" if any(".fp16." in n for n in names) else None


def _load_component(root: Path, index: dict, name: str, index_path: Path, *, dtype=None, required=True):
    """``(component or None, class name)``; ``dtype`` None: no dtype given (tokenizers)."""
    entry = _entry(index, name, index_path)
    if entry is None:
        if required:
            raise ModelError(f"{index_path} names no {name}: this pipeline cannot be sampled without it")
        return None, None
    library, class_name = entry
    folder = root / name
    if not folder.is_dir():
        raise ModelError(f"{folder} is missing: {index_path} lists {name} ({library}.{class_name})")
    cls = _component_class(library, class_name, folder)
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype" if library == "diffusers" else "dtype"] = dtype
        variant = _variant(folder)
        if variant:
            kwargs["variant"] = variant
    try:
        component = cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, ImportError) as e:
        raise ModelError(f"cannot load {folder} ({class_name}): {one_line(e)}") from None
    return component, class_name


def _network(module, device):
    """On ``device``, in eval mode, frozen. Loaded in its dtype already: a cast here would also cast the
    modules diffusers keeps in float32."""
    return module.to(device=device).eval().requires_grad_(False)


@contextlib.contextmanager
def _quiet():
    """transformers' per-component "Loading weights" progress bars off while a pipeline loads."""
    try:
        from transformers.utils import logging
    except ImportError:
        yield
        return
    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def _scheduler_settings(config: dict, kind: str, not_honoured: list[str]) -> dict:
    """The settings written in the scheduler config, split into those the denoiser honours (the trained
    model's: its noise schedule and prediction; and the x0 thresholding, unless ``not_honoured`` names it)
    and those it ignores (the sampling loop's)."""
    written = {k: v for k, v in config.items() if not k.startswith("_")}
    x0 = _X0_SETTINGS if kind == "discrete" else ()
    honoured = {k: v for k, v in written.items() if k in _MODEL_SETTINGS[kind]
                or (k in x0 and not any(line.startswith(f"{k}=") for line in not_honoured))}
    ignored = {k: v for k, v in written.items() if k not in honoured}
    return {"class": config.get("_class_name"), "honoured": honoured, "ignored": ignored}


def dynamic_shift_mu(config, latent_shape, patch_size: int = 1) -> float:
    """Flux / SD3.5's ``mu`` of dynamic shifting (diffusers' ``calculate_shift``): linear in the number of
    image tokens between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) of the
    scheduler config, with FlowMatchEulerDiscreteScheduler's defaults for missing keys."""
    tokens = (int(latent_shape[1]) // patch_size) * (int(latent_shape[2]) // patch_size)
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (tokens - base_len)


def _flow_shift(settings: dict, latent_shape, patch: int) -> float:
    """The shift the SD3 pipeline samples ``latent_shape`` with: the config's ``shift``, or with
    ``use_dynamic_shifting`` :func:`dynamic_shift_mu` of the image's token count as ``sigma' = e^mu sigma``
    (``time_shift_type="linear"``: ``sigma' = mu sigma``)."""
    if not settings.get("use_dynamic_shifting"):
        return float(settings.get("shift", 1.0))
    mu = dynamic_shift_mu(settings, latent_shape, patch)
    return float(mu) if settings.get("time_shift_type") == "linear" else math.exp(mu)


def _square(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_pipeline(root, *, device="cpu", dtype=torch.float32, source: str | None = None) -> LoadedModel:
    """Load the pipeline saved in ``root`` (see the module docstring) with its networks on ``device`` in
    ``dtype`` (the VAE in float32 when ``dtype`` is float16 and its config says ``force_upcast``)."""
    root = Path(root)
    index_path = root / INDEX
    if not index_path.is_file():
        raise ModelError(f"{root} holds no {INDEX}: expected a pipeline saved with save_pretrained")
    index = read_json(index_path)
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or class_name not in PIPELINES:
        raise ModelError(f"{index_path}: pipeline {class_name!r} is not supported "
                         f"(supported: {', '.join(PIPELINES)})")
    family, guidance_scale = PIPELINES[class_name]
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError(f"loading {index_path} needs diffusers and transformers: "
                         "pip install diffusers transformers") from None
    for name in _REQUIRED[family]:  # every folder checked before anything heavy loads
        entry = _entry(index, name, index_path)
        if entry is None:
            raise ModelError(f"{index_path} names no {name}: this pipeline cannot be sampled without it")
        if not (root / name).is_dir():
            raise ModelError(f"{root / name} is missing: {index_path} lists {name} ({'.'.join(entry)})")
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        raise ModelError(f"{scheduler_path} is missing: the pipeline's scheduler config")
    scheduler_config = read_json(scheduler_path)

    def component(name, required=True, component_dtype=dtype):
        is_network = not name.startswith("tokenizer")
        with _quiet():
            module, _ = _load_component(root, index, name, index_path, required=required,
                                        dtype=component_dtype if is_network else None)
        if isinstance(module, nn.Module):
            _network(module, device)
        elif module is not None and is_network:
            raise ModelError(f"{root / name}: a {type(module).__name__}, not a torch network")
        return module

    net_name = "transformer" if family == "sd3" else "unet"
    net = component(net_name)
    net_class = type(net).__name__
    expected = "SD3Transformer2DModel" if family == "sd3" else "UNet2DConditionModel"
    if net_class != expected:
        raise ModelError(f"{root / net_name}: a {net_class}; {class_name} needs a {expected}")
    config = net.config

    vae_entry = _entry(index, "vae", index_path)
    vae_config = read_json(root / "vae" / "config.json") if (root / "vae" / "config.json").is_file() else {}
    force_upcast = bool(vae_config.get("force_upcast", True))
    vae_dtype = torch.float32 if (force_upcast and dtype == torch.float16) else dtype
    vae_module = component("vae", component_dtype=vae_dtype)
    if not hasattr(vae_module, "encode") or not hasattr(vae_module, "decode"):
        raise ModelError(f"{root / 'vae'}: {vae_entry[1]} is not an autoencoder with encode / decode")
    from .autoencoder import VAE

    vae = VAE(vae_module, dtype=dtype, force_upcast=force_upcast)

    from . import text

    encoders: dict[str, str] = {}
    counts = {net_name: parameter_count(net), "vae": parameter_count(vae_module)}

    def text_pair(suffix, required=True):
        tokenizer = component("tokenizer" + suffix, required=required)
        encoder = component("text_encoder" + suffix, required=required)
        if (tokenizer is None) != (encoder is None):
            raise ModelError(f"{index_path}: text_encoder{suffix} and tokenizer{suffix} come together")
        if encoder is not None:
            encoders["text_encoder" + suffix] = type(encoder).__name__
            counts["text_encoder" + suffix] = parameter_count(encoder)
        return tokenizer, encoder

    if family == "sd":
        conditioner = text.SDConditioner(*text_pair(""))
    elif family == "sdxl":
        pairs = [p for p in (text_pair("", required=False), text_pair("_2")) if p[1] is not None]
        conditioner = text.SDXLConditioner([p[0] for p in pairs], [p[1] for p in pairs],
                                           force_zeros_for_empty_prompt=bool(
                                               index.get("force_zeros_for_empty_prompt", True)))
        projection = getattr(pairs[-1][1].config, "projection_dim", None)
        add = getattr(getattr(net, "add_embedding", None), "linear_1", None)
        time_dim = config.get("addition_time_embed_dim")
        if (add is None or time_dim is None or projection is None
                or add.in_features != 6 * time_dim + projection):
            raise ModelError(f"{root / 'unet'}: not an SDXL base UNet (its added embedding does not take "
                             "the pooled text embedding and 6 time ids)")
    else:
        pairs = [text_pair(""), text_pair("_2")]
        t5 = text_pair("_3", required=False)
        conditioner = text.SD3Conditioner([p[0] for p in pairs], [p[1] for p in pairs],
                                          t5 if t5[1] is not None else None,
                                          joint_attention_dim=int(config.joint_attention_dim))

    # the denoiser
    factor = vae.factor
    if family == "sd3":
        patch = int(config.patch_size)
        latent_size = _square(config.sample_size)
        kind = "flow"
    else:
        patch = 1
        latent_size = _square(config.sample_size)
        kind = "discrete"
    shape = (int(config.in_channels), *latent_size)
    if shape[0] != vae.latent_channels:
        raise ModelError(f"{root / net_name}: {shape[0]} input channels, but the VAE's latents have "
                         f"{vae.latent_channels} (an inpainting or depth model?): only text-to-image "
                         "networks are supported")
    if kind == "discrete":
        abar, settings, scheduler_class = scheduler_of(scheduler_config, scheduler_path)
        prediction_type = settings.get("prediction_type", "epsilon")
        if prediction_type not in DIFFUSERS_PREDICTIONS:
            raise ModelError(f"{scheduler_path}: unsupported prediction_type {prediction_type!r} "
                             f"(supported: {', '.join(DIFFUSERS_PREDICTIONS)})")
        threshold, thresholding, ignored = x0_thresholding(settings, scheduler_class)
        prediction = DIFFUSERS_PREDICTIONS[prediction_type]
        from edm import DiscreteTimeDenoiser

        try:
            inner = DiscreteTimeDenoiser(UNetBackbone(net), abar, prediction=prediction,
                                         interpolation="linear", backbone_dtype=dtype)
        except ValueError as e:
            raise ModelError(f"{scheduler_path}: {one_line(e)}") from None
        sigmas = inner.scheme.sigmas
        num_train_timesteps = int(abar.shape[0])
    else:
        from edm.flow import FlowDenoiser

        settings = dict(scheduler_config)
        if scheduler_config.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
            raise ModelError(f"{scheduler_path}: a {scheduler_config.get('_class_name')}; SD3 needs a "
                             "FlowMatchEulerDiscreteScheduler")
        num_train_timesteps = int(settings.get("num_train_timesteps", 1000))
        try:
            inner = FlowDenoiser(SD3Backbone(net), time_scale=1000.0,
                                 shift=_flow_shift(settings, shape, patch),
                                 num_train_timesteps=num_train_timesteps, backbone_dtype=dtype)
        except ValueError as e:
            raise ModelError(f"{scheduler_path}: {one_line(e)}") from None
        prediction, sigmas, threshold, thresholding, ignored = "flow", None, None, "none", []
    denoiser = PipelineDenoiser(inner, conditioner.keys)

    max_latent = None
    if family == "sd3" and config.get("pos_embed_max_size"):
        max_latent = int(config.pos_embed_max_size) * patch
    image = vae.image_shape(shape)
    info = {
        "kind": "diffusers",
        "source": source or str(root),
        "layout": "pipeline",
        "pipeline": class_name,
        "family": _FAMILY_NAMES[family],
        "prediction": prediction,
        "latent_shape": list(shape),
        "default_size": [image[1], image[2]],
        "size": [image[1], image[2]],
        "size_multiple": factor * patch,
        "max_latent_size": max_latent,
        "patch_size": patch,
        "encoders": encoders,
        "conditions": list(conditioner.keys),
        "guidance_scale": guidance_scale,
        "scheduler_config": scheduler_config,
        "scheduler": _scheduler_settings(scheduler_config, kind, ignored),
        "x0_thresholding": thresholding,
        "threshold": threshold,
        "num_train_timesteps": num_train_timesteps,
        "precond": repr(inner.scheme),
        "vae": {"class": type(vae_module).__name__, "factor": factor, "scaling_factor": vae.scaling_factor,
                "shift_factor": vae.shift_factor, "force_upcast": force_upcast, "dtype": str(vae.run_dtype)},
        "parameters": sum(counts.values()),
        "parameters_by_component": counts,
        "unconditional": False,
        "dtype": str(dtype),
    }
    used = {net_name, "vae", "scheduler", *_REQUIRED[family], *_OPTIONAL[family]}
    unused = sorted(k for k, v in index.items() if not k.startswith("_") and k not in used
                    and isinstance(v, list) and len(v) == 2 and all(isinstance(e, str) for e in v))
    if unused:
        info["unused_components"] = unused  # e.g. a safety checker: not run
    if family == "sd3":
        info["shift"] = inner.shift
        info["text_encoder_3"] = "present" if "text_encoder_3" in encoders else "absent (zeros in its place)"
    if family == "sdxl":
        info["force_zeros_for_empty_prompt"] = conditioner.force_zeros_for_empty_prompt
    if ignored:
        info["ignored"] = ignored
    return LoadedModel(
        denoiser=denoiser,
        shape=shape,
        num_classes=0,
        sigma_min=float(inner.sigma_min),
        sigma_max=float(inner.sigma_max),
        sigmas=sigmas,
        kind="diffusers",
        source=source or str(root),
        info=info,
        threshold=threshold,
        autoencoder=vae,
        conditioner=conditioner,
        default_guidance=guidance_scale - 1.0,
    )


# ----------------------------------------------------------------------------------------------
# Other image sizes


def resized(model: LoadedModel, height: int | None, width: int | None) -> LoadedModel:
    """``model`` generating ``height`` x ``width`` images (None: keep the current size of that side).

    The latent shape follows the VAE's factor; each side must be a positive multiple of the VAE factor
    (times SD3's patch size) and, for SD3, within the transformer's position embedding. With
    ``use_dynamic_shifting`` the flow shift (and so the sigma range) follows the new token count.
    BadInput naming --height / --width otherwise.
    """
    if height is None and width is None:
        return model
    if model.autoencoder is None or not isinstance(model.denoiser, PipelineDenoiser):
        raise BadInput("--height / --width need a text-to-image pipeline (a diffusers directory with "
                       f"model_index.json); {model.source} has a fixed image size", "height")
    info = model.info
    _, current_h, current_w = model.image_shape
    height = current_h if height is None else height
    width = current_w if width is None else width
    multiple = int(info.get("size_multiple", model.autoencoder.factor))
    max_latent = info.get("max_latent_size")
    factor = model.autoencoder.factor
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < multiple or size % multiple:
            why = f"the VAE's factor {factor}"
            if multiple != factor:
                why += f" times the patch size {multiple // factor}"
            raise BadInput(f"--{name} {size} is not a positive multiple of {multiple} ({why})", name)
        if max_latent and size // factor > max_latent:
            raise BadInput(f"--{name} {size} is beyond this model's position embedding (at most "
                           f"{max_latent * factor})", name)
    shape = model.autoencoder.latent_shape(height, width)
    denoiser = model.denoiser
    info = {**info, "latent_shape": list(shape), "size": [height, width]}
    sigma_min, sigma_max = model.sigma_min, model.sigma_max
    config = info.get("scheduler_config") or {}
    if info.get("prediction") == "flow" and config.get("use_dynamic_shifting"):
        from edm.flow import FlowDenoiser

        old = denoiser.inner
        shift = _flow_shift(config, shape, int(info.get("patch_size", 1)))
        inner = FlowDenoiser(old.backbone, time_scale=old.time_scale, shift=shift,
                             num_train_timesteps=old.num_train_timesteps, backbone_dtype=old.backbone_dtype,
                             validate_sigma=old.validate_sigma)
        denoiser = PipelineDenoiser(inner, denoiser.keys)
        sigma_min, sigma_max = float(inner.sigma_min), float(inner.sigma_max)
        info["shift"] = inner.shift
        info["precond"] = repr(inner.scheme)
    return dataclasses.replace(model, denoiser=denoiser, shape=shape, info=info, sigma_min=sigma_min,
                               sigma_max=sigma_max)

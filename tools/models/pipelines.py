"""Latent diffusion pipelines saved with ``save_pretrained`` (a directory with ``model_index.json``): the
families registered in :mod:`.families`, Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``, and the
img2img / inpainting indexes of a 4-channel UNet), SDXL (``StableDiffusionXLPipeline``), SD3
(``StableDiffusion3Pipeline``), PixArt (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``), the
class-conditional DiT (``DiTPipeline``) and the x4 upscaler (``StableDiffusionUpscalePipeline``, whose
``LoadedModel.low_res`` takes its low-resolution image).

:func:`load_pipeline` does what every family shares: it reads the index, picks the family by the index's
``_class_name``, checks the components are there, loads the denoiser network, the VAE
(:class:`~.autoencoder.VAE`) and the scheduler config, and builds the :class:`~.base.LoadedModel` with its
info record. The family says the rest: which components it needs, how its network becomes an EDM denoiser
on the VAE's scaled latents (a UNet, DiT or PixArt transformer through :class:`edm.DiscreteTimeDenoiser`,
the SD3 transformer through :class:`edm.flow.FlowDenoiser`) and its text conditioner (:mod:`.text`). The
denoiser takes the conditioner's keyword arguments, ``D(x, sigma, **conditioner.encode(prompts, height=,
width=))``; a class-conditional family's (DiT's) takes one-hot ``class_labels`` instead, as every
class-conditional model here (:class:`~.base.LabelledDenoiser`), and has no conditioner.

What is *not* taken from the pipeline: its sampling loop. The scheduler's timestep spacing, offsets, Karras
options and the like are recorded in ``info["scheduler"]["ignored"]`` (the sampler and schedule are this
library's choice; ``--schedule diffusers`` reproduces them); only the x0 thresholding the scheduler applies is
honoured as :attr:`LoadedModel.threshold`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor

from tools.common import BadInput

from . import perturb
from .base import ClasslessDenoiser, LabelledDenoiser, LoadedModel, ModelError
from .diffusers import PREFIX, read_json
from .families import PIPELINES, for_pipeline
from .families.base import Denoising, Geometry, PipelineFamily
from .families.flow import dynamic_shift_mu, flow_shift
from .families.sd3 import SD3Backbone
from .families.unet import UNetBackbone
from .saved_pipeline import INDEX, SavedPipeline, SchedulerFile

__all__ = ["PIPELINES", "PipelineDenoiser", "SD3Backbone", "UNetBackbone", "claims", "claims_pipeline",
           "dynamic_shift_mu", "load", "load_pipeline", "resized"]


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
# The denoiser


_TIME_MAPS = ("sigma_to_t", "t_to_sigma")
_EXTRA_ATTRIBUTES = ("shift", "num_train_timesteps", "time_scale", "interpolation", "quantize")


class PipelineDenoiser(ClasslessDenoiser):
    """``D(x, sigma, **cond)`` of a text-to-image pipeline, ``cond`` being its conditioner's tensors
    (``keys``).

    Every condition must be given, each with a leading batch dimension of ``B`` (or 1: broadcast); there are
    no class labels (``class_labels`` may only be None or all zero). The output has the dtype of ``x``. The
    protocol's optional attributes and the time maps of ``inner`` are exposed unchanged.
    """

    what = "text-to-image model"
    takes = "prompts"
    passed_through = (*_TIME_MAPS, *_EXTRA_ATTRIBUTES)

    def __init__(self, inner, keys):
        super().__init__(inner)
        self.keys = tuple(keys)

    def forward(self, x: Tensor, sigma, class_labels=None, **cond) -> Tensor:
        self.refuse_classes(class_labels)
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
        return self.evaluate(x, sigma, **cond)


# ----------------------------------------------------------------------------------------------
# Loading


def _family(index_path: Path, index: dict) -> PipelineFamily:
    """The family of the pipeline class the index names; ModelError if none is registered, or if the
    libraries every family loads with are missing."""
    class_name = index.get("_class_name")
    family = for_pipeline(class_name)
    if family is None:
        raise ModelError(f"{index_path}: pipeline {class_name!r} is not supported "
                         f"(supported: {', '.join(PIPELINES)})")
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError(f"loading {index_path} needs diffusers and transformers: "
                         "pip install diffusers transformers") from None
    return family


def load_pipeline(root, *, device="cpu", dtype=torch.float32, source: str | None = None) -> LoadedModel:
    """Load the pipeline saved in ``root`` (see the module docstring) with its networks on ``device`` in
    ``dtype`` (the VAE in float32 when ``dtype`` is float16 and its config says ``force_upcast``)."""
    root = Path(root)
    if not (root / INDEX).is_file():
        raise ModelError(f"{root} holds no {INDEX}: expected a pipeline saved with save_pretrained")
    saved = SavedPipeline(root, read_json(root / INDEX), device=device, dtype=dtype, source=source)
    family = _family(saved.index_path, saved.index)
    saved.check_present(family.required)
    scheduler = saved.scheduler()
    net = saved.network(family.network, family.network_class)
    vae = saved.vae()
    if family.vae_scaling_factor is not None:
        vae.scaling_factor = float(family.vae_scaling_factor)
    conditioner = family.conditioner(saved, net)
    geometry = family.geometry(net.config)
    channels = geometry.shape[0]
    if channels != vae.latent_channels:
        raise ModelError(f"{root / family.network}: {channels} input channels, but the VAE's latents have "
                         f"{vae.latent_channels} (an inpainting or depth model?): only text-to-image "
                         "networks are supported")
    low_res = family.low_res(saved, net, geometry)
    denoising = family.scheduler.denoiser(family.backbone(net), scheduler, geometry, dtype)
    guidance_input = family.guidance_input(net)
    guidance_scale = family.pipelines[saved.class_name]
    num_classes = family.classes(net)
    if num_classes:  # class-conditional (DiT): this library's one-hot labels
        denoiser = LabelledDenoiser(denoising.inner, num_classes, family.class_arguments(net))
        conditions = ["class_labels"]
    else:  # the text conditioner's keyword arguments, and a super-resolution model's image input's
        conditions = list(conditioner.keys) + ([] if low_res is None else list(low_res.keys))
        conditions += [] if guidance_input is None else list(guidance_input.keys)
        denoiser = PipelineDenoiser(denoising.inner, conditions)
    return LoadedModel(
        denoiser=denoiser,
        shape=geometry.shape,
        num_classes=num_classes,
        sigma_min=float(denoising.inner.sigma_min),
        sigma_max=float(denoising.inner.sigma_max),
        sigmas=denoising.sigmas,
        kind="diffusers",
        source=saved.source,
        info=_info(family, saved, scheduler, vae, conditioner, denoising, geometry, conditions,
                   guidance_input),
        threshold=denoising.threshold,
        autoencoder=vae,
        conditioner=conditioner,
        default_guidance=guidance_scale - 1.0,
        low_res=low_res,
        guidance_input=guidance_input,
        sampling=family.sampling,
        perturb_hooks=perturb.hooks(net),
    )


def _info(family: PipelineFamily, saved: SavedPipeline, scheduler: SchedulerFile, vae, conditioner,  # noqa: PLR0913
          denoising: Denoising, geometry: Geometry, conditions: list[str], guidance_input=None) -> dict:
    """The loaded model's info record (``edm info --json``)."""
    image = vae.image_shape(geometry.shape)
    info = {
        "kind": "diffusers",
        "source": saved.source,
        "layout": "pipeline",
        "pipeline": saved.class_name,
        "family": family.display_name,
        "prediction": denoising.prediction,
        "latent_shape": list(geometry.shape),
        "default_size": [image[1], image[2]],
        "size": [image[1], image[2]],
        "size_multiple": vae.factor * geometry.patch,
        "max_latent_size": geometry.max_latent,
        "patch_size": geometry.patch,
        "encoders": saved.encoders,
        "conditions": conditions,
        "guidance_scale": family.pipelines[saved.class_name],
        "scheduler_config": scheduler.config,
        "scheduler": family.scheduler.settings(scheduler.config, denoising.ignored),
        "x0_thresholding": denoising.thresholding,
        "threshold": denoising.threshold,
        "num_train_timesteps": denoising.num_train_timesteps,
        "precond": repr(denoising.inner.scheme),
        "vae": {"class": type(vae.vae).__name__, "factor": vae.factor, "scaling_factor": vae.scaling_factor,
                "shift_factor": vae.shift_factor, "force_upcast": vae.force_upcast,
                "dtype": str(vae.run_dtype)},
        "parameters": sum(saved.counts.values()),
        "parameters_by_component": saved.counts,
        "unconditional": False,
        "dtype": str(saved.dtype),
    }
    used = {family.network, "vae", "scheduler", *family.required, *family.optional}
    unused = [name for name in saved.listed() if name not in used]
    if unused:
        info["unused_components"] = unused  # e.g. a safety checker: not run
    if guidance_input is not None:
        info["guidance_input"] = guidance_input.describe()
        info["guidance_conditions"] = list(guidance_input.keys)  # conditions that are not the text's
    if family.sampling is not None:
        info["sampling_default"] = family.sampling.describe()
    info.update(family.info_fields(saved, conditioner, denoising))
    if denoising.ignored:
        info["ignored"] = denoising.ignored
    return info


# ----------------------------------------------------------------------------------------------
# Other image sizes


def resized(model: LoadedModel, height: int | None, width: int | None) -> LoadedModel:
    """``model`` generating ``height`` x ``width`` images (None: keep the current size of that side).

    The latent shape follows the VAE's factor; each side must be a positive multiple of the VAE factor
    (times a transformer's patch size, as SD3's) and within the network's position embedding, if it has a
    limit. With ``use_dynamic_shifting`` the flow shift (and so the sigma range) follows the new token
    count; a super-resolution model's ``low_res`` conditioner takes images of the new latent's size (its
    ``resized(latent_shape)``). BadInput naming --height / --width otherwise.
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
        shift = flow_shift(config, shape, int(info.get("patch_size", 1)))
        inner = FlowDenoiser(old.backbone, time_scale=old.time_scale, shift=shift,
                             num_train_timesteps=old.num_train_timesteps, backbone_dtype=old.backbone_dtype,
                             validate_sigma=old.validate_sigma)
        denoiser = PipelineDenoiser(inner, denoiser.keys)
        sigma_min, sigma_max = float(inner.sigma_min), float(inner.sigma_max)
        info["shift"] = inner.shift
        info["precond"] = repr(inner.scheme)
    # a super-resolution model's low-resolution input follows the latent's size
    low_res = None if model.low_res is None else model.low_res.resized(shape)
    return dataclasses.replace(model, denoiser=denoiser, shape=shape, info=info, sigma_min=sigma_min,
                               sigma_max=sigma_max, low_res=low_res)

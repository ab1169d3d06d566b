"""The Stable Diffusion x4 upscaler (``StableDiffusionUpscalePipeline``): a latent diffusion model that
denoises latents of the low-resolution image's size, conditioned on a prompt (one CLIP encoder, as Stable
Diffusion 2) and on the low-resolution image itself, noised to an integer *noise level*; its VAE decodes
them to an image four times that size.

What the denoiser and its :class:`NoisedLowRes` conditioner reproduce of the pipeline's ``__call__``
(diffusers 0.42):

- the low-resolution image (pixels in [-1, 1]) is noised by the pipeline's ``low_res_scheduler`` (a
  DDPMScheduler) with its ``add_noise`` at the timestep ``noise_level`` (0 to the pipeline's
  ``max_noise_level``, 350; the call's default 20);
- the UNet takes the scaled latent and that image concatenated on channels (4 + 3 = its 7 input channels),
  and the noise level as its ``class_labels`` (an embedding of ``num_class_embeds`` rows). Under classifier-
  free guidance both halves of the batch get the same image and level, only the text differs;
- the latent is the VAE's, scaled by 0.08333: the pipeline imposes that factor on a VAE whose config says
  otherwise, and so does this family;
- one generator per image draws the image's noise first and the start latents second (both of the
  low-resolution size), so the per-seed generator here draws them in that order
  (:meth:`NoisedLowRes.encode`, :meth:`NoisedLowRes.start_latents`);
- guidance: ``guidance_scale`` 9 by default, the classifier-free guidance of every text pipeline (w = 8).

The pipeline rounds a low-resolution side that is not a multiple of the VAE's factor down to one, resizing
the image; this family takes the image at its size (the output size follows ``--width`` / ``--height``,
in multiples of the VAE's factor).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from samplers.noise import latent_draws
from tools.common import BadInput, one_line

from ..base import ModelError
from .base import Geometry, cast_floating
from .registry import register
from .sd import StableDiffusion

__all__ = ["DEFAULT_NOISE_LEVEL", "IMAGE_CHANNELS", "LOW_RES_KEYS", "NoisedLowRes", "StableDiffusionUpscale",
           "UpscaleBackbone"]

#: the low-resolution image's channels (RGB), concatenated after the latent's
IMAGE_CHANNELS = 3
#: the pipeline call's default noise_level
DEFAULT_NOISE_LEVEL = 20
#: the pipeline's max_noise_level when its index does not say
DEFAULT_MAX_NOISE_LEVEL = 350
#: the denoiser's keyword arguments the low-resolution image gives
LOW_RES_KEYS = ("cond_image", "noise_level")


class UpscaleBackbone(nn.Module):
    """``F(x_in, t, encoder_hidden_states, cond_image, noise_level)`` for the upscaler's
    ``UNet2DConditionModel``: its ``.sample`` for the scaled latent and the noised low-resolution image
    concatenated on channels, the integer noise level as its ``class_labels``."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: Tensor, t: Tensor, encoder_hidden_states: Tensor, cond_image: Tensor,
                noise_level: Tensor) -> Tensor:
        dtype = self.unet.dtype
        sample = torch.cat([x_in, cond_image.to(x_in.dtype)], dim=1)
        return self.unet(sample, t, encoder_hidden_states=cast_floating(encoder_hidden_states, dtype),
                         class_labels=noise_level, return_dict=False)[0]


@dataclasses.dataclass(frozen=True)
class NoisedLowRes:
    """The upscaler's :class:`~tools.models.base.LowResConditioner`: low-resolution images of ``shape``
    ``(3, h, w)`` (the latent's size), noised to an integer level by ``scheduler`` (the pipeline's
    ``low_res_scheduler``, anything with diffusers' ``add_noise``), become the denoiser's ``cond_image``
    and ``noise_level``. Levels run from 0 to ``max_level``."""

    scheduler: Any
    max_level: int
    shape: tuple[int, int, int]
    scheduler_class: str = "DDPMScheduler"
    default_level: int = DEFAULT_NOISE_LEVEL
    level_flag: str = "noise_level"
    keys: tuple[str, ...] = LOW_RES_KEYS

    def resized(self, latent_shape: Sequence[int]) -> NoisedLowRes:
        """The conditioner of the model resized to latents of ``latent_shape``: images of their size."""
        return dataclasses.replace(self, shape=(self.shape[0], int(latent_shape[1]), int(latent_shape[2])))

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"a {w}x{h} image ({c} channels; --low-res), noised by its {self.scheduler_class} to "
                f"--noise-level 0..{self.max_level} (default {self.default_level}), concatenated to the "
                "latent, its level the UNet's class label")

    def check_level(self, level) -> int:
        """``level`` as an int; BadInput naming ``noise_level`` unless it is an integer in
        ``[0, max_level]``."""
        if (isinstance(level, bool) or not isinstance(level, Real) or not math.isfinite(level)
                or level != int(level) or not 0 <= level <= self.max_level):
            raise BadInput(f"--noise-level {level!r} is not an integer in [0, {self.max_level}] (this "
                           "upscaler's max_noise_level)", self.level_flag)
        return int(level)

    def _draws(self, seeds: Sequence[int], shapes, device, dtype) -> list[Tensor]:
        return latent_draws(seeds, shapes, device=torch.device(device), dtype=dtype)

    @torch.no_grad()
    def encode(self, images: Tensor, level, seeds: Sequence[int]) -> dict[str, Tensor]:
        """``{"cond_image": images noised to level, "noise_level": [B] int64}``: row ``i`` noised with the
        first draw of ``seeds[i]``'s generator, as ``low_res_scheduler.add_noise`` at timestep ``level``."""
        level = self.check_level(level)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.shape):
            raise ValueError(f"low-resolution images must be [B, {', '.join(map(str, self.shape))}], got "
                             f"{list(images.shape)}")
        if len(seeds) != images.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {images.shape[0]} low-resolution images")
        noise = self._draws(seeds, [self.shape], images.device, images.dtype)[0]
        levels = torch.full((images.shape[0],), level, dtype=torch.long, device=images.device)
        noised = self.scheduler.add_noise(images, noise, levels)
        return {"cond_image": noised, "noise_level": levels}

    def start_latents(self, seeds: Sequence[int], shape: Sequence[int], device, dtype) -> Tensor:
        """The start latents ``[B, *shape]``: each seed's second draw, the pipeline's ``prepare_latents``
        after the image's noise."""
        if tuple(shape[1:]) != tuple(self.shape[1:]):
            raise ValueError(f"latents of {list(shape)} for low-resolution images of {list(self.shape)}")
        return self._draws(seeds, [self.shape, tuple(shape)], device, dtype)[1]


def _low_res_scheduler(saved):
    """The pipeline's ``low_res_scheduler`` built from its config, and its class name; ModelError when
    diffusers has no such class or it cannot noise an image (no ``add_noise`` / ``alphas_cumprod``)."""
    import diffusers

    file = saved.scheduler("low_res_scheduler")
    name = file.config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelError(f"{file.path}: this diffusers has no scheduler {name!r}")
    try:
        scheduler = cls.from_config(file.config)
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot build the low_res_scheduler of {file.path}: {one_line(e)}") from None
    if not hasattr(scheduler, "add_noise") or getattr(scheduler, "alphas_cumprod", None) is None:
        raise ModelError(f"{file.path}: {name} cannot noise the low-resolution image (no add_noise with "
                         "an alphas_cumprod table)")
    return scheduler, name


def _max_level(saved, network, table: int) -> int:
    """The pipeline's ``max_noise_level``, checked against what its parts can take: the low-res scheduler's
    ``table`` timesteps and the UNet's ``num_class_embeds`` noise-level embeddings."""
    level = saved.index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ModelError(f"{saved.index_path}: max_noise_level {level!r} is not an integer >= 0")
    embeds = network.config.get("num_class_embeds")
    if network.config.get("class_embed_type") is not None or not isinstance(embeds, int):
        raise ModelError(f"{saved.root / 'unet'}: the upscaler's UNet takes the noise level as a class "
                         "(num_class_embeds, no class_embed_type); this one does not")
    if level >= min(embeds, table):
        raise ModelError(f"{saved.index_path}: max_noise_level {level} is beyond the UNet's {embeds} "
                         f"noise-level embeddings or the low_res_scheduler's {table} timesteps")
    return level


@register
class StableDiffusionUpscale(StableDiffusion):
    """The x4 upscaler: Stable Diffusion's text conditioning, a 7-channel UNet and the low-resolution
    image as :class:`NoisedLowRes` (see the module docstring)."""

    name = "sd-upscale"
    display_name = "Stable Diffusion x4 upscaler"
    pipelines = MappingProxyType({"StableDiffusionUpscalePipeline": 9.0})
    required = ("unet", "vae", "text_encoder", "tokenizer", "low_res_scheduler", "scheduler")
    vae_scaling_factor = 0.08333

    def backbone(self, network: nn.Module) -> nn.Module:
        return UpscaleBackbone(network)

    def geometry(self, config) -> Geometry:
        """The latent: the UNet's input channels less the image's (what the VAE's latents must have)."""
        geometry = super().geometry(config)
        channels, h, w = geometry.shape
        return geometry._replace(shape=(channels - IMAGE_CHANNELS, h, w))

    def low_res(self, saved, network, geometry: Geometry) -> NoisedLowRes:
        scheduler, name = _low_res_scheduler(saved)
        max_level = _max_level(saved, network, len(scheduler.alphas_cumprod))
        return NoisedLowRes(scheduler, max_level, (IMAGE_CHANNELS, *geometry.shape[1:]), name)

    def info_fields(self, saved, conditioner, denoising) -> dict[str, Any]:
        low_res = saved.scheduler("low_res_scheduler").config
        return {"low_res": {"scheduler": low_res.get("_class_name"),
                            "max_noise_level": saved.index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL),
                            "default_noise_level": DEFAULT_NOISE_LEVEL, "conditions": list(LOW_RES_KEYS)}}

    def info_rows(self, info: Mapping[str, Any]) -> list[tuple[str, str]]:
        rows = super().info_rows(info)
        _, h, w = info.get("latent_shape") or (0, 0, 0)
        low = info.get("low_res") or {}
        factor = (info.get("vae") or {}).get("factor", "?")
        at = 1 + next((i for i, (key, _) in enumerate(rows) if key == "image size"), 0)
        rows.insert(at, ("low-res input", (
            f"a {w} x {h} image (--low-res PNG, width x height; the output is {factor}x it), noised by "
            f"{low.get('scheduler', '?')} to --noise-level 0..{low.get('max_noise_level', '?')} (default "
            f"{low.get('default_noise_level', '?')})")))
        return rows

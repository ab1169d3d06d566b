"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``, and the img2img / inpainting indexes of a
4-channel UNet): one CLIP text encoder, its last hidden states the UNet's only condition."""

from __future__ import annotations

from types import MappingProxyType

from .. import text
from .registry import register
from .unet import UNetFamily

__all__ = ["StableDiffusion"]


@register
class StableDiffusion(UNetFamily):
    name = "sd"
    display_name = "Stable Diffusion 1.x/2.x"
    pipelines = MappingProxyType({"StableDiffusionPipeline": 7.5, "StableDiffusionImg2ImgPipeline": 7.5,
                                  "StableDiffusionInpaintPipeline": 7.5})
    required = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

    def conditioner(self, saved, network):
        return text.SDConditioner(*saved.text_pair(""))

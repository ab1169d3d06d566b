"""Stable Diffusion XL (``StableDiffusionXLPipeline``): two CLIP text encoders (the first optional, as the
refiner has it); the UNet also takes the pooled text embedding and six size / crop time ids through its
added embedding."""

from __future__ import annotations

from types import MappingProxyType

from .. import text
from ..base import ModelError
from .registry import register
from .unet import UNetFamily

__all__ = ["StableDiffusionXL"]

TIME_IDS = 6  # (original height, width, crop top, left, target height, width)


@register
class StableDiffusionXL(UNetFamily):
    name = "sdxl"
    display_name = "Stable Diffusion XL"
    pipelines = MappingProxyType({"StableDiffusionXLPipeline": 5.0})
    required = ("unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler")
    optional = ("text_encoder", "tokenizer")

    def conditioner(self, saved, network):
        pairs = [p for p in (saved.text_pair("", required=False), saved.text_pair("_2")) if p[1] is not None]
        conditioner = text.SDXLConditioner(
            [p[0] for p in pairs], [p[1] for p in pairs],
            force_zeros_for_empty_prompt=bool(saved.index.get("force_zeros_for_empty_prompt", True)))
        # a UNet without this added embedding (SD's, or the refiner's 5 time ids) would fail at the first step
        projection = getattr(pairs[-1][1].config, "projection_dim", None)
        add = getattr(getattr(network, "add_embedding", None), "linear_1", None)
        time_dim = network.config.get("addition_time_embed_dim")
        if (add is None or time_dim is None or projection is None
                or add.in_features != TIME_IDS * time_dim + projection):
            raise ModelError(f"{saved.root / self.network}: not an SDXL base UNet (its added embedding does "
                             "not take the pooled text embedding and 6 time ids)")
        return conditioner

    def info_fields(self, saved, conditioner, denoising):
        return {"force_zeros_for_empty_prompt": conditioner.force_zeros_for_empty_prompt}

"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``, and the img2img / inpainting indexes of a
4-channel UNet): one CLIP text encoder, its last hidden states the UNet's only condition."""

from __future__ import annotations

from types import MappingProxyType

from .. import text
from ..base import ModelError
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
        tokenizer, encoder = saved.text_pair("")
        # a UNet of another family (SDXL's added embedding, another text width) fails only at its first call
        unet = saved.root / self.network
        added = network.config.get("addition_embed_type")
        if added is not None:
            raise ModelError(f"{unet}: its UNet takes an added '{added}' embedding (an SDXL UNet?), which a "
                             f"{self.display_name} pipeline does not give it: save it with the matching "
                             "pipeline's model_index.json")
        if network.config.get("time_cond_proj_dim") and self.guidance_input(network) is None:
            raise ModelError(f"{unet}: its UNet takes a guidance embedding (time_cond_proj_dim, a latent "
                             f"consistency model?), which a {self.display_name} pipeline does not give it: "
                             "save it as a LatentConsistencyModelPipeline")
        width, cross = getattr(encoder.config, "hidden_size", None), network.config.get("cross_attention_dim")
        if width is not None and cross is not None and width != cross:
            raise ModelError(f"{unet}: its UNet attends to text of width {cross}, but text_encoder gives "
                             f"{width}: the components come from different models")
        return text.SDConditioner(tokenizer, encoder)

"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): an ``SD3Transformer2DModel`` predicting the
flow-matching velocity, two CLIP text encoders and an optional T5 (zeros in its place when the pipeline
was saved without it)."""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor, nn

from .. import text
from .base import PipelineFamily, cast_floating
from .flow import FlowMatching
from .registry import register

__all__ = ["SD3Backbone", "StableDiffusion3"]


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
                                encoder_hidden_states=cast_floating(encoder_hidden_states, dtype),
                                pooled_projections=cast_floating(pooled_projections, dtype),
                                return_dict=False)[0]


@register
class StableDiffusion3(PipelineFamily):
    name = "sd3"
    display_name = "Stable Diffusion 3"
    pipelines = MappingProxyType({"StableDiffusion3Pipeline": 7.0})
    network = "transformer"
    network_class = "SD3Transformer2DModel"
    required = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                "scheduler")
    optional = ("text_encoder_3", "tokenizer_3")
    scheduler = FlowMatching(time_scale=1000.0, needed_by="SD3")

    def backbone(self, network):
        return SD3Backbone(network)

    def geometry(self, config):
        patch = int(config.patch_size)
        max_size = config.get("pos_embed_max_size")  # in patches
        max_latent = int(max_size) * patch if max_size else None
        return super().geometry(config)._replace(patch=patch, max_latent=max_latent)

    def conditioner(self, saved, network):
        pairs = [saved.text_pair(""), saved.text_pair("_2")]
        t5 = saved.text_pair("_3", required=False)
        return text.SD3Conditioner([p[0] for p in pairs], [p[1] for p in pairs],
                                   t5 if t5[1] is not None else None,
                                   joint_attention_dim=int(network.config.joint_attention_dim))

    def info_fields(self, saved, conditioner, denoising):
        t5 = "present" if "text_encoder_3" in saved.encoders else "absent (zeros in its place)"
        return {"shift": denoising.inner.shift, "text_encoder_3": t5}

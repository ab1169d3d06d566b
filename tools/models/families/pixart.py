"""PixArt-alpha and PixArt-Sigma (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``): a
``PixArtTransformer2DModel`` (adaLN-single; saved as ``Transformer2DModel`` on the hub) with a learned
sigma, attending to one T5 encoder's hidden states under its attention mask.

The conditioner (:class:`~tools.models.text.PixArtConditioner`) encodes as the pipelines' ``encode_prompt``
does with ``clean_caption=False``: 120 tokens for alpha, 300 for Sigma, the empty negative prompt by
default. The micro-conditions (resolution and aspect ratio through ``added_cond_kwargs``) are given when
the transformer takes them (``use_additional_conditions``, on by default for ``sample_size`` 128, i.e.
PixArt-alpha 1024): the alpha pipeline passes them for ``sample_size == 128`` and the transformer ignores
them otherwise, so the two agree wherever the pipeline runs. Guidance is classifier-free on the eps mean,
``w = guidance_scale - 1`` (default 3.5). Not reproduced: the pipelines' resolution binning (with
``use_resolution_binning``, a size off the aspect-ratio table is generated at the nearest table size and
resized), which changes nothing at a table size such as the default square one.
"""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor, nn

from .. import text
from ..base import ModelError
from .base import cast_floating
from .registry import register
from .transformer import TransformerFamily, eps_mean

__all__ = ["PixArt", "PixArtBackbone"]

#: the pipeline's default max_sequence_length of T5 tokens
MAX_SEQUENCE_LENGTH = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}


class PixArtBackbone(nn.Module):
    """``F(x_in, t, encoder_hidden_states, encoder_attention_mask, resolution=None, aspect_ratio=None)``
    for a diffusers ``PixArtTransformer2DModel``: the eps mean of its output."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.channels = int(transformer.config.in_channels)

    def forward(self, x_in: Tensor, t: Tensor, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor,
                resolution: Tensor | None = None, aspect_ratio: Tensor | None = None) -> Tensor:
        dtype = self.transformer.dtype
        added = {"resolution": None if resolution is None else cast_floating(resolution, dtype),
                 "aspect_ratio": None if aspect_ratio is None else cast_floating(aspect_ratio, dtype)}
        out = self.transformer(x_in, encoder_hidden_states=cast_floating(encoder_hidden_states, dtype),
                               encoder_attention_mask=encoder_attention_mask, timestep=t,
                               added_cond_kwargs=added, return_dict=False)[0]
        return eps_mean(out, self.channels)


@register
class PixArt(TransformerFamily):
    name = "pixart"
    display_name = "PixArt-alpha / Sigma"
    pipelines = MappingProxyType({"PixArtAlphaPipeline": 4.5, "PixArtSigmaPipeline": 4.5})
    network_class = "PixArtTransformer2DModel"
    required = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

    def backbone(self, network):
        return PixArtBackbone(network)

    def conditioner(self, saved, network):
        tokenizer, encoder = saved.text_pair("")
        width = getattr(encoder.config, "d_model", None)
        caption = network.config.get("caption_channels")
        if width is not None and caption is not None and int(width) != int(caption):
            raise ModelError(f"{saved.root / self.network}: its transformer takes captions of width "
                             f"{caption}, but text_encoder gives {width}: the components come from different "
                             "models")
        return text.PixArtConditioner(tokenizer, encoder,
                                      max_sequence_length=MAX_SEQUENCE_LENGTH[saved.class_name],
                                      micro_conditions=bool(network.use_additional_conditions))

    def info_fields(self, saved, conditioner, denoising):
        return {**super().info_fields(saved, conditioner, denoising),
                "max_sequence_length": conditioner.max_sequence_length,
                "micro_conditions": conditioner.micro_conditions}

    def info_rows(self, info):
        rows = super().info_rows(info)
        at = 1 + next((i for i, (key, _) in enumerate(rows) if key == "text encoders"), 0)
        micro = ("resolution and aspect ratio (the transformer's use_additional_conditions)"
                 if info.get("micro_conditions") else "none")
        rows[at:at] = [("text tokens", f"{info.get('max_sequence_length')} (T5, with its attention mask; "
                                       "prompts lowercased, no caption cleaning)"),
                       ("micro-conditions", micro)]
        return rows

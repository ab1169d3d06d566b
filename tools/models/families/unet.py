"""Families whose denoiser is a diffusers ``UNet2DConditionModel`` on a discrete-time scheduler (Stable
Diffusion 1.x/2.x, SDXL): the UNet as a backbone, and the family base that declares it."""

from __future__ import annotations

from torch import Tensor, nn

from .base import PipelineFamily, cast_floating
from .discrete import DiscreteTime

__all__ = ["UNetBackbone", "UNetFamily"]


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
            added = {"text_embeds": cast_floating(text_embeds, dtype),
                     "time_ids": cast_floating(time_ids, dtype)}
        return self.unet(x_in, t, encoder_hidden_states=cast_floating(encoder_hidden_states, dtype),
                         added_cond_kwargs=added, return_dict=False)[0]


class UNetFamily(PipelineFamily):
    """A family with a ``unet`` component (a ``UNet2DConditionModel``) made a denoiser by
    :class:`~.discrete.DiscreteTime`; subclasses declare the rest."""

    network = "unet"
    network_class = "UNet2DConditionModel"
    scheduler = DiscreteTime()

    def backbone(self, network: nn.Module) -> nn.Module:
        return UNetBackbone(network)

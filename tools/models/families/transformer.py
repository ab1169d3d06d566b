"""Families whose denoiser is a diffusers latent transformer on a discrete-time scheduler (DiT, PixArt):
patches, a sin-cos position embedding that follows the input size, and a *learned sigma*: a network trained
with the iDDPM hybrid loss answers with twice the latent's channels, the eps mean first and the variance
interpolation second. Only the mean is used, as DiTPipeline and the PixArt pipelines use it (the variance
half matters to ancestral DDPM steps with a learned variance, which no sampler here takes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..base import ModelError
from .base import Geometry, PipelineFamily
from .discrete import DiscreteTime

__all__ = ["TransformerFamily", "eps_mean", "learned_sigma"]


def learned_sigma(config) -> bool:
    """Whether a transformer of this ``config`` predicts a learned sigma: ``out_channels`` twice
    ``in_channels`` (the pipelines' own test, ``out_channels // 2 == in_channels``)."""
    channels = int(config.in_channels)
    out = config.get("out_channels")
    return out is not None and int(out) // 2 == channels


def eps_mean(output: Tensor, channels: int) -> Tensor:
    """The first ``channels`` channels of a learned-sigma output (the eps mean); the output itself when it
    has no more."""
    return output[:, :channels] if output.shape[1] > channels else output


class TransformerFamily(PipelineFamily):
    """A family with a ``transformer`` component made a denoiser by :class:`~.discrete.DiscreteTime`;
    subclasses declare the network class, the rest of the components and the conditioning."""

    network = "transformer"
    scheduler = DiscreteTime()

    def geometry(self, config) -> Geometry:
        out = config.get("out_channels")
        channels = int(config.in_channels)
        if out is not None and int(out) not in (channels, 2 * channels):
            raise ModelError(f"{self.network}: {out} output channels for {channels} input channels (expected "
                             f"{channels}, or {2 * channels} with a learned sigma)")
        return super().geometry(config)._replace(patch=int(config.patch_size))

    def info_fields(self, saved, conditioner, denoising) -> dict[str, Any]:
        network = saved.networks[self.network]
        config = network.config
        return {"transformer": {
            "class": type(network).__name__,
            "layers": int(config.num_layers),
            "width": int(config.num_attention_heads) * int(config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": int(config.patch_size),
            "sample_size": config.sample_size,
        }, "learned_sigma": learned_sigma(config)}

    def info_rows(self, info: Mapping[str, Any]) -> list[tuple[str, str]]:
        rows = super().info_rows(info)
        t = info.get("transformer") or {}
        channels = (info.get("latent_shape") or [0])[0]
        sigma = (f"yes: {2 * channels} output channels, the first {channels} (the eps mean) used"
                 if info.get("learned_sigma") else "no")
        at = 1 + next((i for i, (key, _) in enumerate(rows) if key == "image size"), 0)
        rows[at:at] = [
            ("transformer", f"{t.get('class', '?')}: {t.get('layers')} layers, width {t.get('width')}, "
                            f"{t.get('heads')} heads, patch {t.get('patch_size')}, sample size "
                            f"{t.get('sample_size')}"),
            ("learned sigma", sigma),
        ]
        return rows

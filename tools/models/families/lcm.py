"""Latent consistency models (``LatentConsistencyModelPipeline``: an SD 1.x/2.x UNet distilled with
LCMScheduler): the UNet takes the guidance weight through its ``time_cond_proj_dim`` embedding, and the
consistency function's boundary scalings are part of the denoiser.

The LCM pipeline evaluates its UNet once per step at the embedded weight ``w = guidance_scale - 1`` (no
classifier-free guidance, no negative prompt), and its scheduler turns the UNet's x0 prediction into
``c_skip(t) x_t + c_out(t) x0`` on the VP sample ``x_t = sqrt(abar_t) x`` with
``c_skip = sd^2 / ((k t)^2 + sd^2)``, ``c_out = k t / sqrt((k t)^2 + sd^2)``, ``sd = 0.5`` and
``k = timestep_scaling``. In sigma form that is ``D(x, sigma) = c_skip sqrt(abar) x + c_out x0(x, sigma)``
at the timestep of sigma: :class:`ConsistencyBoundary`. The ``lcm`` sampler (``x = D(x, sigma_i)``, then
noise back to ``sigma_{i+1}``) on ``--schedule diffusers`` (LCMScheduler's timesteps, with its
``original_inference_steps`` skipping) is then the pipeline's loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor, nn

from samplers.protocol import forward_attribute

from ..base import ModelError, RecordedSampling
from ..saved_pipeline import SchedulerFile
from .base import Denoising, Geometry, cast_floating
from .discrete import DiscreteTime
from .registry import register
from .sd import StableDiffusion
from .unet import UNetBackbone

__all__ = ["ConsistencyBoundary", "GuidanceEmbedding", "LatentConsistency", "guidance_scale_embedding"]

#: the attributes of the discrete-time denoiser a consistency boundary exposes as they are
_EXPOSED = ("sigma_to_t", "t_to_sigma", "sigma_min", "sigma_max", "scheme", "num_train_timesteps",
            "interpolation", "quantize", "backbone", "backbone_dtype", "sigma_vector")

#: LCMScheduler's sigma_data of the boundary scalings (fixed in the scheduler, not a config setting)
SIGMA_DATA = 0.5


def guidance_scale_embedding(w: Tensor, dim: int) -> Tensor:
    """``[B, dim]`` sinusoidal features of ``1000 w`` (sines, then cosines; zero-padded to an odd
    ``dim``), in float32: the guidance embedding an LCM UNet's ``time_cond_proj_dim`` takes."""
    w = w.to(torch.float32) * 1000.0
    half = dim // 2
    rate = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -rate)
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


@dataclass(frozen=True)
class GuidanceEmbedding:
    """The guidance weight as an LCM UNet's ``timestep_cond`` (a ``tools.models.base.GuidanceInput``):
    :func:`guidance_scale_embedding` of ``w`` (diffusers' ``guidance_scale - 1``) per sample."""

    dim: int
    range: tuple[float, float] | None = None
    keys: tuple[str, ...] = ("timestep_cond",)

    def describe(self) -> str:
        return (f"the UNet takes the guidance weight w (guidance_scale - 1) as an input (time_cond_proj_dim "
                f"{self.dim}: one evaluation per step, no negative prompt)")

    def kwargs(self, w: float, batch: int, device, dtype) -> dict[str, Tensor]:
        embedding = guidance_scale_embedding(torch.full((batch,), float(w)), self.dim)
        return {"timestep_cond": embedding.to(device=device, dtype=dtype)}


class ConsistencyBoundary(nn.Module):
    """``D(x, sigma, **cond) = c_skip(t) sqrt(abar) x + c_out(t) inner(x, sigma, **cond)`` with ``t`` the
    timestep of sigma (``inner.sigma_to_t``) and LCMScheduler's scalings of ``timestep_scaling * t``
    (module docstring). ``inner`` is the discrete-time denoiser of the UNet; its attributes (sigma range,
    time maps, scheme) are exposed, so a schedule and ``--schedule diffusers``' pinning see through."""

    def __init__(self, inner, timestep_scaling: float):
        super().__init__()
        self.inner = inner
        self.timestep_scaling = float(timestep_scaling)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        scaled = self.inner.sigma_to_t(sigma.to(torch.float64).contiguous()) * self.timestep_scaling
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        return c_skip, scaled / (scaled**2 + SIGMA_DATA**2).sqrt()

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        sigma = self.inner.sigma_vector(x, sigma)
        x0 = self.inner(x, sigma, **cond)
        column = (-1, *([1] * (x.ndim - 1)))
        c_skip, c_out = (c.to(x.dtype).reshape(column) for c in self.scalings(sigma))
        vp = (1 + sigma.to(torch.float64) ** 2).rsqrt().to(x.dtype).reshape(column)  # sqrt(abar)
        return c_skip * vp * x + c_out * x0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _EXPOSED:
                return getattr(self.inner, name)
            return forward_attribute(self.inner, name)


class LCMBackbone(UNetBackbone):
    """:class:`UNetBackbone` that also takes the guidance embedding, ``timestep_cond``."""

    def forward(self, x_in: Tensor, t: Tensor, encoder_hidden_states: Tensor, timestep_cond: Tensor,
                text_embeds: Tensor | None = None, time_ids: Tensor | None = None) -> Tensor:
        dtype = self.unet.dtype
        return self.unet(x_in, t, encoder_hidden_states=cast_floating(encoder_hidden_states, dtype),
                         timestep_cond=cast_floating(timestep_cond, dtype), return_dict=False)[0]


class ConsistencyTime(DiscreteTime):
    """LCMScheduler: a discrete-time denoiser with the consistency boundary built in
    (:class:`ConsistencyBoundary`); ``timestep_scaling`` is a setting of the trained model. Its x0
    clipping / thresholding acts before the boundary mix, which a threshold after the denoiser cannot
    reproduce: reported as not honoured."""

    model_settings = (*DiscreteTime.model_settings, "timestep_scaling")

    def denoiser(self, backbone: nn.Module, scheduler: SchedulerFile, geometry: Geometry,
                 dtype: torch.dtype) -> Denoising:
        plain = super().denoiser(backbone, scheduler, geometry, dtype)
        scaling = scheduler.config.get("timestep_scaling", 10.0)
        if isinstance(scaling, bool) or not isinstance(scaling, int | float) or not math.isfinite(scaling):
            raise ModelError(f"{scheduler.path}: timestep_scaling must be a number, got {scaling!r}")
        ignored = list(plain.ignored)
        if plain.threshold is not None:
            ignored.append(f"{plain.thresholding} (LCMScheduler applies it before its boundary scalings)")
        return Denoising(ConsistencyBoundary(plain.inner, scaling), plain.prediction,
                         plain.num_train_timesteps, sigmas=plain.sigmas, ignored=ignored)


@register
class LatentConsistency(StableDiffusion):
    name = "lcm"
    display_name = "Latent consistency model (SD 1.x/2.x UNet)"
    pipelines = MappingProxyType({"LatentConsistencyModelPipeline": 8.5})
    scheduler = ConsistencyTime()
    # the pipeline's own loop at its default 4 steps: LCMScheduler's timesteps, re-noised each step
    sampling = RecordedSampling(sampler="lcm", steps=4, schedule="diffusers")

    def backbone(self, network: nn.Module) -> nn.Module:
        return LCMBackbone(network)

    def guidance_input(self, network: nn.Module) -> GuidanceEmbedding:
        dim = network.config.get("time_cond_proj_dim")
        if not isinstance(dim, int) or dim < 2:
            raise ModelError("a LatentConsistencyModelPipeline's UNet takes the guidance weight through "
                             f"time_cond_proj_dim, which this one lacks (got {dim!r})")
        return GuidanceEmbedding(dim)

"""Flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``): the network predicts the velocity at
``t = sigma' / (1 + sigma')`` of a shifted sigma, and becomes an :class:`edm.flow.FlowDenoiser` with the
scheduler's shift, fixed or, with ``use_dynamic_shifting``, following the image's token count."""

from __future__ import annotations

import math

import torch
from torch import nn

from tools.common import one_line

from ..base import ModelError
from ..saved_pipeline import SchedulerFile
from .base import Denoising, Geometry, SchedulerKind

__all__ = ["FlowMatching", "dynamic_shift_mu", "flow_shift"]

SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def dynamic_shift_mu(config, latent_shape, patch_size: int = 1) -> float:
    """Flux / SD3.5's ``mu`` of dynamic shifting (diffusers' ``calculate_shift``): linear in the number of
    image tokens between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) of the
    scheduler config, with FlowMatchEulerDiscreteScheduler's defaults for missing keys."""
    tokens = (int(latent_shape[1]) // patch_size) * (int(latent_shape[2]) // patch_size)
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (tokens - base_len)


def flow_shift(settings, latent_shape, patch: int) -> float:
    """The shift a flow pipeline samples ``latent_shape`` with: the config's ``shift``, or with
    ``use_dynamic_shifting`` :func:`dynamic_shift_mu` of the image's token count as ``sigma' = e^mu sigma``
    (``time_shift_type="linear"``: ``sigma' = mu sigma``)."""
    if not settings.get("use_dynamic_shifting"):
        return float(settings.get("shift", 1.0))
    mu = dynamic_shift_mu(settings, latent_shape, patch)
    return float(mu) if settings.get("time_shift_type") == "linear" else math.exp(mu)


class FlowMatching(SchedulerKind):
    """A ``FlowMatchEulerDiscreteScheduler``: its shift and number of training timesteps define the
    denoiser, the network taking ``time_scale * t`` as its timestep. ``needed_by`` names the family in the
    message for another scheduler class."""

    model_settings = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                      "base_image_seq_len", "max_image_seq_len", "time_shift_type")

    def __init__(self, *, time_scale: float, needed_by: str):
        self.time_scale = float(time_scale)
        self.needed_by = needed_by

    def denoiser(self, backbone: nn.Module, scheduler: SchedulerFile, geometry: Geometry,
                 dtype: torch.dtype) -> Denoising:
        from edm.flow import FlowDenoiser

        settings = dict(scheduler.config)
        if settings.get("_class_name") != SCHEDULER:
            raise ModelError(f"{scheduler.path}: a {settings.get('_class_name')}; {self.needed_by} needs a "
                             f"{SCHEDULER}")
        num_train_timesteps = int(settings.get("num_train_timesteps", 1000))
        try:
            inner = FlowDenoiser(backbone, time_scale=self.time_scale,
                                 shift=flow_shift(settings, geometry.shape, geometry.patch),
                                 num_train_timesteps=num_train_timesteps, backbone_dtype=dtype)
        except ValueError as e:
            raise ModelError(f"{scheduler.path}: {one_line(e)}") from None
        return Denoising(inner, "flow", num_train_timesteps)

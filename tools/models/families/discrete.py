"""Discrete-time (DDPM-style) schedulers: the network predicts eps, v or x0 at integer timesteps of an
``alphas_cumprod`` table, and becomes an :class:`edm.DiscreteTimeDenoiser` (sigma -> timestep interpolated
linearly in sigma, as diffusers' schedulers do). The x0 thresholding the scheduler applies is honoured."""

from __future__ import annotations

import torch
from torch import nn

from tools.common import one_line

from ..base import ModelError
from ..diffusers import DIFFUSERS_PREDICTIONS, scheduler_of, x0_thresholding
from ..saved_pipeline import SchedulerFile
from .base import Denoising, Geometry, SchedulerKind

__all__ = ["DiscreteTime"]


class DiscreteTime(SchedulerKind):
    """A scheduler with an ``alphas_cumprod`` table (DDPM, DDIM, PNDM, Euler, ...): its noise schedule and
    ``prediction_type`` define the denoiser."""

    model_settings = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                      "prediction_type", "rescale_betas_zero_snr", "timestep_type")
    x0_settings = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio",
                   "sample_max_value")

    def denoiser(self, backbone: nn.Module, scheduler: SchedulerFile, geometry: Geometry,
                 dtype: torch.dtype) -> Denoising:
        abar, settings, scheduler_class = scheduler_of(scheduler.config, scheduler.path)
        prediction_type = settings.get("prediction_type", "epsilon")
        if prediction_type not in DIFFUSERS_PREDICTIONS:
            raise ModelError(f"{scheduler.path}: unsupported prediction_type {prediction_type!r} "
                             f"(supported: {', '.join(DIFFUSERS_PREDICTIONS)})")
        threshold, thresholding, ignored = x0_thresholding(settings, scheduler_class)
        prediction = DIFFUSERS_PREDICTIONS[prediction_type]
        from edm import DiscreteTimeDenoiser

        try:
            inner = DiscreteTimeDenoiser(backbone, abar, prediction=prediction, interpolation="linear",
                                         backbone_dtype=dtype)
        except ValueError as e:
            raise ModelError(f"{scheduler.path}: {one_line(e)}") from None
        return Denoising(inner, prediction, int(abar.shape[0]), sigmas=inner.scheme.sigmas,
                         threshold=threshold, thresholding=thresholding, ignored=ignored)

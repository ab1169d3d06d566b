"""Thresholding of the predicted x0, as a denoiser transform any sampler can take.

* static (Ho et al. 2020's ``clip_sample``): clip ``x0_hat`` to ``[-r, r]`` (r = 1 for data in [-1, 1]);
* dynamic (Saharia et al. 2022, Imagen, Sec. 2.3): per sample, ``s`` = the ``p``-quantile of ``|x0_hat|``
  over all its pixels, ``s <- clamp(s, 1, s_max)``; clip to ``[-s, s]`` and divide by ``s``. Samples
  already inside [-1, 1] are unchanged; saturated ones are pulled back in instead of clipped flat, which is
  what lets strong guidance weights keep detail. ``s_max = inf`` is Imagen's rule; diffusers' schedulers
  cap it with ``sample_max_value`` (default 1, which makes dynamic thresholding the static clip).

The transform wraps the (guided) denoiser, so a sampler steps with the thresholded ``x0_hat`` everywhere
it uses D: exactly what diffusers' DPM-Solver(++) multistep, DDPM and UniPC schedulers do with
``thresholding`` / ``clip_sample``. diffusers' DDIM differs in one place: its step keeps the network's own
epsilon for the direction term (``use_clipped_model_output=False``); :meth:`Thresholded.split` gives the
sampler both predictions so the ``ddim`` sampler can do the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .wrapper import DenoiserWrapper

__all__ = ["THRESHOLDS", "Thresholded", "dynamic_threshold", "static_threshold"]


def static_threshold(x0: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """``x0`` clipped to ``[-limit, limit]``."""
    return x0.clamp(-limit, limit)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995,
                      max_value: float = math.inf) -> torch.Tensor:
    """Imagen's dynamic thresholding per sample: ``s = clamp(quantile(|x0|, percentile), 1, max_value)``,
    then ``clip(x0, -s, s) / s``. The quantile is taken over all elements of a sample (channels and pixels
    together, as diffusers' ``_threshold_sample``), in float32 at least."""
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work.abs(), percentile, dim=1).clamp(min=1.0, max=max_value)[:, None]
    return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype).reshape(x0.shape)


THRESHOLDS = ("static", "dynamic")


class Thresholded(DenoiserWrapper):
    """The denoiser with its x0 prediction thresholded.

    Args:
        kind: ``"static"`` (clip to ``[-limit, limit]``) or ``"dynamic"`` (Imagen, per-sample quantile).
        percentile: the quantile ``p`` of dynamic thresholding, in (0, 1].
        limit: the static clip range (diffusers' ``clip_sample_range``).
        max_value: the cap on dynamic thresholding's ``s`` (diffusers' ``sample_max_value``; inf: none).
    """

    def __init__(self, denoiser: Callable, kind: str = "dynamic", *, percentile: float = 0.995,
                 limit: float = 1.0, max_value: float = math.inf):
        super().__init__(denoiser)
        if kind not in THRESHOLDS:
            raise ValueError(f"unknown thresholding {kind!r}; valid: {', '.join(THRESHOLDS)}")
        if not 0 < float(percentile) <= 1:
            raise ValueError(f"the thresholding percentile must be in (0, 1], got {percentile!r}")
        if not float(limit) > 0 or not float(max_value) >= 1:
            raise ValueError(f"need limit > 0 and max_value >= 1, got {limit!r}, {max_value!r}")
        self.kind = kind
        self.percentile = float(percentile)
        self.limit = float(limit)
        self.max_value = float(max_value)
        if hasattr(denoiser, "with_unconditional"):  # CFG++ passes through, its guided part thresholded
            self.with_unconditional = self._with_unconditional

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        if self.kind == "static":
            return static_threshold(x0, self.limit)
        return dynamic_threshold(x0, self.percentile, self.max_value)

    def split(self, x: torch.Tensor, sigma, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw x0_hat, thresholded x0_hat)`` of one evaluation."""
        raw = self.denoiser(x, sigma, **cond)
        return raw, self.threshold(raw)

    def _with_unconditional(self, x: torch.Tensor, sigma, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """CFG++'s ``(guided x0, unconditional x0)`` with the guided one thresholded."""
        guided, negative = self.denoiser.with_unconditional(x, sigma, **cond)
        return self.threshold(guided), negative

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.split(x, sigma, **cond)[1]

    def __repr__(self) -> str:
        how = f"limit={self.limit:g}" if self.kind == "static" else f"p={self.percentile:g}"
        return f"Thresholded({self.denoiser!r}, {self.kind}, {how})"

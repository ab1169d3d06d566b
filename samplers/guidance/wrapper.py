"""What every denoiser transform shares: it holds an inner denoiser, exposes exactly the optional protocol
attributes that one has (``samplers.protocol``), and may act only inside a sigma interval."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..protocol import forward_attribute

__all__ = ["DenoiserWrapper", "check_interval", "check_weight", "per_sample", "sigma_column"]


class DenoiserWrapper:
    """Base of the transforms: ``self.denoiser`` is the inner denoiser, protocol attributes forward to it."""

    def __init__(self, denoiser: Callable):
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable, got {denoiser!r}")
        self.denoiser = denoiser

    def reset_state(self) -> None:
        """Forget any state of earlier runs (a stateful guidance rule's), here and in the inner denoiser (any
        that has ``reset_state``, wrapper or not); ``samplers.sample`` calls it at the start of every run."""
        inner = getattr(self.denoiser, "reset_state", None)
        if callable(inner):
            inner()

    def __getattr__(self, name):
        # Only reached for attributes not set in __init__: forward the denoiser protocol attributes, so
        # hasattr(wrapper, "round_sigma") is true exactly when the wrapped denoiser has one.
        if "denoiser" in self.__dict__:
            try:
                return forward_attribute(self.__dict__["denoiser"], name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def check_weight(w, what: str = "guidance weight w") -> float:
    """``w`` as a finite float; ValueError (one line) otherwise."""
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {w!r}") from None
    if not math.isfinite(w):
        raise ValueError(f"{what} must be finite, got {w}")
    return w


def check_interval(interval) -> tuple[float, float] | None:
    """``(sigma_lo, sigma_hi)`` with ``0 <= lo < hi`` (hi may be inf), or None for "every sigma"."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"interval must satisfy 0 <= sigma_lo < sigma_hi, got ({lo:g}, {hi:g})")
    return lo, hi


def sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a float or a ``[B]`` tensor) as a ``[B, 1, ..., 1]`` tensor broadcasting against ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def per_sample(weight: float, sigma, x: torch.Tensor, interval: tuple[float, float] | None) -> torch.Tensor:
    """The weight of each sample: ``weight`` where ``sigma_lo < sigma <= sigma_hi`` (Kynkaanniemi et al.
    2024's guidance interval), 0 elsewhere; ``[B, 1, ..., 1]``. Without an interval, ``weight`` everywhere."""
    sigma = sigma_column(sigma, x)
    if interval is None:
        return torch.full_like(sigma, weight)
    lo, hi = interval
    inside = (sigma > lo) & (sigma <= hi)
    return torch.where(inside, weight, 0.0).to(x.dtype)

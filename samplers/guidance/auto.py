"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", EDM2):
guide a model with a weaker version of itself instead of with its unconditional self.

``D_w(x; sigma, c) = D(x; sigma, c) + w * (D(x; sigma, c) - D_weak(x; sigma, c))``

computed as EDM2 does, ``D_weak.lerp(D, 1 + w)`` (EDM2's ``guidance`` is ``1 + w``). Both models see the
same input and conditioning. They are different networks, so a guided evaluation costs TWO calls (one of
each, ``B`` samples each); a benchmark counts both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .wrapper import DenoiserWrapper, check_interval, check_weight, per_sample

__all__ = ["Autoguidance"]


class Autoguidance(DenoiserWrapper):
    """``D_weak.lerp(D, 1 + w)`` over a denoiser and its weaker version (same protocol, same conditioning).

    ``interval``: ``(sigma_lo, sigma_hi)``, guide only inside it (elsewhere ``D`` alone, one call).
    The optional protocol attributes are the main denoiser's.
    """

    def __init__(self, denoiser: Callable, weak: Callable, w: float = 0.0, *,
                 interval: tuple[float, float] | None = None):
        super().__init__(denoiser)
        if not callable(weak):
            raise ValueError(f"the guiding (weak) denoiser must be callable, got {weak!r}")
        self.weak = weak
        self.w = check_weight(w)
        self.interval = check_interval(interval)

    @property
    def evaluations(self) -> int:
        """Network evaluations per guided call: the model and its weak version."""
        return 1 if self.w == 0 else 2

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        d = self.denoiser(x, sigma, **cond)
        if self.w == 0:
            return d
        weight = per_sample(self.w, sigma, x, self.interval)
        if not bool(weight.any()):
            return d
        d_weak = self.weak(x, sigma, **cond)
        return d_weak.lerp(d, (1 + weight).to(d.dtype))

    def __repr__(self) -> str:
        return f"Autoguidance({self.denoiser!r}, weak={self.weak!r}, w={self.w:g})"

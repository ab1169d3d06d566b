"""The ``ode`` metric: how far a deterministic sampler lands from the exact probability-flow ODE solution.

The reference starts from the same noise ``x = sigma_max * latents``, is integrated in float64 by
``tools.ode_reference`` (``solve_ivp``, DOP853, tight tolerances) down to the schedule's last nonzero
sigma and ends with the same final denoising jump as the samplers. References depend only on the start
noise and the two end levels, so one is shared by every sampler and schedule with those ends.
"""

from __future__ import annotations

import torch

from tools.ode_reference import reference_sample

__all__ = ["ReferenceCache", "rms_error"]


def rms_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square over all elements of ``x - reference`` (per-sample RMS, then their RMS)."""
    diff = x.to(torch.float64) - reference.to(torch.float64)
    return float(diff.square().mean().sqrt())


class ReferenceCache:
    """Exact-ODE end points of ``latents`` under ``denoiser``, keyed by the schedule's two ends.

    ``latents`` are unit-variance start noises ``[B, ...]``; ``cond`` is passed to every denoiser call.
    """

    def __init__(self, denoiser, latents: torch.Tensor, cond: dict | None = None, *, rtol: float = 1e-10,
                 atol: float = 1e-10):
        self.denoiser, self.latents, self.cond = denoiser, latents, dict(cond or {})
        self.rtol, self.atol = rtol, atol
        self._cache: dict[tuple[float, float, bool], torch.Tensor] = {}

    def __call__(self, sigmas) -> torch.Tensor:
        """The float64 reference for a run over ``sigmas`` (decreasing, ending in 0 or not)."""
        sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist()]
        final_jump = sig[-1] == 0
        key = (sig[0], sig[-2] if final_jump else sig[-1], final_jump)
        if key not in self._cache:
            start, end = key[:2]
            if final_jump:  # the jump from the shared no-jump end point: one ODE solve serves both kinds
                self._cache[key] = reference_sample(self.denoiser, self([start, end]), [end, 0.0],
                                                    cond=self.cond)
            else:
                self._cache[key] = reference_sample(self.denoiser, self.latents.to(torch.float64) * start,
                                                    [start, end], rtol=self.rtol, atol=self.atol,
                                                    cond=self.cond)
        return self._cache[key]

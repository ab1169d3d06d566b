"""The ``ode`` metric: near-exact solutions of the probability-flow ODE, and how far a deterministic
sampler lands from them.

The EDM probability-flow ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma``.  In ``t = log sigma`` it
reads ``dx/dt = x - D(x; e^t)``, which is far better conditioned (no ``1/sigma`` blow-up near small
sigma, and the step sizes adapt to a scale-free variable), so it is integrated that way here with
``scipy.integrate.solve_ivp`` in float64 over the flattened batch.

The ``ode`` metric's reference starts from the same noise ``x = sigma_max * latents``, is integrated down
to the schedule's last nonzero sigma and ends with the same final denoising jump as the samplers.
References depend only on the start noise and the two end levels, so :class:`ReferenceCache` shares one
among every sampler and schedule with those ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp

__all__ = ["ReferenceCache", "reference_sample", "rms_error", "solve_probability_flow"]



Denoiser = Callable[..., torch.Tensor]


def _denoise64(denoiser: Denoiser, x: torch.Tensor, sigma: float, cond: dict) -> torch.Tensor:
    s = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        return denoiser(x, s, **cond).to(torch.float64)


def solve_probability_flow(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma_from: float,
    sigma_to: float,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "DOP853",
    cond: dict | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dsigma = (x - D(x; sigma)) / sigma`` from ``sigma_from`` to ``sigma_to``.

    Both noise levels must be positive (either direction works).  ``x`` is ``[B, ...]`` at
    ``sigma_from``; the denoiser is called as ``denoiser(x, sigma, **cond)`` with float64 ``x`` and a
    float64 ``[B]`` sigma on ``x``'s device.  The whole batch is one ODE system.  Returns a float64
    tensor of ``x``'s shape on ``x``'s device.  Raises ``RuntimeError`` if the solver fails.
    """
    sigma_from, sigma_to = float(sigma_from), float(sigma_to)
    if not (sigma_from > 0 and sigma_to > 0):
        raise ValueError(f"sigma_from and sigma_to must be > 0, got {sigma_from}, {sigma_to}")
    cond = cond or {}
    shape, device = x.shape, x.device
    x64 = x.detach().to(torch.float64)
    if sigma_from == sigma_to:
        return x64.clone()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).to(device).view(shape)
        d = _denoise64(denoiser, xt, math.exp(t), cond)
        return (xt - d).reshape(-1).cpu().numpy()

    sol = solve_ivp(
        rhs,
        (math.log(sigma_from), math.log(sigma_to)),
        x64.reshape(-1).cpu().numpy(),
        method=method,
        rtol=rtol,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).to(device).view(shape)


def reference_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "DOP853",
    cond: dict | None = None,
) -> torch.Tensor:
    """The exact-ODE counterpart of a deterministic sampler run over ``sigmas``.

    ``x`` is the starting point at ``sigmas[0]`` (e.g. ``sigmas[0] * latent``).  Integrates the
    probability-flow ODE from ``sigmas[0]`` to the last nonzero sigma; if ``sigmas[-1] == 0`` it
    then applies the final jump ``x -> D(x; sigmas[-2])``, which is exactly what Euler/Heun-type
    samplers do on their last step (``x + (0 - s) (x - D) / s = D``).  Returns float64.
    """
    sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist()]
    if len(sig) < 2:
        raise ValueError("sigmas must have at least two entries")
    cond = cond or {}
    final_jump = sig[-1] == 0
    sigma_end = sig[-2] if final_jump else sig[-1]
    out = solve_probability_flow(denoiser, x, sig[0], sigma_end, rtol=rtol, atol=atol, method=method,
                                 cond=cond)
    if final_jump:
        out = _denoise64(denoiser, out, sigma_end, cond)
    return out




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

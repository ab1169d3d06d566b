"""Flow-matching (rectified-flow) velocity models as EDM denoisers.

A flow model (SD3, Flux, rectified flow) is trained on ``x_t = (1 - t) y + t n`` with ``n ~ N(0, I)``
and predicts the velocity ``v = n - y``.  Dividing by ``1 - t`` gives the EDM state

    x = x_t / (1 - t) = y + sigma n,        sigma = t / (1 - t),        t = sigma / (1 + sigma),

so the model is an EDM denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with

    c_in = c_skip = 1 / (1 + sigma) = 1 - t,    c_out = -sigma / (1 + sigma) = -t,    c_noise = t * time_scale

(``D = x_t - t v``: the point the straight path through ``x_t`` with velocity ``v`` reaches at t = 0).
The backbone's target ``(y - c_skip x) / c_out`` is ``(y - x_t) / -t = n - y = v``, and the loss weight
``1 / c_out^2`` makes the EDM loss the plain velocity MSE.  SD3 passes ``timestep = 1000 t``
(``time_scale=1000``).

Schedules.  The time shift of SD3 and diffusers, ``t' = shift t / (1 + (shift - 1) t)``, is exactly
``sigma' = shift * sigma``; Flux's dynamic shifting ``t' = e^mu / (e^mu + 1/t - 1)`` is
``sigma' = e^mu sigma``.  SD3's logit-normal training ``t = sigmoid(N(m, s^2))`` is
``sigma = t / (1 - t) = exp(N(m, s^2))``: EDM's log-normal (``P_mean = m``, ``P_std = s``).

Starting at t = 1 (sigma = inf).  Flow schedules may start at pure noise (diffusers'
``FlowMatchEulerDiscreteScheduler`` does), where ``x`` is infinite.  The convention of this library is
that at sigma = inf a denoiser is given the unit-variance noise ``u = lim x / sigma`` (which is ``x_t``
at t = 1) instead of ``x``: :class:`edm.precond.Precond` evaluates ``D(u; inf)`` with the scheme's limits
(:meth:`edm.precond.Scheme.at_infinity`; here ``D(u; inf) = u - F(u; time_scale)``), and
``samplers.sample`` given ``sigmas[0] = inf`` takes ``x`` as ``u`` and makes the first step the
Euler step from infinity, ``x_1 = D(u; inf) + sigmas[1] u`` (diffusers' first Euler step from t = 1,
and the limit of every first-order first step), before running the sampler on ``sigmas[1:]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .precond import Precond, Scheme, schemes

__all__ = [
    "FlowScheme",
    "FlowDenoiser",
    "flow_time",
    "flow_sigma",
    "to_flow",
    "from_flow",
    "shift_sigmas",
    "dynamic_shift_sigmas",
]


# ----------------------------------------------------------------------------------------------
# Time and state maps


def flow_time(sigma) -> Tensor:
    """``t = sigma / (1 + sigma)``, the inverse of ``sigma = t / (1 - t)``; 1 at sigma = inf."""
    sigma = torch.as_tensor(sigma)
    return torch.where(sigma.isinf(), torch.ones_like(sigma), sigma / (1 + sigma))


def flow_sigma(t) -> Tensor:
    """``sigma = t / (1 - t)``: the ratio of noise to signal in ``x_t = (1 - t) y + t n``; inf at t = 1."""
    t = torch.as_tensor(t)
    return t / (1 - t)


def _column(level: Tensor, x: Tensor) -> Tensor:
    """A noise level (number, ``[B]`` or broadcastable) shaped to broadcast against ``x``."""
    level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
    if level.ndim == 1 and x.ndim > 1:
        level = level.reshape(-1, *([1] * (x.ndim - 1)))
    return level


def to_flow(x: Tensor, sigma) -> Tensor:
    """``x_t = x / (1 + sigma)`` from ``x = y + sigma n`` (``1 / (1 + sigma) = 1 - t``).

    At sigma = inf the state is the unit noise ``u`` (the convention above), and ``x_t = u``.
    """
    sigma = _column(sigma, x)
    return torch.where(sigma.isinf(), x, x / (1 + sigma))


def from_flow(x_t: Tensor, t) -> Tensor:
    """``x = x_t / (1 - t) = y + sigma n`` from ``x_t = (1 - t) y + t n``; ``u = x_t`` at t = 1."""
    t = _column(t, x_t)
    return torch.where(t == 1, x_t, x_t / (1 - t))


def shift_sigmas(sigmas, shift: float) -> Tensor:
    """SD3's time shift ``t' = shift t / (1 + (shift - 1) t)`` in sigma: ``sigma' = shift sigma``.

    ``sigma' = t' / (1 - t') = shift t / (1 + (shift - 1) t - shift t) = shift t / (1 - t)``.
    inf and 0 stay.
    """
    return shift * torch.as_tensor(sigmas)


def dynamic_shift_sigmas(sigmas, mu: float) -> Tensor:
    """Flux's dynamic shift ``t' = e^mu / (e^mu + 1/t - 1)`` in sigma: ``sigma' = e^mu sigma``.

    ``1/t - 1 = 1 / sigma``, so ``t' = e^mu sigma / (e^mu sigma + 1)``, which is ``flow_time`` of
    ``e^mu sigma``.  It is :func:`shift_sigmas` with ``shift = e^mu`` (mu depends on the image size).
    inf and 0 stay.
    """
    return math.exp(mu) * torch.as_tensor(sigmas)


# ----------------------------------------------------------------------------------------------
# The scheme


@schemes.register("flow")
class FlowScheme(Scheme):
    """Velocity prediction on ``x_t = (1 - t) y + t n``: ``c_in = c_skip = 1 - t``, ``c_out = -t``,
    ``c_noise = time_scale t``; training ``ln sigma = logit t ~ N(P_mean, P_std^2)`` (SD3's
    logit-normal), loss weight ``1 / c_out^2`` (the plain velocity MSE).

    The default range is diffusers' 1000-step flow schedule without shift, ``t`` in ``[1/1000, 999/1000]``.
    """

    def __init__(self, time_scale=1.0, P_mean=0.0, P_std=1.0, sigma_min=1 / 999, sigma_max=999.0):
        self.time_scale = float(time_scale)
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return flow_time(sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return flow_sigma(t)

    def c_skip(self, sigma):
        return 1 / (1 + sigma)

    def c_out(self, sigma):
        return -sigma / (1 + sigma)

    def c_in(self, sigma):
        return 1 / (1 + sigma)

    def c_noise(self, sigma):
        return self.time_scale * sigma / (1 + sigma)

    def at_infinity(self):
        """``sigma c_skip -> 1``, ``c_out -> -1``, ``sigma c_in -> 1``, ``c_noise -> time_scale``:
        ``D(u; inf) = u - F(u; time_scale)``, the data point ``n - v`` at t = 1 where ``x_t = n = u``."""
        return 1.0, -1.0, 1.0, self.time_scale

    def loss_weight(self, sigma):
        return ((1 + sigma) / sigma) ** 2

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return (noise * self.P_std + self.P_mean).exp()


# ----------------------------------------------------------------------------------------------
# The denoiser


class FlowDenoiser(Precond):
    """EDM denoiser for a flow backbone ``backbone(x_t, time_scale * t, **cond) -> velocity``.

    Args:
        backbone: the velocity model, called with ``x_t = x / (1 + sigma)`` and ``timestep = time_scale t``.
        time_scale: the backbone's timestep per unit t (1000 for SD3 / Flux transformers in diffusers).
        shift: the time shift the model is sampled with (``sigma' = shift sigma``, see
            :func:`shift_sigmas`); it sets ``sigma_min`` / ``sigma_max`` and is kept as ``shift`` for
            building schedules.  It does not change ``D``.
        num_train_timesteps: N of diffusers' scheduler.  The range is its ``t`` in ``[1/N, 1 - 1/N]``
            shifted, i.e. ``sigma_min = shift / (N - 1)``, ``sigma_max = shift (N - 1)`` (diffusers
            itself starts at t = 1, sigma = inf: see the module docstring).
        backbone_dtype, validate_sigma: as :class:`edm.precond.Precond`.

    ``sigma_to_t`` / ``t_to_sigma`` map between EDM sigma and flow time ``t`` in [0, 1] (the backbone
    sees ``time_scale t``).
    """

    def __init__(
        self,
        backbone,
        *,
        time_scale: float = 1000.0,
        shift: float = 1.0,
        num_train_timesteps: int = 1000,
        backbone_dtype: torch.dtype | None = None,
        validate_sigma: bool = True,
    ):
        n = int(num_train_timesteps)
        if n < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps!r}")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift!r}")
        scheme = FlowScheme(time_scale=time_scale, sigma_min=shift / (n - 1), sigma_max=shift * (n - 1))
        super().__init__(backbone, scheme, backbone_dtype=backbone_dtype, validate_sigma=validate_sigma)
        self.shift = float(shift)
        self.num_train_timesteps = n

    @property
    def time_scale(self) -> float:
        return self.scheme.time_scale

    def sigma_to_t(self, sigma) -> Tensor:
        return flow_time(sigma)

    def t_to_sigma(self, t) -> Tensor:
        return flow_sigma(t)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift}, num_train_timesteps={self.num_train_timesteps}"

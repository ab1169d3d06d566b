"""EDM denoisers from backbones trained to predict eps, v or x0, in discrete or continuous time.

A backbone ``model(x_in, t, **cond)`` sees its input in VP form ``x_in = c_in x`` with
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` (``sigma_data = 1`` reproduces the DDPM scaling
``sqrt(abar) x_t``) and a time ``t`` derived from sigma.  Its prediction is turned into the
denoised image by the row of its prediction type:

    prediction  c_skip                          c_out
    eps         1                               -sigma
    v           sd^2 / (sigma^2 + sd^2)         -sigma sd / sqrt(sigma^2 + sd^2)
    x0          0                               1

Each wrapper is a :class:`edm.precond.Precond` with a scheme whose ``c_noise`` is the time map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .precond import Precond, Scheme, Table, table_dtype

__all__ = [
    "PREDICTIONS",
    "prediction_coefficients",
    "PredictionScheme",
    "DiscreteTimeScheme",
    "ContinuousTimeDenoiser",
    "DiscreteTimeDenoiser",
    "vp_sigma_to_t",
    "vp_t_to_sigma",
]


def _eps_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor]:
    return torch.ones_like(sigma), -sigma


def _v_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor]:
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, -sigma * sigma_data / total.sqrt()


def _x0_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor]:
    return torch.zeros_like(sigma), torch.ones_like(sigma)


#: prediction type -> function ``(sigma, sigma_data) -> (c_skip, c_out)``
PREDICTIONS: dict[str, Callable[[Tensor, float], tuple[Tensor, Tensor]]] = {
    "eps": _eps_coefficients,
    "v": _v_coefficients,
    "x0": _x0_coefficients,
}


def prediction_coefficients(prediction: str) -> Callable[[Tensor, float], tuple[Tensor, Tensor]]:
    """The ``(c_skip, c_out)`` function of a prediction type; ValueError for unknown names."""
    try:
        return PREDICTIONS[prediction]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown prediction {prediction!r}; valid predictions: {', '.join(sorted(PREDICTIONS))}"
        ) from None


def vp_sigma_to_t(beta_d: float = 19.9, beta_min: float = 0.1) -> Callable[[Tensor], Tensor]:
    """Continuous VP time ``t(sigma)`` of Song et al. (linear beta schedule), e.g. for score-SDE models."""

    def sigma_to_t(sigma: Tensor) -> Tensor:
        return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d

    return sigma_to_t


def vp_t_to_sigma(beta_d: float = 19.9, beta_min: float = 0.1) -> Callable[[Tensor], Tensor]:
    """Inverse of :func:`vp_sigma_to_t`: ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""

    def t_to_sigma(t: Tensor) -> Tensor:
        return torch.special.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()

    return t_to_sigma


def _identity(sigma: Tensor) -> Tensor:
    return sigma


class PredictionScheme(Scheme):
    """Scheme for an eps/v/x0 backbone with continuous time ``c_noise = sigma_to_t(sigma)``.

    The loss weight is ``1 / c_out^2``, so that the EDM loss ``lambda ||D - y||^2`` is the plain
    regression loss of the backbone on its own target (eps, v or x0).
    """

    name = "prediction"

    def __init__(
        self,
        prediction: str = "eps",
        sigma_data: float = 1.0,
        sigma_to_t: Callable[[Tensor], Tensor] | None = None,
        t_to_sigma: Callable[[Tensor], Tensor] | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ):
        self._coefficients = prediction_coefficients(prediction)
        self.prediction = prediction
        self.sigma_data = float(sigma_data)
        self._sigma_to_t = _identity if sigma_to_t is None else sigma_to_t
        self._t_to_sigma = _identity if sigma_to_t is None and t_to_sigma is None else t_to_sigma
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self._sigma_to_t(sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        if self._t_to_sigma is None:
            raise NotImplementedError("no t_to_sigma was given for this sigma_to_t")
        return self._t_to_sigma(t)

    def c_skip(self, sigma):
        return self._coefficients(sigma, self.sigma_data)[0]

    def c_out(self, sigma):
        return self._coefficients(sigma, self.sigma_data)[1]

    def c_in(self, sigma):
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma):
        return self.sigma_to_t(sigma)

    def loss_weight(self, sigma):
        return self.c_out(sigma) ** -2

    def at_infinity(self):
        """Limits on ``u = x / sigma`` at zero SNR: v-prediction ``(0, -sigma_data, 1, t_inf)`` (``D(u; inf)
        = -sigma_data F(u; t_inf)``), x0-prediction ``(0, 1, 1, t_inf)``; eps has none (``x - sigma eps``).
        ``t_inf`` is the end of a discrete table (where ``sigma_to_t`` clamps), else ``sigma_to_t(inf)``."""
        if self.prediction not in ("v", "x0"):
            raise ValueError(f"scheme {self.name!r} with {self.prediction} prediction has no finite limit "
                             "at sigma = inf")
        if self.sigmas is not None:
            t_inf = torch.tensor(len(self.sigmas) - 1.0)
        else:
            t_inf = self.sigma_to_t(torch.tensor(float("inf"), dtype=torch.float64))
        if not bool(t_inf.isfinite()):
            raise ValueError(f"scheme {self.name!r} has no finite limit at sigma = inf "
                             f"(its time there is {float(t_inf)})")
        c_out = -self.sigma_data if self.prediction == "v" else 1.0
        return 0.0, c_out, 1.0, float(t_inf)


class DiscreteTimeScheme(PredictionScheme):
    """Discrete DDPM time: table ``sigma_t = sqrt((1 - abar_t) / abar_t)``, t = 0 .. T-1.

    sigma maps to a fractional timestep by piecewise-linear interpolation of the table (clamped to
    it), or to the nearest timestep (an integer tensor) when ``quantize`` is set.  ``interpolation``
    says in what: ``"log"`` (the default) interpolates log sigma, as k-diffusion does; ``"linear"``
    interpolates sigma itself, as diffusers' sigma-space schedulers do (``np.interp(timesteps,
    arange(T), sigmas)`` in ``EulerDiscreteScheduler`` and the others), so that ``sigma_to_t`` gives
    back their fractional timesteps.  ``t_to_sigma`` is the inverse in the same space.
    """

    name = "discrete"
    INTERPOLATIONS = ("log", "linear")

    def __init__(self, alphas_cumprod, prediction: str = "eps", quantize: bool = False,
                 interpolation: str = "log"):
        if interpolation not in self.INTERPOLATIONS:
            valid = ", ".join(self.INTERPOLATIONS)
            raise ValueError(f"unknown interpolation {interpolation!r}; valid: {valid}")
        abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if abar.ndim != 1 or abar.shape[0] < 2:
            raise ValueError("alphas_cumprod must be a 1-D sequence of at least two values")
        if not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        sigmas = ((1 - abar) / abar).sqrt()
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        super().__init__(prediction, sigma_data=1.0, sigma_min=float(sigmas[0]), sigma_max=float(sigmas[-1]))
        self.quantize = bool(quantize)
        self.interpolation = interpolation
        self.sigmas = sigmas
        self._sigmas = Table(sigmas)
        self._log_sigmas = Table(sigmas.log())

    def _log_table(self, like: Tensor) -> Tensor:
        dtype = like.dtype if like.is_floating_point() else table_dtype(like.device)
        return self._log_sigmas.on(like.device, dtype)

    def _space(self, like: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(table, into, back)``: the table in the interpolation's space and the maps into and out of it."""
        if self.interpolation == "linear":
            dtype = like.dtype if like.is_floating_point() else table_dtype(like.device)
            return self._sigmas.on(like.device, dtype), _identity, _identity
        return self._log_table(like), torch.log, torch.exp

    def sigma_to_t(self, sigma: Tensor, quantize: bool | None = None) -> Tensor:
        quantize = self.quantize if quantize is None else quantize
        sigma = torch.as_tensor(sigma)
        table, into, _ = self._space(sigma)
        u = into(sigma.to(table.dtype)).reshape(-1)
        if quantize:
            t = (u[:, None] - table).abs().argmin(dim=1)
        else:
            low = (torch.searchsorted(table, u, right=True) - 1).clamp(0, len(table) - 2)
            w = ((u - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
            t = low + w
        return t.reshape(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        table, _, back = self._space(t)
        t = t.to(table.dtype).clamp(0, len(table) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        return back((1 - w) * table[low] + w * table[high])

    def _table(self, like: Tensor) -> Tensor:
        return self._sigmas.on(like.device, like.dtype if like.is_floating_point() else None)

    def round_sigma(self, sigma):
        """The nearest table entry (in the interpolation's space), in the dtype of ``sigma``."""
        sigma = torch.as_tensor(sigma)
        return self._table(sigma)[self.sigma_to_t(sigma, quantize=True)]

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        """DDPM training: timestep uniform over the table."""
        t = torch.randint(0, len(self.sigmas), shape, generator=generator, device=device)
        return self._sigmas.on(t.device, dtype or torch.get_default_dtype())[t]


class _TimeDenoiser(Precond):
    """Shared protocol surface of the wrappers: time maps of the scheme."""

    def sigma_to_t(self, sigma, *args, **kwargs) -> Tensor:
        return self.scheme.sigma_to_t(sigma, *args, **kwargs)

    def t_to_sigma(self, t) -> Tensor:
        return self.scheme.t_to_sigma(t)


class ContinuousTimeDenoiser(_TimeDenoiser):
    """EDM denoiser for a backbone ``model(c_in x, t, **cond)`` predicting eps, v or x0 at time
    ``t = sigma_to_t(sigma)`` (identity by default, i.e. the backbone is conditioned on sigma;
    :func:`vp_sigma_to_t` gives score-SDE VP time).
    """

    def __init__(
        self,
        backbone,
        prediction: str = "eps",
        sigma_to_t: Callable[[Tensor], Tensor] | None = None,
        sigma_data: float = 1.0,
        *,
        t_to_sigma: Callable[[Tensor], Tensor] | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        backbone_dtype: torch.dtype | None = None,
        validate_sigma: bool = True,
    ):
        scheme = PredictionScheme(prediction, sigma_data, sigma_to_t, t_to_sigma, sigma_min, sigma_max)
        super().__init__(backbone, scheme, backbone_dtype=backbone_dtype, validate_sigma=validate_sigma)


class DiscreteTimeDenoiser(_TimeDenoiser):
    """EDM denoiser for a discrete-time DDPM backbone ``model(sqrt(abar) x_t, t, **cond)``.

    Same numbers as k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``: sigma
    is mapped to a fractional timestep by interpolation in log sigma, or to the nearest integer
    timestep with ``quantize=True``; ``interpolation="linear"`` interpolates in sigma instead, as
    diffusers' schedulers do (see :class:`DiscreteTimeScheme`).  Exposes ``sigmas`` (ascending),
    ``sigma_min``, ``sigma_max``, ``round_sigma``, ``sigma_to_t`` and ``t_to_sigma``.
    """

    def __init__(
        self,
        backbone,
        alphas_cumprod,
        prediction: str = "eps",
        quantize: bool = False,
        *,
        interpolation: str = "log",
        backbone_dtype: torch.dtype | None = None,
        validate_sigma: bool = True,
    ):
        scheme = DiscreteTimeScheme(alphas_cumprod, prediction, quantize, interpolation)
        super().__init__(backbone, scheme, backbone_dtype=backbone_dtype, validate_sigma=validate_sigma)

    @property
    def quantize(self) -> bool:
        return self.scheme.quantize

    @property
    def interpolation(self) -> str:
        return self.scheme.interpolation

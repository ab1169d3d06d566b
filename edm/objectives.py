"""Training objectives: how sigma is drawn, how each noise level is weighted, what the network predicts.

An *objective* is a :class:`~edm.precond.Scheme` (the coefficients ``c_skip, c_out, c_in, c_noise``,
the training distribution of sigma, ``Scheme.sample_sigma``, and the weight ``lambda(sigma)``,
``Scheme.loss_weight``) plus the denoiser built from it and its JSON record. Every loss below is
``lambda(sigma) ||D(y + n; sigma) - y||^2`` with ``n ~ N(0, sigma^2 I)`` (:mod:`edm.loss`), written in the
variables of each paper; sigma is the EDM noise level, so a VP pair ``(alpha, sigma_vp)`` is
``sigma = sigma_vp / alpha`` and the log signal-to-noise ratio is ``lambda = log(alpha^2 / sigma_vp^2) =
-2 log sigma``.

``edm`` (Karras et al. 2022)
    ``ln sigma ~ N(P_mean, P_std^2)``, ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` and EDM's
    preconditioning with ``sd = sigma_data``. Training runs and checkpoints without an objective are this.
``ddpm`` (Ho et al. 2020)
    Linear betas ``beta_t`` from ``beta_start`` to ``beta_end`` over ``T`` steps, ``abar_t = prod_{s<=t}
    (1 - beta_s)``, ``t ~ U{0, ..., T-1}`` and the simple loss ``||eps - eps_hat(sqrt(abar_t) y +
    sqrt(1 - abar_t) eps, t)||^2``. In EDM variables ``sigma_t = sqrt((1 - abar_t) / abar_t)``,
    ``x = y + sigma_t eps`` and the backbone sees ``sqrt(abar_t) x = x_t`` and the integer ``t``: exactly
    :class:`~edm.wrappers.DiscreteTimeDenoiser` (eps prediction), whose loss weight ``1 / sigma^2`` makes
    ``lambda ||D - y||^2`` the simple loss.
``v-cosine`` (Salimans & Ho 2022)
    The cosine schedule ``lambda(t) = -2 log tan(pi t / 2)``, i.e. ``sigma = tan(pi t / 2)``, with
    ``t`` uniform on the interval that keeps sigma in ``[sigma_min, sigma_max]`` (truncation; default
    EDM's ``[0.002, 80]``) and optionally shifted, ``lambda(t) + shift`` (Hoogeboom et al. 2023's shifted
    cosine); the v-loss ``||v - v_hat||^2``. For data of standard deviation ``sd`` the VP pair of the
    scaled data ``y / sd`` at noise ``sigma / sd`` is ``alpha = sd / sqrt(sigma^2 + sd^2)``,
    ``sigma_vp = sigma / sqrt(sigma^2 + sd^2)``, and ``v = alpha eps - sigma_vp y / sd`` gives

        D = sd^2 / (sigma^2 + sd^2) x - sigma sd / sqrt(sigma^2 + sd^2) v_hat(x / sqrt(sigma^2 + sd^2)),

    EDM's ``c_skip`` and ``c_in`` and ``-c_out``: a v-network is EDM's ``F`` with the sign of its output
    flipped, and only the sigma distribution and the weighting differ (``lambda = 1 / c_out^2``). The
    noise label is EDM's ``ln(sigma) / 4``.
``sigmoid`` (Kingma & Gao 2023)
    The weighted loss ``w(lambda) (-d lambda / du) ||eps - eps_hat||^2`` with the monotonic weighting
    ``w(lambda) = sigmoid(b - lambda)``, ``u ~ U(0, 1)`` and the truncated (shifted) cosine schedule of
    ``v-cosine`` as ``p(lambda)``, so that it estimates ``integral w(lambda) ||eps - eps_hat||^2 d lambda``
    (the paper's leading 1/2 is left out); ``b = 2`` by default, the ``sigmoid(-lambda + 2)`` weighting of
    their experiments (an option: ``bias``).
    The network is parameterised as in ``v-cosine`` (EDM's preconditioning); ``eps_hat = (x - D) / sigma``.

Objectives live in the registry :data:`objectives` (``objectives.get("ddpm", timesteps=1000)``,
:func:`register_objective`); a checkpoint records ``{"objective": {"name": ..., "params": ...}}`` and
:func:`denoiser_from_config` rebuilds its denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .loss import EDMLoss, PrecondLoss
from .precond import EDMScheme, NamedRegistry, Precond, Scheme, _uniform
from .wrappers import DiscreteTimeDenoiser, DiscreteTimeScheme, PredictionScheme

__all__ = [
    "Objective",
    "EDMObjective",
    "DDPMObjective",
    "VCosineObjective",
    "SigmoidObjective",
    "CosineLogSNRScheme",
    "SigmoidWeightedScheme",
    "ObjectiveRegistry",
    "objectives",
    "register_objective",
    "linear_alphas_cumprod",
    "cosine_logsnr",
    "cosine_time",
    "sigmoid_weight",
    "training_objective",
    "denoiser_from_config",
]


# ----------------------------------------------------------------------------------------------
# The equations


def linear_alphas_cumprod(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)`` for Ho et al.'s linear ``beta_t``, float64, t = 0 .. T-1."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def cosine_logsnr(t: Tensor, shift: float = 0.0) -> Tensor:
    """The cosine schedule's ``lambda(t) = -2 log tan(pi t / 2) + shift``."""
    return -2 * torch.tan(0.5 * math.pi * t).log() + shift


def cosine_time(logsnr: Tensor, shift: float = 0.0) -> Tensor:
    """The inverse of :func:`cosine_logsnr`: ``t(lambda) = (2 / pi) arctan(exp(-(lambda - shift) / 2))``."""
    return (2 / math.pi) * torch.atan(torch.exp(-0.5 * (logsnr - shift)))


def sigmoid_weight(logsnr: Tensor, bias: float = 2.0) -> Tensor:
    """Kingma & Gao's monotonic weighting ``w(lambda) = sigmoid(b - lambda)``."""
    return torch.sigmoid(bias - logsnr)


def _logsnr(sigma: Tensor) -> Tensor:
    return -2 * sigma.log()


# ----------------------------------------------------------------------------------------------
# Schemes of the cosine objectives


class CosineLogSNRScheme(PredictionScheme):
    """v-prediction with data std ``sigma_data`` (EDM's ``c_skip, c_in``, ``-c_out``; noise label
    ``ln(sigma) / 4``) trained on the truncated, shifted cosine logSNR schedule with the v-loss
    ``lambda = 1 / c_out^2``.

    ``u ~ U(0, 1)``, ``t = t_min + u (t_max - t_min)`` with ``[t_min, t_max] = t([lambda_max, lambda_min])``,
    ``lambda_min = -2 log sigma_max``, ``lambda_max = -2 log sigma_min``, and ``sigma = exp(-lambda(t) / 2)``.
    """

    name = "v-cosine"

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 shift: float = 0.0):
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        super().__init__("v", sigma_data=sigma_data, sigma_min=float(sigma_min), sigma_max=float(sigma_max))
        self.shift = float(shift)
        bounds = _logsnr(torch.tensor([sigma_max, sigma_min], dtype=torch.float64))
        self.t_min, self.t_max = (float(t) for t in cosine_time(bounds.flip(0), self.shift))

    def sigma_to_t(self, sigma):
        return sigma.log() / 4

    def logsnr(self, u: Tensor) -> Tensor:
        """``lambda`` at ``u`` in [0, 1]: the cosine schedule on ``[t_min, t_max]``."""
        return cosine_logsnr(self.t_min + u * (self.t_max - self.t_min), self.shift)

    def dlogsnr_du(self, logsnr: Tensor) -> Tensor:
        """``-d lambda / du = (t_max - t_min) 2 pi cosh((lambda - shift) / 2)`` (= ``1 / p(lambda)``)."""
        return (self.t_max - self.t_min) * 2 * math.pi * torch.cosh(0.5 * (logsnr - self.shift))

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        u = _uniform(shape, generator, device, dtype)
        return torch.exp(-0.5 * self.logsnr(u))


class SigmoidWeightedScheme(CosineLogSNRScheme):
    """:class:`CosineLogSNRScheme` trained with Kingma & Gao's eps-loss ``w(lambda) (-d lambda / du)
    ||eps - eps_hat||^2``, ``w = sigmoid(bias - lambda)``; with ``eps - eps_hat = (D - y) / sigma`` the
    weight of ``||D - y||^2`` is that over ``sigma^2``."""

    name = "sigmoid"

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 shift: float = 0.0, bias: float = 2.0):
        super().__init__(sigma_data, sigma_min, sigma_max, shift)
        self.bias = float(bias)

    def loss_weight(self, sigma):
        logsnr = _logsnr(sigma)
        return sigmoid_weight(logsnr, self.bias) * self.dlogsnr_du(logsnr) / sigma**2


# ----------------------------------------------------------------------------------------------
# Objectives


class Objective:
    """One training objective: its :attr:`scheme`, the denoiser built on a backbone, the loss and the record.

    ``params`` are the constructor's arguments (JSON values); ``RUN_OPTIONS`` names those a training run
    fills in from its own options (``sigma_data``, EDM's ``P_mean``/``P_std``).
    """

    name: str = "objective"
    RUN_OPTIONS: tuple[str, ...] = ()
    #: the run options any objective may take (what :func:`training_objective` fills in)
    ALL_RUN_OPTIONS = ("sigma_data", "P_mean", "P_std")

    @classmethod
    def unused_run_options(cls) -> tuple[str, ...]:
        """The run options this objective ignores (left out of a checkpoint's training record)."""
        return tuple(k for k in cls.ALL_RUN_OPTIONS if k not in cls.RUN_OPTIONS)

    def __init__(self, **params):
        self.params = params
        self.scheme = self.build_scheme(**params)

    def build_scheme(self, **params) -> Scheme:
        raise NotImplementedError

    def denoiser(self, backbone) -> Precond:
        """The EDM denoiser ``D(x; sigma)`` of a backbone trained with this objective."""
        return Precond(backbone, self.scheme)

    def loss(self, net: Precond, images: Tensor, labels=None, generator=None, **cond) -> Tensor:
        """Per-element ``lambda(sigma) ||D(y + n; sigma) - y||^2`` (on the backbone's own target)."""
        return PrecondLoss()(net, images, labels=labels, generator=generator, **cond)

    def record(self) -> dict:
        """``{"name": ..., "params": ...}``, what a checkpoint stores; ``objectives.get(name, **params)``."""
        return {"name": self.name, "params": dict(self.params)}

    def precond_record(self) -> dict:
        """The checkpoint's ``precond`` section: the scheme and its parameters (informational where the
        objective record rebuilds the denoiser)."""
        return {"scheme": self.scheme.name, "params": dict(self.params)}

    # Hooks of objectives with state or a teacher (distillation, :mod:`edm.distill`); no-ops here.

    def attach(self, net, share, device) -> None:
        """Called once the run's network exists (before any step, and before a resumed state is restored):
        ``net`` the raw network, ``share`` the run's :class:`~edm.distributed.BatchShare`."""

    def at_step(self, step: int) -> None:
        """Called before each training step with the number of steps done."""

    def after_step(self, net) -> None:
        """Called after each optimizer step (and the EMA update)."""

    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors of the objective's own state, saved with the training state (resume is bit-exact)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved."""

    def sampling_record(self) -> dict | None:
        """The sampling defaults a checkpoint trained with this objective records (its ``sampling``), or
        None."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({params})"


class ObjectiveRegistry(NamedRegistry):
    """Name -> objective class; ``get(name, **params)`` builds one, unknown names raise ValueError."""

    def __init__(self):
        super().__init__("objective", Objective)


objectives = ObjectiveRegistry()
register_objective = objectives.register


@register_objective("edm")
class EDMObjective(Objective):
    """Karras et al.: ``ln sigma ~ N(P_mean, P_std^2)``, ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``."""

    RUN_OPTIONS = ("sigma_data", "P_mean", "P_std")

    def __init__(self, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2):
        super().__init__(sigma_data=float(sigma_data), P_mean=float(P_mean), P_std=float(P_std))

    def build_scheme(self, sigma_data, P_mean, P_std):
        if not P_std > 0:
            raise ValueError(f"P_std must be > 0, got {P_std}")
        return EDMScheme(sigma_data=sigma_data, P_mean=P_mean, P_std=P_std)

    def denoiser(self, backbone):
        return Precond(backbone, "edm", sigma_data=self.params["sigma_data"])

    def loss(self, net, images, labels=None, generator=None, **cond):
        p = self.params
        loss = EDMLoss(P_mean=p["P_mean"], P_std=p["P_std"], sigma_data=p["sigma_data"])
        return loss(net, images, labels=labels, generator=generator, **cond)

    def precond_record(self):
        return {"scheme": "edm", "params": {"sigma_data": self.params["sigma_data"]}}


@register_objective("ddpm")
class DDPMObjective(Objective):
    """Ho et al.: ``t ~ U{0..T-1}``, linear betas, ``||eps - eps_hat(x_t, t)||^2``; sampled through
    :class:`~edm.wrappers.DiscreteTimeDenoiser` (sigma to timestep by linear interpolation in sigma, as
    diffusers' schedulers do; on the table's sigmas, as in training, the timestep is the exact integer)."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__(timesteps=int(timesteps), beta_start=float(beta_start), beta_end=float(beta_end))

    def build_scheme(self, timesteps, beta_start, beta_end):
        if timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {timesteps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
        abar = linear_alphas_cumprod(timesteps, beta_start, beta_end)
        return DiscreteTimeScheme(abar, prediction="eps", interpolation="linear")

    @property
    def alphas_cumprod(self) -> Tensor:
        return linear_alphas_cumprod(**self.params)

    def denoiser(self, backbone):
        return DiscreteTimeDenoiser(backbone, self.alphas_cumprod, prediction="eps", interpolation="linear")

    def precond_record(self):
        return {"scheme": "discrete", "params": {"prediction": "eps", "interpolation": "linear",
                                                 "betas": "linear", **self.params}}


@register_objective("v-cosine")
class VCosineObjective(Objective):
    """Salimans & Ho: v-prediction, the v-loss, sigma on the cosine logSNR schedule (see the module doc)."""

    RUN_OPTIONS = ("sigma_data",)
    SCHEME = CosineLogSNRScheme

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 shift: float = 0.0):
        super().__init__(sigma_data=float(sigma_data), sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                         shift=float(shift))

    def build_scheme(self, **params):
        return self.SCHEME(**params)


@register_objective("sigmoid")
class SigmoidObjective(VCosineObjective):
    """Kingma & Gao: ``sigmoid(b - lambda)``-weighted eps-loss, cosine schedule (see the module doc)."""

    SCHEME = SigmoidWeightedScheme

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 shift: float = 0.0, bias: float = 2.0):
        Objective.__init__(self, sigma_data=float(sigma_data), sigma_min=float(sigma_min),
                           sigma_max=float(sigma_max), shift=float(shift), bias=float(bias))


# ----------------------------------------------------------------------------------------------
# Training runs and checkpoints


def training_objective(name: str, params: dict | None = None, **run_options) -> Objective:
    """The objective ``name`` with ``params``, its ``RUN_OPTIONS`` filled in from ``run_options`` (a run's
    ``sigma_data``, ``P_mean``, ``P_std``) where ``params`` does not give them; other run options are
    ignored."""
    if name not in objectives:
        objectives.get(name)  # raises the unknown-name error
    cls = objectives._classes[name]
    filled = {k: run_options[k] for k in cls.RUN_OPTIONS if k in run_options}
    unknown = set(run_options) - set(Objective.ALL_RUN_OPTIONS)
    if unknown:
        raise ValueError(f"unknown run options {sorted(unknown)}")
    return objectives.get(name, **{**filled, **(params or {})})


def denoiser_from_config(backbone, config: dict) -> Precond:
    """The denoiser a checkpoint config describes: its ``objective`` record where it has one, else its
    ``precond`` section (checkpoints written before objectives existed: EDM's preconditioning)."""
    record = config.get("objective")
    if record is None:
        precond = config["precond"]
        return Precond(backbone, precond.get("scheme", "edm"), **precond.get("params", {}))
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ValueError(f"malformed objective record {record!r}")
    return objectives.get(record["name"], **record.get("params", {})).denoiser(backbone)

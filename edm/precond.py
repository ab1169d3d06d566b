"""Preconditioning of a raw network into an EDM denoiser (Karras et al. 2022, Table 1).

A *scheme* holds one column of Table 1: the coefficients ``c_skip, c_out, c_in, c_noise`` as
functions of sigma, the training distribution of sigma and the loss weight ``lambda(sigma)``.
:class:`Precond` turns any backbone ``F(x_in, c_noise, **cond)`` into the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

whose training target for ``F`` is ``(y - c_skip (y + n)) / c_out`` with ``n ~ N(0, sigma^2 I)``.

Schemes live in the registry :data:`schemes`: ``schemes.get("edm", sigma_data=0.5)``,
``schemes.list()``.  All coefficient functions take and return tensors and follow the dtype and
device of their input; discrete tables are kept in float64 and moved on demand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "Scheme",
    "EDMScheme",
    "ConsistencyScheme",
    "VPScheme",
    "VEScheme",
    "IDDPMScheme",
    "NamedRegistry",
    "SchemeRegistry",
    "schemes",
    "Precond",
]


# ----------------------------------------------------------------------------------------------
# Helpers


def table_dtype(device: torch.device) -> torch.dtype:
    """The dtype used for lookup tables on ``device`` (float64, float32 where unsupported)."""
    return torch.float32 if device.type == "mps" else torch.float64


class Table:
    """A 1-D float64 lookup table with cached copies per (device, dtype)."""

    def __init__(self, values: Tensor):
        self.values = values.detach().to("cpu", torch.float64, copy=True)
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __len__(self) -> int:
        return self.values.shape[0]

    def on(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
        device = torch.device(device)
        dtype = table_dtype(device) if dtype is None else dtype
        key = (device, dtype)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = self.values.to(device=device, dtype=dtype)
        return copy


def _uniform(shape, generator, device, dtype) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _normal(shape, generator, device, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Schemes


class Scheme:
    """One column of EDM Table 1.  Subclasses define the four coefficients and the training setup.

    Attributes: ``name``, ``sigma_min``, ``sigma_max``, ``sigma_data`` (``None`` where undefined)
    and ``sigmas`` (ascending discrete table, or ``None`` for continuous schemes).
    """

    name: str = "scheme"
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_data: float | None = None
    sigmas: Tensor | None = None

    def c_skip(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_out(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_in(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_noise(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) of Table 1."""
        raise NotImplementedError

    def at_infinity(self) -> tuple[float, float, float, float]:
        """``(lim sigma c_skip, lim c_out, lim sigma c_in, lim c_noise)`` as sigma -> inf.

        At sigma = inf a denoiser is given ``u = lim x / sigma`` instead of the infinite ``x``, so
        ``D(u; inf) = k_skip u + c_out F(k_in u; c_noise)`` with these four limits.  Only schemes whose
        denoiser stays finite there (flow, v- and x0-prediction) define them.
        """
        raise ValueError(f"scheme {self.name!r} has no finite limit at sigma = inf")

    def sample_sigma(self, shape, generator=None, device=None, dtype=None) -> Tensor:
        """Draw training noise levels of the given shape."""
        raise NotImplementedError(f"scheme {self.name!r} defines no training distribution of sigma")

    def round_sigma(self, sigma) -> Tensor:
        """Nearest noise level the model supports (identity for continuous schemes)."""
        return torch.as_tensor(sigma)

    def target(self, y: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """Training target of the backbone: ``(y - c_skip x) / c_out`` with ``x = y + n``."""
        return (y - self.c_skip(sigma) * x) / self.c_out(sigma)

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, Tensor)}
        params = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{type(self).__name__}({params})"


class NamedRegistry:
    """Name -> class of one family (``kind``: "scheme", "objective", ...): ``@registry.register(name)`` on a
    class adds it (and sets its ``name``); ``get(name, **params)`` builds one, an unknown name or bad
    parameters raise ValueError; an instance of ``base`` passes through unchanged."""

    def __init__(self, kind: str, base: type):
        self.kind, self.base = kind, base
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def list(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name, **params):
        if isinstance(name, self.base):
            if params:
                raise ValueError(f"parameters cannot be given together with a {self.kind} instance")
            return name
        try:
            cls = self._classes[name]
        except (KeyError, TypeError):
            valid = ", ".join(self.list())
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}") from None
        try:
            return cls(**params)
        except TypeError as e:
            raise ValueError(f"{self.kind} {name!r}: {e}") from None

    def __contains__(self, name) -> bool:
        return name in self._classes

    def __iter__(self):
        return iter(self.list())


class SchemeRegistry(NamedRegistry):
    """Name -> scheme class.  ``get(name, **params)`` builds one; unknown names raise ValueError."""

    def __init__(self):
        super().__init__("scheme", Scheme)


schemes = SchemeRegistry()


@schemes.register("edm")
class EDMScheme(Scheme):
    """EDM (Karras et al. 2022): unit-variance input and target at every sigma."""

    def __init__(self, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, P_mean=-1.2, P_std=1.2):
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)

    def c_skip(self, sigma):
        sd2 = self.sigma_data**2
        return sd2 / (sigma**2 + sd2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma):
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma):
        return sigma.log() / 4

    def loss_weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        return (_normal(shape, generator, device, dtype) * self.P_std + self.P_mean).exp()


@schemes.register("consistency")
class ConsistencyScheme(EDMScheme):
    """A consistency model's parameterisation (Song et al. 2023, Appendix C): EDM's with the boundary
    condition ``D(x; sigma_min) = x`` built in, ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)`` and
    ``c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)``; ``c_in`` and ``c_noise`` are EDM's, so a
    student initialised from an EDM teacher starts as that teacher away from ``sigma_min``. Below
    ``sigma_min`` (sampling only) the output is ``x``: the consistency function is the identity there."""

    def c_skip(self, sigma):
        sd2 = self.sigma_data**2
        return sd2 / ((sigma - self.sigma_min).clamp(min=0) ** 2 + sd2)

    def c_out(self, sigma):
        above = (sigma - self.sigma_min).clamp(min=0)
        return above * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()


class EpsScheme(Scheme):
    """The columns of Table 1 whose network predicts the noise (VP, iDDPM):
    D = x - sigma F(x / sqrt(sigma^2 + 1)), trained with lambda = 1 / sigma^2 (a plain MSE on eps)."""

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return -sigma

    def c_in(self, sigma):
        return (sigma**2 + 1).rsqrt()

    def loss_weight(self, sigma):
        return sigma**-2


@schemes.register("vp")
class VPScheme(EpsScheme):
    """Variance preserving (Song et al. 2021), continuous time t in [epsilon_t, 1]."""

    sigma_data = 1.0  # implied by c_in = 1 / sqrt(sigma^2 + 1)

    def __init__(self, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5):
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_min = float(self.sigma(torch.tensor(self.epsilon_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        return torch.special.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """t(sigma), the inverse of :meth:`sigma`."""
        root = (self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt()
        return (root - self.beta_min) / self.beta_d

    def c_noise(self, sigma):
        return (self.M - 1) * self.sigma_inv(sigma)

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        t = 1 + _uniform(shape, generator, device, dtype) * (self.epsilon_t - 1)  # t ~ U(epsilon_t, 1)
        return self.sigma(t)


@schemes.register("ve")
class VEScheme(Scheme):
    """Variance exploding (Song et al. 2021): sigma log-uniform in [sigma_min, sigma_max]."""

    def __init__(self, sigma_min=0.02, sigma_max=100.0, sigma_data=0.5):
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)  # informational only: VE's coefficients do not use it

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return sigma

    def c_in(self, sigma):
        return torch.ones_like(sigma)

    def c_noise(self, sigma):
        return (0.5 * sigma).log()

    def loss_weight(self, sigma):
        return sigma**-2

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        u = _uniform(shape, generator, device, dtype)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u


@schemes.register("iddpm")
class IDDPMScheme(EpsScheme):
    """Improved DDPM (Nichol & Dhariwal 2021): discrete cosine schedule of M noise levels.

    ``u`` is the table ``u_0 > ... > u_M = 0`` of EDM Appendix C.3.4, built with the recursion of
    NVlabs' ``iDDPMPrecond`` carried out in ``u_dtype``: float64 by default (the recursion loses
    up to 1e-3 relative accuracy near ``u_{M-1}`` in float32), ``torch.float32`` reproduces NVlabs'
    table bit for bit.  ``u[0]`` is sigma_max and ``u[M-1]`` sigma_min.
    """

    sigma_data = 1.0  # implied by c_in = 1 / sqrt(sigma^2 + 1)

    def __init__(self, C_1=0.001, C_2=0.008, M=1000, u_dtype=torch.float64):
        self.C_1 = float(C_1)
        self.C_2 = float(C_2)
        self.M = int(M)
        self.u_dtype = u_dtype
        self._u = Table(self._build_u(self.C_1, self.C_2, self.M, u_dtype))
        self.sigma_min = float(self.u[self.M - 1])
        self.sigma_max = float(self.u[0])
        self.sigmas = self.u[: self.M].flip(0)

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _build_u(C_1: float, C_2: float, M: int, dtype: torch.dtype) -> Tensor:
        def alpha_bar(j: int) -> Tensor:
            return (0.5 * math.pi * torch.tensor(j, dtype=dtype) / M / (C_2 + 1)).sin() ** 2

        u = torch.zeros(M + 1, dtype=dtype)
        for j in range(M, 0, -1):
            u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        return u

    @property
    def u(self) -> Tensor:
        return self._u.values

    def sigma_index(self, sigma) -> Tensor:
        """Index j of the table entry u_j nearest to sigma (u_M = 0 included)."""
        sigma = torch.as_tensor(sigma)
        u = self._u.on(sigma.device)
        return (sigma.to(u.dtype).reshape(-1, 1) - u).abs().argmin(dim=1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        u = self._u.on(sigma.device)
        dtype = sigma.dtype if sigma.is_floating_point() else u.dtype
        return u[self.sigma_index(sigma)].to(dtype)

    def c_noise(self, sigma):
        return (self.M - 1 - self.sigma_index(sigma)).to(sigma.dtype)

    def sample_sigma(self, shape, generator=None, device=None, dtype=None):
        j = torch.randint(0, self.M, shape, generator=generator, device=device)
        u = self._u.on(j.device)
        return u[j].to(dtype or torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------
# The preconditioned denoiser


def _module_device(module) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return torch.device("cpu")


class Precond(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` for a backbone ``F`` and a scheme.

    Args:
        backbone: any callable ``F(x_in, c_noise, **cond)`` with ``c_noise`` of shape ``[B]``.
        scheme: a registered scheme name (see ``schemes.list()``) or a :class:`Scheme` instance.
        backbone_dtype: dtype of the backbone call (e.g. ``torch.float16``); the skip connection
            and the coefficients stay in the dtype of ``x``.
        validate_sigma: raise ValueError on negative or NaN sigma (one small check per call).
        **scheme_params: parameters of the scheme (e.g. ``sigma_data=0.5``).

    ``forward(x, sigma, **cond)`` accepts sigma as a Python number, a 0-dim tensor, a ``[B]``
    tensor or a ``[B, 1, ..., 1]`` tensor, and returns a tensor of the shape and dtype of ``x``.
    Where sigma is inf, that sample of ``x`` is the unit noise ``u = lim x / sigma`` and the scheme's
    limits apply (:meth:`Scheme.at_infinity`; ValueError for schemes without one).
    """

    def __init__(self, backbone, scheme="edm", *, backbone_dtype=None, validate_sigma=True, **scheme_params):
        super().__init__()
        self.backbone = backbone
        self.scheme = schemes.get(scheme, **scheme_params)
        self.backbone_dtype = backbone_dtype
        self.validate_sigma = validate_sigma
        self._pins: tuple[Tensor, Tensor] | None = None

    # Protocol attributes ------------------------------------------------------------------

    def _scheme_attribute(self, name):
        value = getattr(self.scheme, name, None)
        if value is None:
            raise AttributeError(f"scheme {self.scheme.name!r} defines no {name}")
        return value

    @property
    def sigma_min(self) -> float:
        return self._scheme_attribute("sigma_min")

    @property
    def sigma_max(self) -> float:
        return self._scheme_attribute("sigma_max")

    @property
    def sigma_data(self) -> float:
        return self._scheme_attribute("sigma_data")

    @property
    def sigmas(self) -> Tensor:
        """Ascending table of the discrete noise levels, on the backbone's device."""
        table = self._scheme_attribute("sigmas")
        device = _module_device(self.backbone)
        return table.to(device=device, dtype=table_dtype(device))

    def round_sigma(self, sigma) -> Tensor:
        return self.scheme.round_sigma(sigma)

    # Evaluation ---------------------------------------------------------------------------

    def sigma_vector(self, x: Tensor, sigma) -> Tensor:
        """sigma as a ``[B]`` tensor in the dtype and on the device of ``x``."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        batch = x.shape[0]
        if sigma.shape[0] == 1 and batch != 1:
            sigma = sigma.expand(batch)
        elif sigma.shape[0] != batch:
            raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {batch}")
        if self.validate_sigma and not bool((sigma >= 0).all()):
            raise ValueError(f"sigma must be non-negative and not NaN, got {sigma.tolist()}")
        return sigma

    def pin_times(self, sigmas, c_noise) -> Precond:
        """Call the backbone with ``c_noise[i]`` wherever sigma equals ``sigmas[i]`` (compared in sigma's
        dtype), and with the scheme's ``c_noise(sigma)`` elsewhere; ``pin_times(None, None)`` unpins.

        A diffusers scheduler decides its model's timesteps itself (integers, or ``floor(1000 t)`` for
        DPM-Solver on flow sigmas), not always as the time map's exact inverse of its sigmas: pinning
        them reproduces its calls exactly. Changes this denoiser in place; returns it.
        """
        if sigmas is None:
            self._pins = None
            return self
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
        c_noise = torch.as_tensor(c_noise, dtype=torch.float64).reshape(-1).cpu()
        if sigmas.shape != c_noise.shape:
            raise ValueError(f"pin_times needs one c_noise per sigma, got {sigmas.shape[0]} and "
                             f"{c_noise.shape[0]}")
        self._pins = (sigmas, c_noise)
        return self

    def _pinned(self, sigma: Tensor, c_noise: Tensor) -> Tensor:
        pinned_sigmas, pinned = self._pins
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        table = pinned_sigmas.to(sigma.device, dtype)
        hit = sigma.reshape(-1, 1) == table.reshape(1, -1)  # [B, pins]
        if not bool(hit.any()):
            return c_noise
        index = hit.to(torch.int64).argmax(dim=1)
        values = pinned.to(sigma.device, c_noise.dtype if c_noise.is_floating_point() else dtype)[index]
        out = torch.where(hit.any(dim=1), values, c_noise.reshape(-1).to(values.dtype))
        return out.reshape(c_noise.shape)

    def coefficients(self, sigma: Tensor, ndim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for a ``[B]`` sigma, the first three as ``[B,1,...]``
        columns for an ``ndim``-dim x.  Where sigma is inf they are the scheme's limits acting on
        ``u = x / sigma`` (:meth:`Scheme.at_infinity`), which is what x holds there."""
        scheme = self.scheme
        column = sigma.reshape(-1, *([1] * (ndim - 1)))
        if not bool(sigma.isinf().any()):
            return scheme.c_skip(column), scheme.c_out(column), scheme.c_in(column), scheme.c_noise(sigma)
        k_skip, c_out_inf, k_in, c_noise_inf = scheme.at_infinity()
        inf, inf_column = sigma.isinf(), column.isinf()
        finite, finite_column = sigma.masked_fill(inf, 1), column.masked_fill(inf_column, 1)
        c_noise = scheme.c_noise(finite)
        return (
            scheme.c_skip(finite_column).masked_fill(inf_column, k_skip),
            scheme.c_out(finite_column).masked_fill(inf_column, c_out_inf),
            scheme.c_in(finite_column).masked_fill(inf_column, k_in),
            c_noise.masked_fill(inf, c_noise_inf),
        )

    def backbone_output(self, x: Tensor, sigma, **cond) -> tuple[Tensor, Tensor, Tensor]:
        """``(F, c_skip, c_out)`` at ``(x, sigma)``; ``F`` in x's dtype, coefficients as ``[B,1,...]``."""
        sigma = self.sigma_vector(x, sigma)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, x.ndim)
        if self._pins is not None:
            c_noise = self._pinned(sigma, c_noise)
        x_in = c_in * x
        if self.backbone_dtype is not None:
            x_in = x_in.to(self.backbone_dtype)
        F = self.backbone(x_in, c_noise, **cond)
        return F.to(x.dtype), c_skip, c_out

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        F, c_skip, c_out = self.backbone_output(x, sigma, **cond)
        return c_skip * x + c_out * F

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, backbone_dtype={self.backbone_dtype}"

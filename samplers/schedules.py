"""Sigma schedules: where a sampler evaluates the denoiser, from sigma_max down to 0.

Every schedule is ``fn(n, sigma_min, sigma_max, **options, device='cpu', dtype=torch.float64)`` and
returns a 1-D tensor of ``n + 1`` noise levels: ``n`` positive, strictly decreasing sigmas followed by
exactly one 0 (``n`` steps, as k-diffusion's ``get_sigmas_*`` and NVlabs edm's ``t_steps``). Values are
computed in float64 on the CPU, then cast and moved.

Two kinds:

* continuous schedules (``karras``, ``exponential``, ``polyexponential``, ``vp``, ``ve``, ``iddpm``,
  ``linear``) need only the range ``[sigma_min, sigma_max]``;
* table schedules (``simple``, ``normal``, ``ddim_uniform``, ``sgm_uniform``, the ComfyUI families) pick
  levels from a discrete-time model's ascending sigma table, passed as ``sigmas=`` (k-diffusion's
  ``model.sigmas``). A given ``sigma_min``/``sigma_max`` restricts them to that part of the table
  (clamped to the table's ends, as NVlabs clamps to ``net.sigma_min/max``); ``None`` means the table's
  end. Timestep <-> sigma conversions interpolate linearly in log sigma over the table. When ``n``
  exceeds the number of table entries in range, ``simple`` and ``ddim_uniform`` (like ``iddpm``, whose
  table is fixed) return fewer than ``n`` steps rather than repeat a level.

``validate_sigmas`` checks any schedule before a sampler uses it.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from .registry import Registry

# ---------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """What is known about a schedule without running it (for registries and CLI tables).

    ``fn`` is the public callable; ``options`` are its keyword options with their defaults (not
    ``device``/``dtype``, nor the required ``sigmas`` table); ``needs_table`` says the schedule needs the
    model's discrete sigma table as ``sigmas=``; ``range_optional`` says ``sigma_min``/``sigma_max`` may
    be None.
    """

    name: str
    fn: Callable[..., torch.Tensor] = field(repr=False)
    options: Mapping[str, Any]
    description: str
    reference: str
    needs_table: bool = False
    range_optional: bool = False

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Alias of ``options``: the option defaults."""
        return self.options


_REGISTRY = Registry("schedule")


def register(name: str, *, reference: str, needs_table: bool = False, range_optional: bool = False,
             description: str = ""):
    """Decorator adding a schedule to the registry under ``name``.

    The decorated function ``inner(n, sigma_min, sigma_max, *, **options)`` receives a checked step
    count and range (floats, or None where ``range_optional``) and returns the ``n`` (or, for table
    schedules, at most ``n``) nonzero sigmas as a float64 CPU tensor. The registered callable appends
    the final 0, casts to ``dtype``, checks the result with ``validate_sigmas`` and moves it to
    ``device``. The description defaults to the first line of the docstring; ValueError without a
    one-line description or a reference.
    """
    range_optional = range_optional or needs_table
    if not (isinstance(reference, str) and reference.strip()):
        raise ValueError(f"schedule {name!r}: give its reference (where it comes from)")

    def decorate(inner: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        doc_line = (inner.__doc__ or "").strip().splitlines()
        summary = description or (doc_line[0] if doc_line else "")
        if not summary.strip() or "\n" in summary:
            raise ValueError(f"schedule {name!r}: needs a one-line description (description= or the "
                             "docstring's first line)")
        params = inspect.signature(inner).parameters
        keywords = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        options = {k: params[k].default for k in keywords if k != "sigmas"}

        @functools.wraps(inner)
        def schedule(n, sigma_min=None, sigma_max=None, *, device="cpu", dtype=torch.float64, **opts):
            n = _check_steps(name, n)
            unknown = sorted(set(opts) - set(keywords))
            if unknown:
                raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                                 f"valid options: {', '.join(keywords) or 'none'}")
            sigma_min, sigma_max = _check_range(name, sigma_min, sigma_max, optional=range_optional)
            if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
                raise ValueError(f"{name}: dtype must be a floating-point torch.dtype, got {dtype!r}")
            sigmas = inner(n, sigma_min, sigma_max, **opts).to(torch.float64)
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)
            try:
                validate_sigmas(sigmas)
            except ValueError as e:
                raise ValueError(f"{name}: these arguments give an invalid schedule ({e})") from None
            return sigmas.to(device)

        sig = inspect.signature(inner)
        schedule.__signature__ = sig.replace(parameters=[
            *sig.parameters.values(),
            inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default="cpu"),
            inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=torch.float64),
        ])
        _REGISTRY.add(name, ScheduleSpec(
            name=name, fn=schedule, options=MappingProxyType(options), description=summary,
            reference=reference, needs_table=needs_table, range_optional=range_optional,
        ))
        return schedule

    return decorate


def list() -> builtins.list[str]:  # noqa: A001 - public name fixed by the API
    """Names of all registered schedules, sorted."""
    return _REGISTRY.names()


def spec(name: str) -> ScheduleSpec:
    """The registry record of schedule ``name``; ValueError naming the valid ones otherwise."""
    return _REGISTRY[name]


def get(name: str) -> Callable[..., torch.Tensor]:
    """The callable of schedule ``name``; ValueError naming the valid ones otherwise."""
    return spec(name).fn


# ---------------------------------------------------------------------------------------------------
# Checks


def validate_sigmas(sigmas) -> torch.Tensor:
    """Check a sampler's noise levels; return them as a tensor (a tensor is returned as is).

    Raises ValueError unless ``sigmas`` is a 1-D floating-point tensor (or a sequence of numbers) of
    length >= 2, all finite, strictly decreasing, and positive except that the last may be 0.
    """
    if not isinstance(sigmas, torch.Tensor):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"sigmas must be a 1-D tensor or sequence of numbers ({e})") from None
    if not sigmas.is_floating_point():
        raise ValueError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if len(sigmas) < 2:
        raise ValueError(f"sigmas needs at least 2 values (one step), got {len(sigmas)}")
    bad = ~torch.isfinite(sigmas)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"sigmas must be finite; sigmas[{i}] = {sigmas[i].item()}")
    if sigmas[-1] < 0:
        raise ValueError(f"sigmas must be >= 0 at the end; sigmas[-1] = {sigmas[-1].item()}")
    bad = sigmas[:-1] <= 0
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"sigmas must be positive except the last; sigmas[{i}] = {sigmas[i].item()}")
    bad = sigmas[1:] >= sigmas[:-1]
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"sigmas must be strictly decreasing; sigmas[{i}] = {sigmas[i].item()} "
                         f"<= sigmas[{i + 1}] = {sigmas[i + 1].item()}")
    return sigmas


def _check_steps(name: str, n) -> int:
    if isinstance(n, bool) or isinstance(n, float):
        raise ValueError(f"{name}: n (number of steps) must be an integer >= 1, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"{name}: n (number of steps) must be an integer >= 1, got {n!r}") from None
    if n < 1:
        raise ValueError(f"{name}: n (number of steps) must be >= 1, got {n}")
    return n


def _as_float(name: str, what: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: {what} must be finite, got {value}")
    return value


def _positive(name: str, what: str, value) -> float:
    value = _as_float(name, what, value)
    if value <= 0:
        raise ValueError(f"{name}: {what} must be > 0, got {value:g}")
    return value


def _check_range(name: str, sigma_min, sigma_max, *, optional: bool):
    """Floats (or None where optional) with 0 < sigma_min < sigma_max."""
    if not optional and (sigma_min is None or sigma_max is None):
        raise ValueError(f"{name}: needs sigma_min and sigma_max, got {sigma_min!r} and {sigma_max!r}")
    # Every schedule ends in an appended 0 and most take log sigma, so sigma_min must be positive.
    sigma_min = None if sigma_min is None else _positive(name, "sigma_min", sigma_min)
    sigma_max = None if sigma_max is None else _positive(name, "sigma_max", sigma_max)
    if sigma_min is not None and sigma_max is not None and sigma_min >= sigma_max:
        raise ValueError(f"{name}: needs sigma_min < sigma_max, got sigma_min={sigma_min:g}, "
                         f"sigma_max={sigma_max:g}")
    return sigma_min, sigma_max


def _ramp(n: int) -> torch.Tensor:
    """i / (n - 1) for i = 0..n-1 (just [0] when n = 1, so one step starts at sigma_max)."""
    return torch.linspace(0, 1, n, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Continuous schedules


@register("karras", reference="Karras et al. 2022 (EDM), eq. 5; k-diffusion get_sigmas_karras")
def karras(n, sigma_min, sigma_max, *, rho=7.0):
    """Karras/EDM: uniform in sigma^(1/rho), so steps shrink toward sigma_min."""
    rho = _positive("karras", "rho", rho)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ramp = _ramp(n)
    # The same interpolation as max + ramp (min - max), written as a weighted mean so the last level is
    # sigma_min even when sigma^(1/rho) spans more than float64 can difference (rho < 1, wide ranges).
    return ((1 - ramp) * max_inv_rho + ramp * min_inv_rho) ** rho


@register("exponential", reference="k-diffusion get_sigmas_exponential")
def exponential(n, sigma_min, sigma_max):
    """Uniform in log sigma (geometric spacing)."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


@register("polyexponential", reference="k-diffusion get_sigmas_polyexponential")
def polyexponential(n, sigma_min, sigma_max, *, rho=1.0):
    """log sigma = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min)."""
    rho = _positive("polyexponential", "rho", rho)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return (log_min + ramp * (log_max - log_min)).exp()


def _vp_sigma(t, beta_d: float, beta_min: float):
    """Song et al.'s VP SDE noise level: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return torch.expm1(0.5 * beta_d * t ** 2 + beta_min * t).sqrt()


@register("vp", range_optional=True,
          reference="Song et al. 2021 VP SDE; EDM Table 1 / NVlabs generate.py 'vp'; "
                    "k-diffusion get_sigmas_vp")
def vp(n, sigma_min, sigma_max, *, eps_s=1e-3, beta_d=None, beta_min=None):
    """VP SDE: t uniform in [eps_s, 1], sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1).

    With ``beta_d``/``beta_min`` given (k-diffusion's get_sigmas_vp; a missing one defaults to 19.9 or
    0.1), sigma_min/sigma_max must be None. Otherwise (NVlabs) the betas are those for which
    sigma(eps_s) = sigma_min and sigma(1) = sigma_max; a missing bound defaults to its value under
    beta_d = 19.9, beta_min = 0.1.
    """
    eps_s = _positive("vp", "eps_s", eps_s)
    if eps_s >= 1:
        raise ValueError(f"vp: eps_s must be in (0, 1), got {eps_s}")
    if beta_d is not None or beta_min is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("vp: give either sigma_min/sigma_max or beta_d/beta_min, not both")
        beta_d = 19.9 if beta_d is None else _as_float("vp", "beta_d", beta_d)
        beta_min = 0.1 if beta_min is None else _as_float("vp", "beta_min", beta_min)
    else:
        if sigma_min is None:
            sigma_min = _vp_sigma(torch.tensor(eps_s, dtype=torch.float64), 19.9, 0.1).item()
        if sigma_max is None:
            sigma_max = _vp_sigma(torch.tensor(1.0, dtype=torch.float64), 19.9, 0.1).item()
        if sigma_min >= sigma_max:
            raise ValueError(f"vp: needs sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        log_min, log_max = math.log1p(sigma_min ** 2), math.log1p(sigma_max ** 2)
        beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
        beta_min = log_max - 0.5 * beta_d
    # sigma(t) increases on [eps_s, 1] iff beta_min + beta_d t > 0 there (linear in t: check the ends),
    # and sigma(eps_s) > 0 needs a positive exponent.
    slope_ok = min(beta_min + beta_d * eps_s, beta_min + beta_d) > 0
    if not slope_ok or 0.5 * beta_d * eps_s ** 2 + beta_min * eps_s <= 0:
        raise ValueError(f"vp: beta_d={beta_d:.6g}, beta_min={beta_min:.6g} (eps_s={eps_s}) do not give "
                         "a noise level increasing from a positive value on [eps_s, 1]")
    t = torch.linspace(1, eps_s, n, dtype=torch.float64)
    return _vp_sigma(t, beta_d, beta_min)


@register("ve", reference="Song et al. 2021 VE SDE; EDM Table 1 / NVlabs generate.py 've'")
def ve(n, sigma_min, sigma_max):
    """VE SDE (NVlabs): t_i = sigma_max^2 (sigma_min^2/sigma_max^2)^(i/(n-1)), sigma = sqrt(t)."""
    t = sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** _ramp(n)
    return t.sqrt()


@functools.lru_cache(maxsize=8)
def _iddpm_u(M: int, C_1: float, C_2: float) -> tuple[float, ...]:
    """iDDPM's noise levels u_0 > ... > u_M = 0 (EDM Table 1): the cosine schedule's alpha_bar,
    u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1)."""

    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return tuple(u)


@register("iddpm", reference="Nichol & Dhariwal 2021; EDM Table 1 / NVlabs generate.py 'iddpm'")
def iddpm(n, sigma_min, sigma_max, *, C_1=0.001, C_2=0.008, M=1000):
    """iDDPM's M-level cosine table restricted to [sigma_min, sigma_max], n levels by rounded index."""
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"iddpm: M must be an integer >= 1, got {M!r}")
    C_1 = _positive("iddpm", "C_1", C_1)
    C_2 = _as_float("iddpm", "C_2", C_2)
    if C_2 < 0:
        raise ValueError(f"iddpm: C_2 must be >= 0, got {C_2}")
    u = [s for s in _iddpm_u(M, C_1, C_2) if sigma_min <= s <= sigma_max]  # descending
    if not u:
        raise ValueError(f"iddpm: no level of the iDDPM table (M={M}) lies in [{sigma_min}, {sigma_max}]")
    stride = (len(u) - 1) / (n - 1) if n > 1 else 0.0
    # round() is round-half-even like torch.round in NVlabs. When n > len(u) indices repeat: keep each
    # level once, so the schedule has fewer than n steps rather than zero-length ones.
    idx = sorted({round(stride * i) for i in range(n)})
    return torch.tensor([u[i] for i in idx], dtype=torch.float64)


@register("linear", reference="uniform in sigma")
def linear(n, sigma_min, sigma_max):
    """Uniform in sigma."""
    return torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Schedules over a discrete-time model's sigma table (ComfyUI's families)


def _table(name: str, sigmas) -> torch.Tensor:
    """The model's sigma table as a float64 CPU tensor, checked: 1-D, >= 2, positive, ascending."""
    if sigmas is None:
        raise ValueError(f"{name}: this schedule needs the model's discrete sigma table: pass sigmas= "
                         "(ascending, like k-diffusion's model.sigmas)")
    try:
        table = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: sigmas= must be a 1-D tensor or sequence of numbers ({e})") from None
    if table.ndim != 1 or len(table) < 2:
        raise ValueError(f"{name}: sigmas= must be 1-D with at least 2 entries, "
                         f"got shape {tuple(table.shape)}")
    if not (torch.isfinite(table).all() and (table > 0).all()):
        raise ValueError(f"{name}: sigmas= (the model's table) must be finite and positive")
    if not (table[1:] > table[:-1]).all():
        raise ValueError(f"{name}: sigmas= (the model's table) must be strictly ascending, "
                         "as model.sigmas is")
    return table


def _table_range(name: str, table: torch.Tensor, sigma_min, sigma_max) -> tuple[float, float]:
    """[sigma_min, sigma_max] clamped to the table's ends (None means the end itself)."""
    lo = table[0].item() if sigma_min is None else max(sigma_min, table[0].item())
    hi = table[-1].item() if sigma_max is None else min(sigma_max, table[-1].item())
    if lo >= hi:
        raise ValueError(f"{name}: range [{sigma_min}, {sigma_max}] does not overlap the model's table "
                         f"[{table[0].item():.6g}, {table[-1].item():.6g}]")
    return lo, hi


def _sigma_to_t(sigma: float, log_table: torch.Tensor) -> float:
    """Fractional table index t with log sigma = linear interpolation of log_table at t."""
    log_sigma = math.log(sigma)
    hi = min(max(int(torch.searchsorted(log_table, log_sigma)), 1), len(log_table) - 1)
    lo = hi - 1
    w = (log_sigma - log_table[lo].item()) / (log_table[hi].item() - log_table[lo].item())
    return min(max(lo + w, 0.0), len(log_table) - 1.0)


def _t_to_sigma(t: torch.Tensor, log_table: torch.Tensor) -> torch.Tensor:
    """exp of log_table linearly interpolated at fractional indices t (ComfyUI's ModelSampling.sigma)."""
    t = t.clamp(0, len(log_table) - 1)
    lo, hi = t.floor().long(), t.ceil().long()
    w = t - lo
    return ((1 - w) * log_table[lo] + w * log_table[hi]).exp()


def _table_indices(table: torch.Tensor, lo_sigma: float, hi_sigma: float) -> tuple[int, int]:
    """First and last index of the table entries in [lo_sigma, hi_sigma]."""
    first = int(torch.searchsorted(table, lo_sigma, side="left"))
    last = int(torch.searchsorted(table, hi_sigma, side="right")) - 1
    return first, last


@register("simple", needs_table=True, reference="ComfyUI comfy/samplers.py simple_scheduler")
def simple(n, sigma_min, sigma_max, *, sigmas=None):
    """Table entries at evenly spaced (floored) positions counted down from the top."""
    table = _table("simple", sigmas)
    first, last = _table_indices(table, *_table_range("simple", table, sigma_min, sigma_max))
    sub = table[first:last + 1]
    if len(sub) == 0:
        raise ValueError(f"simple: no entry of the model's table lies in [{sigma_min}, {sigma_max}]")
    stride = len(sub) / n
    # When n > len(sub), int(i * stride) repeats: keep each table entry once (fewer than n steps).
    idx = sorted({len(sub) - 1 - int(i * stride) for i in range(n)}, reverse=True)
    return sub[idx]


@register("ddim_uniform", needs_table=True,
          reference="Song et al. 2021 (DDIM) uniform skip; ComfyUI comfy/samplers.py ddim_scheduler")
def ddim_uniform(n, sigma_min, sigma_max, *, sigmas=None):
    """DDIM 'uniform' skip: table indices 1, 1 + c, 1 + 2c, ... with stride c = len // n, top n kept."""
    table = _table("ddim_uniform", sigmas)
    first, last = _table_indices(table, *_table_range("ddim_uniform", table, sigma_min, sigma_max))
    if last - first < 1:
        raise ValueError(f"ddim_uniform: needs at least 2 entries of the model's table in "
                         f"[{sigma_min}, {sigma_max}]")
    stride = max((last - first + 1) // n, 1)
    # Starting one above the bottom is DDIM/LDM's "+1" timestep offset, as ComfyUI does. The stride
    # c = len // n can fit more than n indices (ComfyUI then returns extra steps); we keep the top n so
    # the schedule still starts near the table's top. With n > len - 1 fewer than n indices exist: the
    # schedule then has fewer steps (there is no repeated entry to drop; each index appears once).
    idx = builtins.list(range(first + 1, last + 1, stride))[-n:]
    return table[idx].flip(0)


def _normal_timesteps(name: str, n: int, sigma_min, sigma_max, sigmas, *, sgm: bool):
    table = _table(name, sigmas)
    lo_sigma, hi_sigma = _table_range(name, table, sigma_min, sigma_max)
    log_table = table.log()
    t_max, t_min = _sigma_to_t(hi_sigma, log_table), _sigma_to_t(lo_sigma, log_table)
    # Timesteps uniform between the ends; log-interpolation of a strictly ascending table keeps them
    # distinct, so nothing needs deduplicating.
    if sgm:
        t = torch.linspace(t_max, t_min, n + 1, dtype=torch.float64)[:-1]
    else:
        t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return _t_to_sigma(t, log_table)


@register("normal", needs_table=True, reference="ComfyUI comfy/samplers.py normal_scheduler")
def normal(n, sigma_min, sigma_max, *, sigmas=None):
    """Timesteps uniform from t(sigma_max) to t(sigma_min) inclusive, mapped through the table."""
    return _normal_timesteps("normal", n, sigma_min, sigma_max, sigmas, sgm=False)


@register("sgm_uniform", needs_table=True,
          reference="ComfyUI comfy/samplers.py normal_scheduler(sgm=True); Stability generative-models")
def sgm_uniform(n, sigma_min, sigma_max, *, sigmas=None):
    """Like normal, with n + 1 uniform timesteps of which the last (t(sigma_min)) is dropped."""
    return _normal_timesteps("sgm_uniform", n, sigma_min, sigma_max, sigmas, sgm=True)


# ---------------------------------------------------------------------------------------------------
# Newer schedules: Align Your Steps, beta, KL-optimal, linear-quadratic

# Align Your Steps' optimized 10-step noise levels (11 levels, sigma_max down to the model's sigma_min),
# data from Sabour, Fidler & Kreis 2024, "Align Your Steps" (arXiv:2404.14507), as published on the
# NVlabs project page (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html) and in ComfyUI.
AYS_NOISE_LEVELS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
})


def loglinear_resample(levels: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` levels at uniform positions in [0, 1] of the piecewise-linear log-sigma curve through
    ``levels`` (descending), which sit at uniform positions themselves; ends are kept exactly."""
    log_levels = levels.log()
    pos = torch.linspace(0, len(levels) - 1, count, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(levels) - 2)
    w = pos - lo
    out = ((1 - w) * log_levels[lo] + w * log_levels[lo + 1]).exp()
    out[0], out[-1] = levels[0], levels[-1]
    return out


@register("ays", range_optional=True,
          reference="Sabour, Fidler & Kreis 2024, Align Your Steps (arXiv:2404.14507), published 10-step "
                    "tables; NVlabs howto loglinear_interp; ComfyUI comfy_extras/nodes_align_your_steps.py")
def ays(n, sigma_min, sigma_max, *, model="sd15"):
    """Align Your Steps: the paper's 10-step levels for model sd15/sdxl/svd, log-linearly resampled.

    The table's 11 levels are the 10-step schedule's step boundaries, from sigma_max down to the model's
    sigma_min. For n steps they are resampled to n + 1 levels (log sigma linearly interpolated at
    uniform positions; n = 10 gives the table itself), and, as in ComfyUI, the last (sigma_min) is
    replaced by the final 0: the n nonzero sigmas are the first n levels. A given sigma_max and/or
    sigma_min *rescales* the table affinely in log sigma so its ends become them (a missing one keeps the
    table's end); the shape of the schedule in log sigma is kept, nothing is clipped.
    """
    if not isinstance(model, str) or model not in AYS_NOISE_LEVELS:
        raise ValueError(f"ays: model must be one of {', '.join(AYS_NOISE_LEVELS)}, got {model!r}")
    levels = torch.tensor(AYS_NOISE_LEVELS[model], dtype=torch.float64)
    top = levels[0].item() if sigma_max is None else sigma_max
    bottom = levels[-1].item() if sigma_min is None else sigma_min
    if bottom >= top:
        raise ValueError(f"ays: needs sigma_min < sigma_max, got sigma_min={bottom} and sigma_max={top} "
                         f"(the '{model}' table spans [{levels[-1].item()}, {levels[0].item()}])")
    if sigma_min is not None or sigma_max is not None:
        log_lo, log_hi = levels[-1].log().item(), levels[0].log().item()
        frac = (levels.log() - log_lo) / (log_hi - log_lo)  # 1 at the top, 0 at the bottom
        levels = (frac * math.log(top) + (1 - frac) * math.log(bottom)).exp()
        levels[0], levels[-1] = top, bottom
    if n + 1 != len(levels):
        levels = loglinear_resample(levels, n + 1)
    return levels[:-1]


@register("beta", range_optional=True,
          reference="Lee et al. 2024, Beta Sampling is All You Need (arXiv:2407.12173); "
                    "ComfyUI comfy/samplers.py beta_scheduler")
def beta(n, sigma_min, sigma_max, *, alpha=0.6, beta=0.6, sigmas=None):
    """Timesteps at Beta(alpha, beta) quantiles q_i = ppf(1 - i/n), i = 0..n-1, mapped to sigma.

    Without a table (continuous models; sigma_min and sigma_max needed) a quantile q in [0, 1] is the
    fraction of the way up in log sigma: log sigma = q log sigma_max + (1 - q) log sigma_min, so q = 1
    is sigma_max. With ``sigmas=`` (a discrete model's ascending table, range optional and clamped as for
    the other table schedules), q picks the entry at index first + rint(q (last - first)) of the entries
    in range, as ComfyUI does; a repeated index is kept once, so there may be fewer than n steps.
    The smallest quantile is ppf(1/n) > 0: like ComfyUI, the schedule stops above sigma_min.
    """
    alpha = _positive("beta", "alpha", alpha)
    beta_ = _positive("beta", "beta", beta)
    try:
        from scipy.stats import beta as beta_dist
    except ImportError:  # pragma: no cover - scipy is an optional dependency
        raise ValueError("beta: this schedule needs scipy (scipy.stats.beta.ppf); "
                         "pip install scipy") from None
    u = 1 - torch.arange(n, dtype=torch.float64) / n  # 1, (n-1)/n, ..., 1/n
    q = torch.as_tensor(beta_dist.ppf(u.numpy(), alpha, beta_), dtype=torch.float64)
    if sigmas is None:
        if sigma_min is None or sigma_max is None:
            raise ValueError(f"beta: needs sigma_min and sigma_max (or a model table as sigmas=), "
                             f"got {sigma_min!r} and {sigma_max!r}")
        return (q * math.log(sigma_max) + (1 - q) * math.log(sigma_min)).exp()
    table = _table("beta", sigmas)
    first, last = _table_indices(table, *_table_range("beta", table, sigma_min, sigma_max))
    if last < first:
        raise ValueError(f"beta: no entry of the model's table lies in [{sigma_min}, {sigma_max}]")
    idx = first + torch.round(q * (last - first)).long()  # round half to even, as numpy.rint
    return table[torch.unique_consecutive(idx)]


@register("kl_optimal",
          reference="Sabour, Fidler & Kreis 2024, Align Your Steps (arXiv:2404.14507), appendix; "
                    "ComfyUI comfy/samplers.py kl_optimal_scheduler")
def kl_optimal(n, sigma_min, sigma_max):
    """KL-optimal: sigma_i = tan(t_i atan(sigma_min) + (1 - t_i) atan(sigma_max)), t_i = i/(n-1)."""
    ramp = _ramp(n)
    return (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan()


def _linear_quadratic_time(n: int, threshold_noise: float, linear_steps: int) -> torch.Tensor:
    """Normalized time u_0 = 0 < ... < u_n = 1: linear up to u_L = threshold_noise at i = L, then the
    quadratic in i through (L, threshold_noise) and (n, 1) whose slope at L continues the linear part."""
    i = torch.arange(n + 1, dtype=torch.float64)
    slope = threshold_noise / linear_steps
    q_steps = n - linear_steps
    curve = (1 - threshold_noise - slope * q_steps) / q_steps ** 2
    d = i - linear_steps
    return torch.where(i < linear_steps, slope * i, threshold_noise + slope * d + curve * d ** 2)


@register("linear_quadratic", range_optional=True,
          reference="ComfyUI comfy/samplers.py linear_quadratic_schedule (Genmo Mochi 1 / LTX-Video)")
def linear_quadratic(n, sigma_min, sigma_max, *, threshold_noise=0.025, linear_steps=None,
                     mapping="linear"):
    """Mochi's linear-then-quadratic schedule in a normalized time u, mapped to sigma.

    u rises linearly from 0 to ``threshold_noise`` over the first ``linear_steps`` steps (default n // 2),
    then quadratically to 1 at step n with a continuous slope. ``mapping='linear'`` (ComfyUI's):
    sigma = sigma_max (1 - u), u being the flow-matching time. ``mapping='flow'``: 1 - u is the
    rectified-flow time s scaled so s = s_max = sigma_max / (1 + sigma_max) at u = 0, and
    sigma = s / (1 - s), the EDM noise level of the flow state x_s / (1 - s). u = 1 is the final 0.
    n = 1 is [sigma_max]. sigma_max is needed; a given sigma_min is a floor the nonzero levels must
    respect (ValueError otherwise), as the schedule does not itself end at sigma_min.
    """
    name = "linear_quadratic"
    if sigma_max is None:
        raise ValueError(f"{name}: needs sigma_max (sigma_min is optional), got {sigma_max!r}")
    threshold_noise = _as_float(name, "threshold_noise", threshold_noise)
    if not 0 < threshold_noise < 1:
        raise ValueError(f"{name}: threshold_noise must be in (0, 1), got {threshold_noise}")
    if mapping not in ("linear", "flow"):
        raise ValueError(f"{name}: mapping must be 'linear' or 'flow', got {mapping!r}")
    if n == 1:
        u = torch.zeros(1, dtype=torch.float64)
    else:
        if linear_steps is None:
            linear_steps = n // 2
        if isinstance(linear_steps, bool) or not isinstance(linear_steps, int) or not 1 <= linear_steps < n:
            raise ValueError(f"{name}: linear_steps must be an integer in [1, n - 1] = [1, {n - 1}], "
                             f"got {linear_steps!r}")
        u = _linear_quadratic_time(n, threshold_noise, linear_steps)
        if not (u[1:] > u[:-1]).all():
            raise ValueError(f"{name}: threshold_noise={threshold_noise} with linear_steps={linear_steps} "
                             f"(n={n}) gives a time that does not increase to 1 (the quadratic turns back)")
        u = u[:-1]
    if mapping == "linear":
        out = sigma_max * (1 - u)
    else:
        s = sigma_max / (1 + sigma_max) * (1 - u)
        out = s / (1 - s)
    if sigma_min is not None and out[-1].item() < sigma_min:
        raise ValueError(f"{name}: the last nonzero level {out[-1].item():.6g} is below sigma_min="
                         f"{sigma_min}; use fewer steps or a smaller sigma_min")
    return out

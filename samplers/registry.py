"""The sampler registry: every sampler with the metadata a benchmark needs.

A sampler is a function ``fn(model, x, sigmas, *, noise, callback, **options) -> x`` where
``model(x, sigma)`` is the denoiser with ``sigma`` a Python float, ``sigmas`` a list of floats
(decreasing, ending in 0) and ``noise(sigma, sigma_next)`` a standard normal draw shaped like ``x``.
``samplers.sample`` builds those arguments from a user's denoiser, schedule and seeds.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NOISE_KINDS = (None, "iid", "brownian")
NfeCounter = Callable[[builtins.list[float], Mapping[str, Any]], int]  # (sigmas, options) -> exact NFE


@dataclass(frozen=True)
class SamplerSpec:
    """What is known about a sampler without running it.

    ``nfe_per_step`` denoiser calls per step, except the final step onto sigma = 0 which costs
    ``last_step_nfe`` (second-order samplers finish with one Euler/denoising call).
    ``noise`` is the kind of randomness it consumes: None, i.i.d. normals per draw, or increments of
    one Brownian path (samplers whose noise over overlapping intervals must be correlated).
    ``count_nfe(sigmas, options) -> int``, when given, is the exact count on a schedule (a list of
    floats) for samplers whose NFE depends on the schedule rather than on the number of steps alone.
    """

    name: str
    fn: Callable = field(repr=False)
    order: int
    nfe_per_step: int | None
    last_step_nfe: int | None
    stochastic: bool
    noise: str | None
    options: Mapping[str, Any]
    reference: str
    description: str
    count_nfe: NfeCounter | None = field(default=None, repr=False)

    @property
    def adaptive(self) -> bool:
        """Adaptive samplers choose their own steps, so their NFE is known only after running."""
        return self.nfe_per_step is None

    def nfe(self, steps: int) -> int:
        """Denoiser evaluations used by ``steps`` steps on a schedule that ends in 0."""
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive: its NFE is not known before it runs")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return (steps - 1) * self.nfe_per_step + self.last_step_nfe


class Registry:
    """Name -> record, shared by the sampler and schedule registries; lookups of unknown names raise
    a ValueError that lists the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._records: dict[str, Any] = {}

    def add(self, name: str, record) -> None:
        if name in self._records:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._records[name] = record

    def names(self) -> builtins.list[str]:
        return sorted(self._records)

    def __getitem__(self, name: str):
        try:
            return self._records[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: "
                             f"{', '.join(self.names())}") from None


_REGISTRY = Registry("sampler")


def register(name, *, order, nfe_per_step, last_step_nfe=None, stochastic=False, noise=None,
             options=None, reference="", description="", count_nfe=None):
    """Decorator adding a sampler function to the registry under ``name``.

    One function may be registered several times (e.g. ``ddpm`` is ``ddim`` with eta = 1); the
    spec's ``options`` are the defaults passed to it, and the only options a user may override.
    ``count_nfe``: see :class:`SamplerSpec` (with ``nfe_per_step=None``, for a schedule-dependent NFE).
    """
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")

    def decorate(fn):
        _REGISTRY.add(name, SamplerSpec(
            name=name, fn=fn, order=order, nfe_per_step=nfe_per_step,
            last_step_nfe=nfe_per_step if last_step_nfe is None else last_step_nfe,
            stochastic=stochastic, noise=noise, options=MappingProxyType(dict(options or {})),
            reference=reference, description=description or (fn.__doc__ or "").strip().splitlines()[0],
            count_nfe=count_nfe,
        ))
        return fn

    return decorate


def list() -> builtins.list[str]:  # noqa: A001 - public name fixed by the API
    """Names of all registered samplers, sorted."""
    return _REGISTRY.names()


def get(name: str) -> SamplerSpec:
    """The spec of sampler ``name``; ValueError naming the valid ones otherwise."""
    return _REGISTRY[name]


def steps_for_nfe(name: str, nfe: int) -> int:
    """The most steps of sampler ``name`` whose NFE does not exceed the budget ``nfe``."""
    spec = get(name)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"NFE budget must be a positive integer, got {nfe!r}")
    if spec.adaptive:
        raise ValueError(f"sampler {name!r} is adaptive: it cannot be given a fixed NFE budget")
    if spec.last_step_nfe > nfe:
        raise ValueError(f"sampler {name!r} needs at least {spec.last_step_nfe} NFE, budget is {nfe}")
    return 1 + (nfe - spec.last_step_nfe) // spec.nfe_per_step


def nfe_on(name: str, sigmas, **options) -> int | None:
    """Exact denoiser evaluations of sampler ``name`` over ``sigmas`` (decreasing, ending in 0 or not).

    ``options`` override the sampler's defaults. None only for truly adaptive samplers, whose NFE is
    known only after they run.
    """
    spec = get(name)
    sigmas = [float(s) for s in sigmas]
    if spec.count_nfe is not None:
        return spec.count_nfe(sigmas, {**spec.options, **options})
    if spec.adaptive:
        return None
    steps = len(sigmas) - 1
    if sigmas[-1] == 0:
        return spec.nfe(steps)
    return steps * spec.nfe_per_step  # no final step onto 0: every step is a full one

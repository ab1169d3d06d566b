"""The sampler registry: every sampler with the metadata a benchmark needs.

A sampler is a function ``fn(model, x, sigmas, *, noise=None, callback=None, **options) -> x`` where
``model(x, sigma)`` is the denoiser with ``sigma`` a Python float, ``sigmas`` a list of floats
(decreasing, ending in 0) and ``noise(sigma, sigma_next)`` a standard normal draw shaped like ``x``.
``samplers.sample`` builds those arguments from a user's denoiser (anything following
``samplers.protocol.Denoiser``), schedule and seeds.

A sampler's options are declared once, in its function's signature: every keyword-only parameter
other than ``noise`` and ``callback`` is an option and its default is the option's default (as the
schedule registry does). The function is named after the sampler, so tracebacks and profiles tell
samplers apart; entries sharing an algorithm are small named functions calling one implementation.
Each option has a one-line description: the common text in :data:`OPTION_HELP`, or the sampler's own.
"""

from __future__ import annotations

import builtins
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .segments import parts

NOISE_KINDS = (None, "iid", "brownian")
NON_OPTIONS = ("noise", "callback")  # keyword-only parameters of every sampler that are not options
NfeCounter = Callable[[builtins.list[float], Mapping[str, Any]], int]  # (sigmas, options) -> exact NFE

# One-line descriptions of the options several samplers share; ``register(option_help=...)`` overrides
# or adds a sampler's own.
OPTION_HELP: Mapping[str, str] = MappingProxyType({
    "eta": "Noise scale of ancestral/SDE steps: 0 is deterministic (the ODE), 1 the full reverse SDE.",
    "s_noise": "Scale of the fresh noise (EDM's S_noise; slightly above 1 offsets detail loss).",
    "s_churn": "EDM churn: noise added back per step (EDM's S_churn; 0 is deterministic).",
    "s_tmin": "Churn only at sigma >= this (EDM's S_tmin).",
    "s_tmax": "Churn only at sigma <= this (EDM's S_tmax).",
    "r": "Where the intermediate evaluation sits, as a fraction of the step in log sigma.",
    "order": "Order of the solver (how many evaluations each step combines).",
    "solver_type": "Second-order correction of the multistep: midpoint or heun.",
    "rtol": "Relative error tolerance of the adaptive step-size control.",
    "atol": "Absolute error tolerance of the adaptive step-size control.",
    "h_init": "Initial step size (in log sigma) of the adaptive solver.",
    "pcoeff": "Proportional coefficient of the PID step-size controller.",
    "icoeff": "Integral coefficient of the PID step-size controller.",
    "dcoeff": "Derivative coefficient of the PID step-size controller.",
    "accept_safety": "Accept an adaptive step when its scaled error is at most this.",
    "max_order": "Highest Adams-Bashforth order (1 to 4); the first steps warm up with lower ones.",
    "afs": "Analytical first step: take D = 0 at sigma_max instead of calling the model (one NFE less).",
    "restart_list": "Restart intervals 't_min,t_max,K,n;...': K times, noise up to t_max and re-solve "
                    "back with n Heun steps.",
    "variant": "UniPC's B(h): bh1 (B = -h) or bh2 (B = expm1(-h)).",
    "corrector": "Correct each step with UniC, using the next step's evaluation (no extra NFE).",
    "lower_order_final": "Lower the order on the last steps (at most the number of steps left).",
})


def signature_options(fn: Callable) -> dict[str, Any]:
    """A sampler function's options: its keyword-only parameters but ``noise`` and ``callback``,
    with their defaults. TypeError if one has no default, if the function takes ``**kwargs`` (options
    it would accept but not declare) or if it cannot be called as a sampler."""
    name = getattr(fn, "__name__", repr(fn))
    params = inspect.signature(fn).parameters
    kinds = [p.kind for p in params.values()]
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise TypeError(f"sampler function {name} must take (model, x, sigmas) positionally")
    if inspect.Parameter.VAR_KEYWORD in kinds:
        raise TypeError(f"sampler function {name} takes **kwargs: declare its options as keyword-only "
                        "parameters with defaults")
    for key in NON_OPTIONS:
        if key not in params or params[key].default is not None:
            raise TypeError(f"sampler function {name} must take {key}=None")
    options = {}
    for key, p in params.items():
        if p.kind is p.KEYWORD_ONLY and key not in NON_OPTIONS:
            if p.default is p.empty:
                raise TypeError(f"option {key!r} of sampler function {name} has no default")
            options[key] = p.default
    return options


@dataclass(frozen=True)
class SamplerSpec:
    """What is known about a sampler without running it.

    ``nfe_per_step`` denoiser calls per step, except the final step onto sigma = 0 which costs
    ``last_step_nfe`` (second-order samplers finish with one Euler/denoising call); either may be a
    function of the options (``options -> int``) when an option sets the cost.
    ``noise`` is the kind of randomness it consumes: None, i.i.d. normals per draw, or increments of
    one Brownian path (samplers whose noise over overlapping intervals must be correlated).
    ``count_nfe(sigmas, options) -> int``, when given, is the exact count on a schedule (a list of
    floats) for samplers whose NFE depends on the schedule rather than on the number of steps alone.
    ``options`` are the keyword-only parameters of ``fn`` (but ``noise``, ``callback``) with their
    defaults; ``option_help`` has a one-line description of each.
    ``cfg_pp``: the sampler takes CFG++ (Chung et al. 2024): given a denoiser offering
    ``with_unconditional`` (``samplers.guidance.CFGPlusPlus``), each step's x0 target is the guided
    prediction and its re-noising direction the unconditional one (``samplers.steps.evaluate``).
    """

    name: str
    fn: Callable = field(repr=False)
    order: int
    nfe_per_step: int | Callable[[Mapping[str, Any]], int] | None
    last_step_nfe: int | Callable[[Mapping[str, Any]], int] | None
    stochastic: bool
    noise: str | None
    options: Mapping[str, Any]
    option_help: Mapping[str, str] = field(repr=False)
    reference: str
    description: str
    count_nfe: NfeCounter | None = field(default=None, repr=False)
    cfg_pp: bool = False

    @property
    def adaptive(self) -> bool:
        """Adaptive samplers choose their own steps, so their NFE is known only after running."""
        return self.nfe_per_step is None

    def step_costs(self, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """``(NFE per step, NFE of the last step onto 0)`` with ``options`` (a sampler whose cost depends
        on an option registers functions of the options, e.g. annealed Langevin's steps per level)."""
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive: its NFE is not known before it runs")
        merged = {**self.options, **(options or {})}
        return tuple(int(c(merged)) if callable(c) else c for c in (self.nfe_per_step, self.last_step_nfe))

    def nfe(self, steps: int, options: Mapping[str, Any] | None = None, corrector_steps: int = 0) -> int:
        """Denoiser evaluations used by ``steps`` steps on a schedule that ends in 0, with ``options``,
        plus ``corrector_steps`` corrector evaluations before each step (``samplers.langevin``)."""
        per_step, last = self.step_costs(options)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return (steps - 1) * per_step + last + steps * corrector_steps


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
             option_help=None, reference="", description="", count_nfe=None, cfg_pp=False):
    """Decorator adding a sampler function to the registry under ``name``.

    The function must be named ``name``; its keyword-only parameters other than ``noise`` and
    ``callback`` are the sampler's options, their defaults the option defaults (the only options a
    user may override). Each option is described by ``option_help[option]`` if given, else by the
    common text in :data:`OPTION_HELP`; ValueError if an option has neither (or a blank or
    multi-line one). Entries sharing an
    algorithm with other defaults are small functions of their own calling the shared implementation.
    ``count_nfe``: see :class:`SamplerSpec` (with ``nfe_per_step=None``, for a schedule-dependent NFE).
    ``cfg_pp``: the sampler's loop takes each step's (target, direction) from ``samplers.steps.evaluate``,
    so it runs CFG++ when the denoiser offers it (see :class:`SamplerSpec`).
    """
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    own_help = dict(option_help or {})

    def decorate(fn):
        if getattr(fn, "__name__", None) != name:
            raise ValueError(f"sampler {name!r}: its function must be named {name!r} (got "
                             f"{getattr(fn, '__name__', fn)!r}), so tracebacks and profiles name it")
        options = signature_options(fn)
        stray = sorted(set(own_help) - set(options))
        if stray:
            raise ValueError(f"sampler {name!r}: option_help for {', '.join(stray)}, which is not an option "
                             f"(options: {', '.join(options) or 'none'})")
        helps = {key: own_help.get(key, OPTION_HELP.get(key)) for key in options}
        missing = [key for key, text in helps.items()
                   if not (isinstance(text, str) and text.strip() and "\n" not in text)]
        if missing:
            raise ValueError(f"sampler {name!r}: option(s) {', '.join(missing)} have no one-line "
                             "description; pass option_help= or add them to registry.OPTION_HELP")
        doc_line = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY.add(name, SamplerSpec(
            name=name, fn=fn, order=order, nfe_per_step=nfe_per_step,
            last_step_nfe=nfe_per_step if last_step_nfe is None else last_step_nfe,
            stochastic=stochastic, noise=noise, options=MappingProxyType(options),
            option_help=MappingProxyType(helps), reference=reference,
            description=description or (doc_line[0] if doc_line else ""), count_nfe=count_nfe,
            cfg_pp=bool(cfg_pp),
        ))
        return fn

    return decorate


def list() -> builtins.list[str]:  # noqa: A001 - public name fixed by the API
    """Names of all registered samplers, sorted."""
    return _REGISTRY.names()


def get(name) -> SamplerSpec:
    """The spec of sampler ``name``; ValueError naming the valid ones otherwise. A solver object with a
    ``spec`` (``samplers.fitted.LinearSolver``) is its own entry."""
    spec = name if isinstance(name, SamplerSpec) else getattr(name, "spec", None)
    if isinstance(spec, SamplerSpec):
        return spec
    return _REGISTRY[name]


def cfg_pp_samplers() -> builtins.list[str]:
    """Names of the samplers that declare CFG++ (``register(..., cfg_pp=True)``), sorted."""
    return [name for name in _REGISTRY.names() if _REGISTRY[name].cfg_pp]


def check_cfg_pp(spec: SamplerSpec) -> None:
    """ValueError (one line naming the samplers that take it) unless sampler ``spec`` declares CFG++."""
    if not spec.cfg_pp:
        raise ValueError(f"sampler {spec.name!r} does not take CFG++; the samplers that do: "
                         f"{', '.join(cfg_pp_samplers())}")


def steps_for_nfe(name: str, nfe: int, options: Mapping[str, Any] | None = None,
                  corrector_steps: int = 0) -> int:
    """The most steps of sampler ``name`` whose NFE (with ``options`` and ``corrector_steps`` corrector
    evaluations per step) does not exceed the budget ``nfe``."""
    spec = get(name)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"NFE budget must be a positive integer, got {nfe!r}")
    if spec.adaptive:
        raise ValueError(f"sampler {name!r} is adaptive: it cannot be given a fixed NFE budget")
    per_step, last = spec.step_costs(options)
    per_step, last = per_step + corrector_steps, last + corrector_steps
    if last > nfe:
        raise ValueError(f"sampler {name!r} needs at least {last} NFE, budget is {nfe}")
    return 1 + (nfe - last) // per_step


def check_runs_in_parts(spec: SamplerSpec) -> None:
    """ValueError unless the sampler can run part by part (``samplers.segments``): not one that plans over
    the whole schedule (restart places its intervals on it; its NFE depends on the schedule's levels)."""
    if spec.count_nfe is not None:
        raise ValueError(f"sampler {spec.name!r} plans over the whole schedule (its NFE depends on it): it "
                         "cannot run part by part, as a corrector or resampling needs")


def nfe_on(name: str, sigmas, *, corrector_steps: int = 0, resample: tuple[int, int] | None = None,
           **options) -> int | None:
    """Exact denoiser evaluations of sampler ``name`` over ``sigmas`` (decreasing, ending in 0 or not).

    ``options`` override the sampler's defaults. ``corrector_steps``: corrector evaluations before each
    step (the sampler then runs step by step, ``samplers.segments``); ``resample=(jump, count)``:
    RePaint's resampling, each part of ``jump`` steps but the last solved ``count`` times. None only for
    truly adaptive samplers, whose NFE is known only after they run.
    """
    spec = get(name)
    sigmas = [float(s) for s in sigmas]
    if sigmas and math.isinf(sigmas[0]) and len(sigmas) > 1:  # sample()'s one Euler step from infinity
        rest = nfe_on(name, sigmas[1:], corrector_steps=corrector_steps, resample=resample, **options)
        return None if rest is None else 1 + rest
    steps = len(sigmas) - 1
    if corrector_steps or resample:
        check_runs_in_parts(spec)
        length = 1 if corrector_steps else resample[0]
        total = 0
        for a, b, repeats in parts(steps, resample[0] if resample else steps, resample[1] if resample else 1):
            for start in range(a, b, length):
                stop = min(start + length, b)
                part = nfe_on(name, sigmas[start:stop + 1], **options)
                if part is None:
                    return None
                total += repeats * (part + (stop - start) * corrector_steps)
        return total
    if spec.count_nfe is not None:
        return spec.count_nfe(sigmas, {**spec.options, **options})
    if spec.adaptive:
        return None
    if sigmas[-1] == 0:
        return spec.nfe(steps, options)
    return steps * spec.step_costs(options)[0]  # no final step onto 0: every step is a full one

"""Schedule tuning: the sigma steps that minimise a deterministic sampler's ODE error at a fixed NFE.

The error of a sampler run is its RMS distance to the exact probability-flow ODE end point from the
same start noise (``tools.ode``), measured on a *calibration* batch whose seeds are disjoint from
the usual evaluation seeds, so that a tuned schedule can be judged on seeds it never saw.

The search keeps the schedule's two ends (sigma_max and the last nonzero sigma) and so the reference
solution, which is computed once. It moves the interior levels through unconstrained parameters that
always give a valid, strictly decreasing schedule (see :class:`Warp`), and minimises the log of the
calibration RMS, derivative-free:

1. a cheap global start: the best of the init, a one-dimensional search over the Karras family
   "uniform in sigma^(1/rho)" (rho from 1 to infinity, i.e. exponential), and a few other families;
2. coarse-to-fine local refinement with Nelder-Mead over smooth warps of that start with 2, 4, 8, ...
   cosine modes, up to every degree of freedom, until the evaluation budget is spent.

Every evaluation is one sampler run on the calibration batch, in float64. The best schedule seen is
returned, so the result is never worse than the init on the calibration batch.

What carries over to other seeds: the typical seed's error drops about as much as the calibration
RMS does. An RMS over many seeds can also hinge on a few rare seeds whose trajectories pass close to a
boundary between modes of the data, where a small error sends them to the other mode (on the
Gaussian-mixture benchmarks: about 1 seed in 100-1000, with errors 100x the typical one); a small
calibration batch rarely holds one, so schedules are not tuned for them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import optimize

import samplers
from samplers import schedules
from samplers.schedules import validate_sigmas
from tools.device import resolve_device
from tools.ode import ReferenceCache, rms_error

__all__ = ["CALIBRATION_SEED", "TuneResult", "calibration_batch", "calibration_seeds", "default_max_evals",
           "positive_count", "progress_bar", "threads_for", "tunable_steps", "tune_schedule"]

# Calibration seeds start here; evaluations (edm generate, the benchmarks) use small seeds from 0.
CALIBRATION_SEED = 1_000_000
# The default budget: this many denoiser calls (on the calibration batch) in all, i.e. DEFAULT_CALLS / NFE
# sampler runs, so that a tune costs about the same at every NFE; never fewer than MIN_EVALS runs.
DEFAULT_CALLS = 20_000
MIN_EVALS = 200
# Global start: the Karras exponent p = 1/rho is searched on [0, 1] (p -> 0 is exponential, p = 1 is
# uniform in sigma) to this tolerance; the other families are fixed candidates.
FAMILY_TOLERANCE = 0.01
EXTRA_STARTS = (("exponential", {}), ("kl_optimal", {}), ("polyexponential", {"rho": 2.0}))
# Local refinement: Nelder-Mead's first simplex moves each mode's amplitude (in log step size) by this;
# it stops a stage when the simplex is this small or log(error) changes less than this.
SIMPLEX_STEP = 0.3
X_TOLERANCE = 1e-3
F_TOLERANCE = 1e-4
# The objective of an invalid or diverging schedule: worse than any real log(error).
PENALTY = 1e6
# Below this many elements per denoiser call, a second CPU thread costs more in synchronisation than
# it saves (measured 0.17 ms vs 2.4 ms per Gaussian-mixture call on a busy 2-core machine).
SMALL_BATCH = 1 << 16


class _BudgetSpent(Exception):
    """Raised inside the objective to stop an optimiser when ``max_evals`` evaluations are done."""


def calibration_seeds(num: int) -> list[int]:
    """``num`` seeds from CALIBRATION_SEED on, disjoint from the evaluation seeds (0, 1, ...)."""
    return list(range(CALIBRATION_SEED, CALIBRATION_SEED + num))


def default_max_evals(nfe: int) -> int:
    """Evaluations a tune may spend by default: DEFAULT_CALLS denoiser calls, at least MIN_EVALS."""
    return max(MIN_EVALS, DEFAULT_CALLS // nfe)


# ---------------------------------------------------------------------------------------------------
# The result


@dataclass
class TuneResult:
    """A tuned schedule and how it was found; ``save`` writes it for ``--schedule file:PATH``."""

    sigmas: torch.Tensor  # float64, ``steps`` positive levels then 0; ends as the init's
    sampler: str
    nfe: int
    steps: int
    init: str  # the init's schedule name, or "custom" for a given tensor
    init_sigmas: torch.Tensor
    init_error: float  # calibration ODE RMS of the init
    error: float  # calibration ODE RMS of ``sigmas`` (<= init_error)
    evaluations: int  # sampler runs on the calibration batch
    seeds: list[int]
    options: dict[str, Any] = field(default_factory=dict)  # sampler options
    start: str = "init"  # the global start that refinement began from

    @property
    def improvement(self) -> float:
        """init_error / error: how many times smaller the calibration error became."""
        return self.init_error / self.error if self.error > 0 else math.inf

    def metadata(self) -> dict[str, Any]:
        """What the schedule file records about the tune (JSON data)."""
        from tools.seeds import format_seeds

        return {"sampler": self.sampler, "options": dict(self.options), "nfe": self.nfe, "steps": self.steps,
                "init": self.init, "start": self.start, "init_error": self.init_error, "error": self.error,
                "evaluations": self.evaluations, "seeds": format_seeds(self.seeds)}

    def save(self, path, **metadata) -> Path:
        """Write the schedule file (atomically), with the tune's metadata and ``metadata`` (e.g. model)."""
        from tools.schedules.file import save_schedule

        return save_schedule(path, self.sigmas, **{**self.metadata(), **metadata})


# ---------------------------------------------------------------------------------------------------
# Parametrisation


def _schedule(levels: np.ndarray) -> torch.Tensor:
    """Nonzero levels (decreasing) -> the sampler's float64 sigmas, with the final 0."""
    return torch.from_numpy(np.append(levels, 0.0))


class Warp:
    """Schedules with fixed ends as smooth warps of a base schedule's steps in log sigma.

    Why this parametrisation: the levels must stay strictly decreasing between two fixed ends, and the
    error is smooth in the *relative* size of the steps. So the steps in log sigma are
    ``log_range * softmax(log(base_steps) + sum_k c_k cos(pi k j))`` over the step positions
    ``j = (i + 1/2) / m``: any real ``c`` gives a valid schedule (softmax: positive steps summing to
    the whole range), ``c = 0`` is the base itself, and the cosines (DCT-II modes, without the constant
    one, which softmax ignores) let the search go from coarse, smooth changes (few modes: robust, few
    parameters) to full freedom (``m - 1`` modes span every schedule with these ends).
    """

    def __init__(self, base: np.ndarray, modes: int):
        self.top, self.bottom = float(base[0]), float(base[-1])
        self.log_steps = np.log(-np.diff(np.log(base)))
        m = len(self.log_steps)
        self.modes = min(modes, m - 1)
        j = (np.arange(m) + 0.5) / m
        self.basis = np.cos(np.pi * np.outer(j, np.arange(1, self.modes + 1)))

    def levels(self, c: np.ndarray) -> np.ndarray:
        z = self.log_steps + self.basis @ c
        steps = np.exp(z - z.max())
        log_range = math.log(self.top / self.bottom)
        log_levels = math.log(self.top) - log_range * np.concatenate([[0.0], np.cumsum(steps / steps.sum())])
        levels = np.exp(log_levels)
        levels[0], levels[-1] = self.top, self.bottom  # exactly the reference's ends
        return levels


def _family_levels(name: str, steps: int, top: float, bottom: float, **options) -> np.ndarray:
    """A registry schedule's nonzero levels between exactly ``top`` and ``bottom``."""
    levels = schedules.get(name)(steps, bottom, top, **options)[:-1].numpy().copy()
    levels[0], levels[-1] = top, bottom
    return levels


def _karras_levels(p: float, steps: int, top: float, bottom: float) -> np.ndarray:
    """Uniform in sigma^p (Karras with rho = 1/p; p = 0: uniform in log sigma)."""
    if p <= 0:
        return _family_levels("exponential", steps, top, bottom)
    return _family_levels("karras", steps, top, bottom, rho=1 / p)


# ---------------------------------------------------------------------------------------------------
# The objective


class Objective:
    """log(calibration ODE RMS) of schedules: one sampler run each, counted; remembers the best."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor, max_evals: int,
                 progress=None):
        self.run, self.reference, self.max_evals, self.progress = run, reference, max_evals, progress
        self.evaluations = 0
        self.best_levels: np.ndarray | None = None
        self.best_error = math.inf
        self.best_label = ""

    @property
    def remaining(self) -> int:
        return self.max_evals - self.evaluations

    def error(self, levels: np.ndarray, label: str = "") -> float:
        """The calibration RMS of ``levels`` (inf if the run is invalid or diverges)."""
        if self.evaluations >= self.max_evals:
            raise _BudgetSpent
        self.evaluations += 1
        error = math.inf  # levels that collapsed in float64 (no longer strictly decreasing), or divergence
        if np.all(np.diff(levels) < 0) and levels[-1] > 0:
            error = rms_error(self.run(_schedule(levels)), self.reference)
            error = error if math.isfinite(error) else math.inf
        if error < self.best_error or self.best_levels is None:  # the first (the init) is best so far
            self.best_levels, self.best_error, self.best_label = levels, error, label
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix_str(f"error {self.best_error:.4g}", refresh=False)
        return error

    def __call__(self, levels: np.ndarray, label: str = "") -> float:
        error = self.error(levels, label)
        return math.log(error) if 0 < error < math.inf else (-PENALTY if error == 0 else PENALTY)


def _global_start(objective: Objective, steps: int, top: float, bottom: float) -> None:
    """Evaluate the Karras family (a bounded search over p = 1/rho) and a few other families."""
    def karras(p: float) -> float:
        label = f"karras rho={1 / p:.3g}" if p > 0 else "exponential"
        return objective(_karras_levels(p, steps, top, bottom), label)

    optimize.minimize_scalar(karras, bounds=(0.0, 1.0), method="bounded", options={"xatol": FAMILY_TOLERANCE})
    for name, options in EXTRA_STARTS:
        label = " ".join([name, *(f"{k}={v:g}" for k, v in options.items())])
        objective(_family_levels(name, steps, top, bottom, **options), label)


def _nelder_mead(objective: Objective, warp: Warp) -> None:
    """Minimise over the warp's mode amplitudes from c = 0 (the best schedule so far)."""
    x0 = np.zeros(warp.modes)
    optimize.minimize(lambda c: objective(warp.levels(c), "tuned"), x0, method="Nelder-Mead",
                      options={"initial_simplex": np.vstack([x0, SIMPLEX_STEP * np.eye(warp.modes)]),
                               "xatol": X_TOLERANCE, "fatol": F_TOLERANCE, "maxfev": objective.remaining})


def _refine(objective: Objective, free: int) -> None:
    """Nelder-Mead over 2, 4, 8, ... cosine modes, each stage warping the best schedule so far; the last
    stage (all ``free`` degrees of freedom) restarts while it still improves and budget is left."""
    modes = 2
    while objective.remaining > 0:
        warp = Warp(objective.best_levels, modes)
        before = objective.best_error
        _nelder_mead(objective, warp)
        if warp.modes == free and not objective.best_error < before * math.exp(-F_TOLERANCE):
            return  # converged with full freedom
        modes = min(2 * modes, free)


def _search(objective: Objective, init_levels: np.ndarray) -> str:
    """Run the whole search (until converged or out of budget); returns the global start's label."""
    steps = len(init_levels)
    if steps < 3:  # both levels are the fixed ends: nothing to move
        return "init"
    start = None
    try:
        _global_start(objective, steps, float(init_levels[0]), float(init_levels[-1]))
        start = objective.best_label
        _refine(objective, steps - 2)
    except _BudgetSpent:
        pass
    return start or objective.best_label


# ---------------------------------------------------------------------------------------------------
# Checks


def tunable_steps(sampler: str, nfe: int, options: Mapping[str, Any] | None = None) -> int:
    """The sampler's steps at ``nfe``; ValueError (one line) when it cannot be tuned there: unknown,
    stochastic (with these options), adaptive, or ``nfe`` below its minimum."""
    options = dict(options or {})
    spec = samplers.get(sampler)
    merged = {**spec.options, **options}
    samplers.check_options(spec, options)
    # Churn and eta > 0 inject noise; a sampler that is stochastic by default is deterministic only
    # with an eta option set to 0 (e.g. euler_ancestral with eta=0 is euler).
    if "s_churn" in merged:
        stochastic = merged["s_churn"] != 0
    elif "eta" in merged:
        stochastic = merged["eta"] != 0
    else:
        stochastic = spec.stochastic
    if stochastic:
        knob = next((f" (set {k}=0)" for k in ("s_churn", "eta") if k in spec.options), "")
        raise ValueError(f"sampler {sampler!r} is stochastic with these options: only deterministic samplers "
                         f"have an ODE error to tune{knob}")
    steps = samplers.steps_for_nfe(sampler, nfe)
    if steps >= 3 and not _uses_interior(sampler, steps, options):
        raise ValueError(f"sampler {sampler!r} uses only the schedule's first and last sigma: there is "
                         "nothing to tune")
    return steps


def check_something_to_tune(sampler: str, nfe: int) -> None:
    """ValueError (one line) when the sampler takes fewer than 3 steps at ``nfe``: a tuned schedule keeps its
    first and last nonzero sigma, so there is no level to move (``tune_schedule`` returns the init)."""
    steps = samplers.steps_for_nfe(sampler, nfe)
    if steps < 3:
        least = next(n for n in range(nfe + 1, nfe + 1000) if samplers.steps_for_nfe(sampler, n) >= 3)
        raise ValueError(f"nothing to tune: at NFE {nfe} {sampler} takes {steps} step{'s' * (steps > 1)}, "
                         f"and "
                         f"a tuned schedule keeps its first and last nonzero sigma; tuning needs 3 steps or "
                         f"more (NFE >= {least})")


def _unit_gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of N(0, 1) data: E[y | y + sigma n = x] = x / (1 + sigma^2)."""
    return x / (1 + sigma[:, None] ** 2)


def _uses_interior(sampler: str, steps: int, options: Mapping[str, Any]) -> bool:
    """Whether moving the interior levels changes the sampler's result (dpm_fast, e.g., makes its own
    steps between the ends): two schedules with the same ends, on a one-element problem."""
    x = torch.ones(1, 1, dtype=torch.float64)
    outputs = []
    for name in ("karras", "exponential"):
        sigmas = schedules.get(name)(steps, 0.1, 10.0)
        sigmas[0], sigmas[-2] = 10.0, 0.1
        outputs.append(samplers.sample(_unit_gaussian, x * 10.0, sigmas, sampler, [0], **options))
    return not torch.equal(*outputs)


def _init_sigmas(init, steps: int, sigma_min, sigma_max) -> tuple[str, torch.Tensor]:
    """The init's name and float64 CPU sigmas (``steps`` levels then 0).

    A registry name is built over ``sigma_min..sigma_max``; a ``file:PATH`` schedule file or a tensor
    brings its own ends, which must match the range where one is given.
    """
    from tools.schedules.file import file_path, load_schedule

    path = file_path(init) if isinstance(init, str) else None
    if isinstance(init, str) and path is None:
        name, sigmas = init, schedules.get(init)(steps, sigma_min, sigma_max).to("cpu", torch.float64)
    else:
        if path is not None:
            name, sigmas = init, load_schedule(path)(steps)
        else:
            name = "custom"
            sigmas = validate_sigmas(torch.as_tensor(init, dtype=torch.float64).detach().cpu().clone())
        if sigmas[-1] != 0:
            raise ValueError("init sigmas must end in 0")
        for given, end, what in ((sigma_max, sigmas[0], "sigma_max"), (sigma_min, sigmas[-2], "sigma_min")):
            if given is not None and not math.isclose(float(end), given, rel_tol=1e-9):
                raise ValueError(f"init {name!r} has {what} {float(end)!r}, not {float(given)!r} as asked")
    if len(sigmas) != steps + 1:
        raise ValueError(f"init {name!r} has {len(sigmas) - 1} steps; the sampler takes {steps} at this NFE")
    return name, sigmas


@contextlib.contextmanager
def threads_for(device: torch.device, elements: int):
    """One CPU thread while tuning on small batches (see SMALL_BATCH); torch's setting is restored."""
    if device.type != "cpu" or elements >= SMALL_BATCH:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, sampler: str, nfe: int, initial: int = 0):
    """A tqdm bar on stderr counting sampler runs (None when disabled), with the time left; ``initial``:
    runs done before (a resumed fit's), which its estimate of the time left leaves out."""
    if not enabled:
        yield None
        return
    import sys

    from tqdm import tqdm

    with tqdm(total=total, initial=initial, desc=f"tune {sampler} NFE {nfe}", unit="run", file=sys.stderr,
              dynamic_ncols=True) as bar:
        yield bar


def positive_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def calibration_batch(seeds, num) -> list[int]:
    """The calibration seeds: those given, else ``calibration_seeds(num)``."""
    if seeds is None:
        return calibration_seeds(positive_count(num, "num"))
    seeds = samplers.noise.check_seeds(seeds, len(seeds))
    if len(set(seeds)) != len(seeds):
        raise ValueError("calibration seeds must be distinct")
    return seeds


# ---------------------------------------------------------------------------------------------------
# The tuner


def tune_schedule(denoiser, sampler: str, nfe: int, *,  # noqa: PLR0913 (public, keywords)
                  shape: Sequence[int], sigma_min: float | None = None, sigma_max: float | None = None,
                  seeds: Sequence[int] | None = None, num: int = 16,
                  cond: Mapping[str, Any] | None = None, init="karras",
                  options: Mapping[str, Any] | None = None, device="cpu", max_evals: int | None = None,
                  progress: bool = False) -> TuneResult:
    """The schedule of ``nfe`` denoiser calls that minimises ``sampler``'s ODE error on a calibration batch.

    ``denoiser(x, sigma, **cond)`` must accept float64 ``x``; everything runs in float64 on ``device``.
    The batch is ``shape``-d start noise of ``seeds`` (default ``calibration_seeds(num)``), drawn as
    ``edm generate`` draws it; ``cond`` (e.g. class labels, one row per seed) goes to every call.
    ``init`` is a registry schedule name (built over ``sigma_min..sigma_max``), a ``file:PATH`` schedule
    file or a sigma tensor (these bring their own range); the tuned schedule keeps the init's first and
    last nonzero sigma, so its error is against the same ODE solution. ``options`` are the sampler's
    options. ``max_evals`` caps the sampler runs (default :func:`default_max_evals`). Raises ValueError
    (one line) for a stochastic or adaptive sampler, a budget below its minimum NFE or a bad argument.
    """
    options = dict(options or {})
    steps = tunable_steps(sampler, nfe, options)
    seeds = calibration_batch(seeds, num)
    max_evals = default_max_evals(nfe) if max_evals is None else positive_count(max_evals, "max_evals")
    init_name, init_sigmas = _init_sigmas(init, steps, sigma_min, sigma_max)
    device = resolve_device(device)
    cond = {k: v.to(device=device, dtype=torch.float64) if torch.is_tensor(v) and v.is_floating_point()
            else v for k, v in dict(cond or {}).items()}
    # The start noise as edm generate draws it (float32 per seed), so seed s here is seed s there.
    latents = samplers.noise.latents(seeds, tuple(shape), device=device, dtype=torch.float64)
    x = latents * float(init_sigmas[0])

    def run(sigmas: torch.Tensor) -> torch.Tensor:
        return samplers.sample(denoiser, x, sigmas, sampler, seeds, cond=cond, **options)

    with threads_for(device, latents.numel()):
        reference = ReferenceCache(denoiser, latents, cond)(init_sigmas)  # once: every schedule shares it
        with progress_bar(progress, max_evals, sampler, nfe) as bar:
            objective = Objective(run, reference, max_evals, bar)
            init_levels = init_sigmas[:-1].numpy()
            init_error = objective.error(init_levels, "init")
            start = _search(objective, init_levels)
    return TuneResult(sigmas=_schedule(objective.best_levels), sampler=sampler, nfe=nfe, steps=steps,
                      init=init_name, init_sigmas=init_sigmas, init_error=init_error,
                      error=objective.best_error, evaluations=objective.evaluations, seeds=seeds,
                      options=options, start=start)

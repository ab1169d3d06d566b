"""Solver fitting: the noise levels and multistep weights of a few-step solver, fitted to one model.

``tune_solver`` fits a :class:`samplers.fitted.LinearSolver` of exactly ``nfe`` denoiser calls so that
its final sample lands as close as it can to the model's own probability-flow ODE solution from the
same start noise (the teacher, ``tools.ode``: no data needed). The design and the papers behind
it are in bench/results/few_step.md; in short, S4S-Alt's space (levels and weights) fitted LD3-style
(backpropagation through the whole few-step solve):

1. Start: every registered deterministic sampler that is a point of the space (``from_sampler``) on a
   few schedule families, at exactly ``nfe`` calls, is run once on the calibration batch; the best is
   the start. The fit keeps the best solver it has seen, the start included, so it is never worse
   than the start on the calibration batch. With ``restarts`` k the k best distinct starts are each
   fitted and the best fit is kept: the error is not convex, and fits from different starts end apart
   (bench/results/few_step/bound.md: 0.0199, 0.0279 and 0.0230 from the mixture's three best starts at
   5 NFE), so a start that begins worse can end better.
2. Fit: Adam on log(calibration MSE) over (a) the levels, as softmax shares of the log-sigma range
   with the first level fixed at sigma_max and a slack share below the last, so every parameter value
   is a valid decreasing schedule ending at or above sigma_min, and (b) zero-sum changes to each row
   of the start's weights, so whatever the start solves exactly (a denoiser constant along the way)
   the fit still solves exactly, and (c) a time shift per evaluation: the level the model is told
   is the state's level times e^shift (the model's error at a level is not the same as the state's
   distance from the data there; S4S-Alt and AMED-type methods move these too). An L2 penalty on the
   weight changes and shifts pulls toward the start. Each step's gradient is the whole calibration
   batch's (run in chunks of ``batch_size``), and the best iterate on it is kept.
3. Judge: the start and the fit on held-out seeds (disjoint from calibration and from the evaluation
   seeds 0, 1, ...), against their own teacher solutions.

The denoiser must be differentiable in ``x`` and ``sigma`` (any torch model is); its parameters are
frozen during the fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import samplers
from edm.checkpoint import optimizer_state, restore_optimizer
from samplers import schedules
from samplers.fitted import LinearSolver, from_sampler, multistep
from tools.common import BadInput, one_line
from tools.device import resolve_device
from tools.ode import ReferenceCache, rms_error
from tools.schedules.tune import calibration_batch, positive_count, progress_bar, threads_for
from tools.seeds import format_seeds
from tools.solvers.checkpoint import FitInterrupted, Interrupts, check_settings, load_state, save_state

__all__ = ["HELDOUT_SEED", "MIN_NFE", "FitInterrupted", "SolverFit", "check_start", "distinct_starts",
           "fittable_samplers", "heldout_seeds", "start_candidates", "tune_solver"]

# Held-out seeds start here: apart from the calibration seeds (1 000 000 on) and the evaluation seeds.
HELDOUT_SEED = 2_000_000
# The schedule families a start is looked for on (each on the model's sigma range).
START_SCHEDULES = ("karras", "exponential", "polyexponential", "kl_optimal")
DEFAULT_ITERATIONS = 200
# The smallest budget a solver is fitted for: one call at sigma_max and one at sigma_min.
MIN_NFE = 2
# Calibration seeds, and how many run through the model at once (memory; the gradient is the whole
# batch's). Fewer seeds overfit: at 5 NFE the held-out error was 2x the calibration error on digits with
# 128 seeds, 1.75x with 256 and 1.31x with 1024; on the Gaussian mixture 1.82x with 256, 1.28x with 1024.
DEFAULT_NUM = 1024
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_PENALTY = 1e-3
# Iterations between two checkpoints of a fit (one is also saved after the teacher, at the end of each
# start's fit and when the fit is asked to stop); a checkpoint costs far less than an iteration.
DEFAULT_CHECKPOINT_EVERY = 10
# A level share never starts below this fraction of the log-sigma range (the softmax of log 0 is stuck).
MIN_SHARE = 1e-3
# The teacher's tolerance: near-exact in float64; in float32 the model's own rounding sets the floor.
TEACHER_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-6}


def heldout_seeds(num: int) -> list[int]:
    """``num`` held-out seeds from HELDOUT_SEED on."""
    return list(range(HELDOUT_SEED, HELDOUT_SEED + num))


@dataclass
class SolverFit:
    """A fitted solver and how it was found; ``solver.metadata`` holds :meth:`metadata` once saved."""

    solver: LinearSolver
    start: str  # "sampler / schedule" of the start
    start_solver: LinearSolver
    candidates: dict[str, float]  # every start tried -> its calibration RMS
    init_error: float  # calibration RMS of the start
    error: float  # calibration RMS of the fit (<= init_error)
    heldout_init_error: float | None
    heldout_error: float | None
    iterations: int
    seeds: list[int]
    heldout: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    # every start the fit ran from (``restarts`` of them, best first) -> the calibration RMS it ended at
    fits: dict[str, float] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return self.solver.nfe

    @property
    def improvement(self) -> float:
        return self.init_error / self.error if self.error > 0 else math.inf

    def metadata(self) -> dict[str, Any]:
        """What the solver file records about the fit (JSON data)."""
        from tools.seeds import format_seeds

        return {"nfe": self.nfe, "start": self.start, "init_error": self.init_error, "error": self.error,
                "heldout_init_error": self.heldout_init_error, "heldout_error": self.heldout_error,
                "iterations": self.iterations, "seeds": format_seeds(self.seeds),
                "heldout_seeds": format_seeds(self.heldout) if self.heldout else "", **self.settings}


# ---------------------------------------------------------------------------------------------------
# Starts


def _levels_on(name: str, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    sigmas = schedules.get(name)(steps, sigma_min, sigma_max).to(torch.float64)
    sigmas[0], sigmas[-2] = sigma_max, sigma_min
    return sigmas


def start_candidates(nfe: int, sigma_min: float, sigma_max: float,
                     schedule_names: Sequence[str] = START_SCHEDULES) -> dict[str, LinearSolver]:
    """Every registered sampler (default options) x schedule that is a linear solver of exactly ``nfe``
    calls over ``sigma_min..sigma_max``, by ``"sampler / schedule"``."""
    found = {}
    for sampler in samplers.list():
        spec = samplers.get(sampler)
        if spec.stochastic or spec.adaptive:
            continue
        try:
            steps = samplers.steps_for_nfe(sampler, nfe)
        except ValueError:
            continue
        for name in schedule_names:
            try:
                solver = from_sampler(sampler, _levels_on(name, steps, sigma_min, sigma_max))
            except ValueError:
                continue
            if solver.nfe == nfe:
                found[f"{sampler} / {name}"] = solver
    return found


# ---------------------------------------------------------------------------------------------------
# The parametrisation


class Parametrisation:
    """Levels and weights from unconstrained tensors (see the module docstring, step 2)."""

    def __init__(self, start: LinearSolver, sigma_min: float):
        self.start, self.afs = start, start.afs
        levels = start.sigmas[:-1]
        self.top = float(levels[0])
        self.log_range = math.log(self.top / sigma_min)
        log_levels = levels.log()
        pieces = torch.cat([log_levels[:-1] - log_levels[1:], (log_levels[-1:] - math.log(sigma_min))])
        shares = (pieces / self.log_range).clamp_min(MIN_SHARE)
        self.logits0 = shares.log()
        # a start that already tells the model other levels (a refit of a fitted solver) keeps them
        told = start.model_sigmas
        self.shift0 = torch.zeros_like(levels) if told is None else (told / levels).log()
        count = len(levels)
        mask = torch.tril(torch.ones(count, count, dtype=torch.float64))
        if self.afs:
            mask[0] = 0  # the step from the analytical D_0 = 0 has nothing to weigh
            mask[:, 0] = 0
        self.mask = mask
        self.free = mask.sum(1).clamp_min(1)

    def levels(self, logits: torch.Tensor) -> torch.Tensor:
        shares = torch.softmax(logits, 0)
        drops = torch.cumsum(shares[:-1], 0) * self.log_range
        top = logits.new_tensor([self.top])
        return torch.cat([top, self.top * torch.exp(-drops)])

    def change(self, delta: torch.Tensor) -> torch.Tensor:
        """Zero-sum (per row) changes on the free weights."""
        masked = delta * self.mask
        return (masked - (masked.sum(1, keepdim=True) / self.free[:, None])) * self.mask

    def weights(self, delta: torch.Tensor) -> torch.Tensor:
        return self.start.weights + self.change(delta)

    def model_levels(self, levels: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The levels the model is told: each state's level times e^shift."""
        return levels * torch.exp(shift)

    def solver(self, logits, delta, shift, **kwargs) -> LinearSolver:
        levels = self.levels(logits.detach())
        told = self.model_levels(levels, shift.detach()) if bool(shift.detach().any()) else None
        return LinearSolver(torch.cat([levels, levels.new_zeros(1)]), self.weights(delta.detach()),
                            afs=self.afs, model_sigmas=told, **kwargs)


# ---------------------------------------------------------------------------------------------------
# The fit


@contextlib.contextmanager
def _frozen(denoiser):
    """The denoiser's parameters without gradients during the fit (only x and sigma need them)."""
    params = [p for p in getattr(denoiser, "parameters", lambda: [])() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Batch:
    """One batch of seeds: its start noise, conditioning and teacher solution (computed once)."""

    def __init__(self, denoiser, seeds, shape, cond, sigma_min, sigma_max, device, dtype):
        self.denoiser, self.seeds, self.cond = denoiser, list(seeds), dict(cond)
        latents = samplers.noise.latents(self.seeds, tuple(shape), device=device, dtype=torch.float64)
        self.x = (latents * sigma_max).to(dtype)
        self.latents = latents
        self.ends = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)
        self.dtype = dtype
        self._teacher = None

    def teacher(self) -> torch.Tensor:
        if self._teacher is None:
            dtype, denoiser = self.dtype, self.denoiser

            def in_dtype(x, sigma, **cond):  # the ODE solver works in float64; the model in its own dtype
                return denoiser(x.to(dtype), sigma.to(dtype), **cond).to(torch.float64)

            tolerance = TEACHER_TOLERANCE.get(dtype, 1e-6)
            cache = ReferenceCache(in_dtype, self.latents, self.cond, rtol=tolerance, atol=tolerance)
            self._teacher = cache(self.ends)
        return self._teacher

    def rows(self, index: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """The start points and conditioning of the samples ``index`` (None: all)."""
        if index is None:
            return self.x, self.cond
        count = self.x.shape[0]
        return self.x[index], {k: v[index] if torch.is_tensor(v) and v.ndim and v.shape[0] == count else v
                               for k, v in self.cond.items()}

    def run(self, levels, weights, afs, model_levels=None, index=None) -> torch.Tensor:
        x, cond = self.rows(index)
        count = x.shape[0]

        def model(x, sigma):
            sigma = sigma if torch.is_tensor(sigma) else torch.tensor(sigma, dtype=x.dtype, device=x.device)
            return self.denoiser(x, sigma.to(x.dtype).expand(count), **cond).to(x.dtype)

        return multistep(model, x, levels, weights, afs=afs, model_levels=model_levels)

    def error(self, solver: LinearSolver) -> float:
        with torch.no_grad():
            on = dict(device=self.x.device, dtype=self.dtype)
            told = None if solver.model_sigmas is None else solver.model_sigmas.to(**on)
            out = self.run(solver.sigmas[:-1].to(**on), solver.weights.to(**on), solver.afs, told)
        error = rms_error(out, self.teacher())
        return error if math.isfinite(error) else math.inf


def _cond_for(cond, seeds, device, dtype) -> dict:
    value = cond(seeds) if callable(cond) else cond
    return {k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point()
            else (v.to(device) if torch.is_tensor(v) else v) for k, v in dict(value or {}).items()}


def _chunks(count: int, size: int | None, device) -> list[torch.Tensor | None]:
    """Index tensors covering all ``count`` samples in chunks of ``size`` ([None]: one chunk)."""
    if size is None or size >= count:
        return [None]
    return [torch.arange(start, min(start + size, count), device=device) for start in range(0, count, size)]


class _Fit:
    """Adam on log(calibration MSE) + penalty from one start, an iteration at a time; the best solver seen
    (by calibration RMS) and its RMS. Its state goes to and comes from a checkpoint (:meth:`state`,
    :meth:`load`), so that an interrupted fit continues exactly as it would have run.

    Every step's gradient is the whole calibration batch's, run ``chunk`` samples at a time (the chunks'
    gradients of the summed squared error add up; d log(MSE) = d MSE / MSE), so memory is bounded and the
    fit does not depend on the chunk size. (Minibatches of a larger pool were tried: their noisy steps
    stalled the fit at 10 NFE.)"""

    def __init__(self, batch: Batch, param: Parametrisation, iterations: int, learning_rate: float,
                 penalty: float, shift: bool, chunk: int | None):
        device = batch.x.device
        self.batch, self.param, self.iterations = batch, param, iterations
        self.penalty, self.shift = penalty, shift
        self.teacher = batch.teacher().to(batch.dtype)
        self.chunks = _chunks(batch.x.shape[0], chunk, device)
        self.logits = param.logits0.clone().to(device, torch.float64).requires_grad_(True)
        self.delta = torch.zeros_like(param.start.weights, device=device).requires_grad_(True)
        self.shift0 = param.shift0.to(device)
        self.shifts = self.shift0.clone().requires_grad_(shift)
        self.variables = [self.logits, self.delta, *([self.shifts] if shift else [])]
        self.optimiser = torch.optim.Adam(self.variables, lr=learning_rate)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimiser, max(iterations, 1),
                                                                    eta_min=learning_rate / 20)
        self.start_weights = param.start.weights.to(device)
        self.iteration, self.stopped = 0, False  # stopped: at a non-finite or zero error
        self.best, self.best_error = None, math.inf

    @property
    def done(self) -> bool:
        return self.stopped or self.iteration >= self.iterations

    def step(self) -> None:
        """One Adam step on the whole calibration batch."""
        batch, param, dtype = self.batch, self.param, self.batch.dtype
        self.optimiser.zero_grad()
        mse, total = 0.0, self.teacher.numel()
        for index in self.chunks:
            levels = param.levels(self.logits)
            told = param.model_levels(levels, self.shifts).to(dtype) if self.shift else None
            weights = (self.start_weights + param.change(self.delta)).to(dtype)
            out = batch.run(levels.to(dtype), weights, param.afs, told, index)
            target = self.teacher if index is None else self.teacher[index]
            part = (out - target).to(torch.float64).square().sum() / total
            part.backward()
            mse += float(part.detach())
        self.iteration += 1
        error = math.sqrt(mse) if math.isfinite(mse) else math.inf
        if error < self.best_error:
            self.best = tuple(getattr(self, name).detach().clone() for name in self._TENSORS)
            self.best_error = error
        if not (math.isfinite(error) and error > 0):
            self.stopped = True
            return
        with torch.no_grad():
            for variable in self.variables:
                variable.grad /= mse
        regulariser = self.penalty * (param.change(self.delta).square().sum()
                                      + (self.shifts - self.shift0).square().sum())
        regulariser.backward()
        self.optimiser.step()
        self.scheduler.step()

    def result(self) -> tuple[LinearSolver, float]:
        if self.best is None:
            return self.param.start, math.inf
        return self.param.solver(*self.best), self.best_error

    _TENSORS = ("logits", "delta", "shifts")

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, record)`` of the fit, its tensors' names starting with ``prefix``."""
        tensors, record = optimizer_state(self.optimiser, prefix + "adam.")
        tensors.update({prefix + name: getattr(self, name).detach() for name in self._TENSORS})
        if self.best is not None:
            tensors.update({f"{prefix}best.{name}": value for name, value in zip(self._TENSORS, self.best)})
        record.update(iteration=self.iteration, stopped=self.stopped, best_error=self.best_error,
                      scheduler=self.scheduler.state_dict())
        return tensors, record

    def load(self, prefix: str, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for name in self._TENSORS:
                getattr(self, name).copy_(tensors[prefix + name])
        restore_optimizer(self.optimiser, record, tensors, prefix + "adam.")
        self.scheduler.load_state_dict(record["scheduler"])
        self.iteration, self.stopped = record["iteration"], record["stopped"]
        self.best_error = record["best_error"]
        device = self.logits.device
        if f"{prefix}best.logits" in tensors:
            self.best = tuple(tensors[f"{prefix}best.{name}"].to(device) for name in self._TENSORS)


def tune_solver(denoiser, nfe: int, *,  # noqa: PLR0913 (public, keywords)
                shape: Sequence[int], sigma_min: float, sigma_max: float,
                seeds: Sequence[int] | None = None, num: int = DEFAULT_NUM,
                heldout: Sequence[int] | None = None, heldout_num: int = 64,
                cond: Mapping[str, Any] | Callable | None = None, init=None, schedule: str | None = None,
                iterations: int = DEFAULT_ITERATIONS, learning_rate: float = DEFAULT_LEARNING_RATE,
                penalty: float = DEFAULT_PENALTY, shift: bool = True, restarts: int = 1,
                batch_size: int | None = DEFAULT_BATCH_SIZE, device="cpu", dtype=torch.float64,
                progress: bool = False, log: Callable[[str], None] | None = None,
                checkpoint=None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, resume: bool = True,
                context: Mapping[str, Any] | None = None) -> SolverFit:
    """Fit a solver of exactly ``nfe`` calls of ``denoiser`` (see the module docstring).

    ``shape``: one sample's shape; the start noise of a seed is drawn as ``edm generate`` draws it.
    ``seeds`` (default ``calibration_seeds(num)``) are the calibration batch, ``heldout`` (default
    ``heldout_seeds(heldout_num)``; empty to skip) the held-out one. ``cond``: the conditioning, a
    callable ``seeds -> mapping`` (per-seed rows, e.g. class labels) or one mapping for every batch.
    ``init``: a registered sampler name (on ``schedule``, default karras) or a LinearSolver to start
    from; default: the best start (step 1). ``dtype``: of the solver's arithmetic and model calls.
    ``iterations`` Adam steps at ``learning_rate`` (cosine decay); each step runs the solver forward and
    backward on the whole calibration batch, ``batch_size`` samples at a time (None: all at once);
    ``penalty`` is the weight of the pull toward the start's weights and levels told; ``shift`` lets the
    levels the model is told move off the state's; ``restarts`` is how many of the best starts are
    fitted (the best fit wins; the progress bar counts every fit's steps).

    ``checkpoint``: a file (see :mod:`tools.solvers.checkpoint`) the fit's state is saved to after the
    teacher, every ``checkpoint_every`` iterations and at the end of each start's fit; while the fit
    runs, Ctrl-C or SIGTERM stops it at the end of its iteration, saves it there and raises
    :class:`FitInterrupted`. A call with the same arguments (and ``context``: what else the caller
    fitted with, e.g. the model, by flag name) continues from that file, and returns what a run never
    interrupted returns, bit for bit; other arguments raise BadInput naming the first that differs
    (``resume`` False: start over). The caller removes the file once it has saved the result.
    Raises ValueError (one line) for a bad argument or an ``init`` that is not a linear solver of
    ``nfe`` calls.
    """
    nfe = positive_count(nfe, "nfe")
    seeds = calibration_batch(seeds, num)
    if heldout is None:
        heldout = heldout_seeds(positive_count(heldout_num, "heldout_num"))
    heldout = list(heldout)
    if set(heldout) & set(seeds):
        raise ValueError("held-out seeds must be apart from the calibration seeds")
    iterations = positive_count(iterations, "iterations") if iterations != 0 else 0
    restarts = positive_count(restarts, "restarts")
    batch_size = None if batch_size is None else positive_count(batch_size, "batch_size")
    checkpoint_every = positive_count(checkpoint_every, "checkpoint_every")
    device = resolve_device(device)
    log = log or (lambda text: None)
    check_start(init, schedule, nfe, sigma_min, sigma_max)
    starts = _starts(init, schedule, nfe, sigma_min, sigma_max)
    settings = {"nfe": nfe, "seeds": format_seeds(seeds), "heldout": format_seeds(heldout),
                "init": _init_name(init), "schedule": schedule, "sigma_min": sigma_min,
                "sigma_max": sigma_max,
                "iterations": iterations, "learning_rate": learning_rate, "penalty": penalty, "shift": shift,
                "restarts": restarts, "batch_size": batch_size, "device": str(device),
                "dtype": str(dtype).removeprefix("torch."), **dict(context or {})}
    saved = _saved(checkpoint, settings) if resume else None
    calibration = Batch(denoiser, seeds, shape, _cond_for(cond, seeds, device, dtype), sigma_min, sigma_max,
                        device, dtype)
    with threads_for(device, calibration.x.numel()), _frozen(denoiser):
        with Interrupts.deferred(checkpoint is not None) as interrupts:
            run = _Run(calibration, starts, settings, checkpoint, checkpoint_every, interrupts, saved)
            if saved is None:
                log(f"teacher: probability-flow ODE from {sigma_max:g} to {sigma_min:g} on {len(seeds)} "
                    "seeds")
            candidates = run.prepare()
            ranked = distinct_starts(sorted(candidates, key=candidates.get), starts)[:restarts]
            log(f"start: {ranked[0]}, calibration error {candidates[ranked[0]]:.4g} (best of {len(starts)})")
            with progress_bar(progress, iterations * len(ranked), "solver", nfe, run.done(ranked)) as bar:
                fits = {}
                for label in ranked:
                    fitted, error = run.fit(label, Parametrisation(starts[label], sigma_min), iterations,
                                            learning_rate, penalty, shift, batch_size, bar)
                    kept = error < candidates[label]
                    fits[label] = (fitted, error) if kept else (starts[label], candidates[label])
                    if len(ranked) > 1:
                        log(f"fit from {label}: {candidates[label]:.4g} -> {fits[label][1]:.4g}")
        label = min(fits, key=lambda key: fits[key][1])
        start = starts[label]
        solver, error = fits[label]
        heldout_init = heldout_error = None
        if heldout:
            batch = Batch(denoiser, heldout, shape, _cond_for(cond, heldout, device, dtype), sigma_min,
                          sigma_max, device, dtype)
            heldout_init, heldout_error = batch.error(start), batch.error(solver)
    recorded = {"sigma_min": sigma_min, "sigma_max": sigma_max, "dtype": settings["dtype"],
                "learning_rate": learning_rate, "penalty": penalty, "restarts": restarts}
    solver = LinearSolver(solver.sigmas, solver.weights, afs=solver.afs, name=f"fitted-{nfe}",
                          model_sigmas=solver.model_sigmas)
    return SolverFit(solver=solver, start=label, start_solver=start, candidates=candidates,
                     init_error=candidates[label], error=error, heldout_init_error=heldout_init,
                     heldout_error=heldout_error, iterations=iterations, seeds=seeds, heldout=heldout,
                     settings=recorded, fits={key: error for key, (_, error) in fits.items()})


def _init_name(init) -> str | None:
    """The start asked for, as a checkpoint records it: a sampler name, or a solver by its numbers."""
    if not isinstance(init, LinearSolver):
        return init
    numbers = [init.sigmas, init.weights] + ([] if init.model_sigmas is None else [init.model_sigmas])
    digest = hashlib.sha256(b"".join(t.to(torch.float64).numpy().tobytes() for t in numbers)).hexdigest()
    return f"solver {init.name} {digest[:16]}"


def _saved(checkpoint, settings) -> tuple[dict, dict] | None:
    """The checkpoint's ``(record, tensors)`` if there is one, once its settings are checked."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    record, tensors = load_state(Path(checkpoint))
    check_settings(Path(checkpoint), record.get("settings", {}), settings)
    return record, tensors


class _Run:
    """The fits of one tune_solver call, checkpointed: the teacher and start errors (computed, or read
    from the checkpoint), then one :class:`_Fit` per start, saved every few iterations and when asked
    to stop (SIGINT / SIGTERM, through ``interrupts``)."""

    def __init__(self, batch: Batch, starts, settings, checkpoint, every: int, interrupts, saved):
        self.batch, self.starts, self.settings, self.every = batch, starts, settings, every
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.interrupts = interrupts
        self.record, self.tensors = saved if saved is not None else ({}, {})
        self.fits: list[_Fit] = []
        self.candidates: dict[str, float] = {}

    def prepare(self) -> dict[str, float]:
        """Every start's calibration error (after the teacher solution they are measured against)."""
        if "teacher" in self.tensors:
            self.batch._teacher = self.tensors["teacher"].to(self.batch.x.device)
            self.candidates = dict(self.record["candidates"])
        else:
            self.batch.teacher()
            self.candidates = {label: self.batch.error(solver) for label, solver in self.starts.items()}
        self.checkpointed(save="teacher" not in self.tensors)
        return self.candidates

    def done(self, ranked) -> int:
        """Iterations the checkpoint holds, over every start (where a resumed progress bar begins)."""
        return sum(fit["iteration"] for fit in self.record.get("fits", [])[:len(ranked)])

    def fit(self, label, param, iterations, learning_rate, penalty, shift, chunk, bar):
        fit = _Fit(self.batch, param, iterations, learning_rate, penalty, shift, chunk)
        index = len(self.fits)
        saved = self.record.get("fits", [])
        if index < len(saved):
            fit.load(f"fit{index}.", self.tensors, saved[index])
        self.fits.append(fit)
        while not fit.done:
            fit.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"error {fit.best_error:.4g}", refresh=False)
            self.checkpointed(save=fit.iteration % self.every == 0 and not fit.done)
        self.checkpointed(save=True)
        return fit.result()

    def checkpointed(self, save: bool = False) -> None:
        """Save the state (``save``, or when a stop is asked), and stop if asked."""
        if self.checkpoint is None:
            return
        stop = self.interrupts.requested
        if save or stop is not None:
            self.save()
        if stop is not None:
            total = self.settings["iterations"] * self.settings["restarts"]
            done = sum(fit.iteration for fit in self.fits)
            raise FitInterrupted(self.checkpoint, done, total, stop)

    def save(self) -> None:
        """The teacher, the start errors and every fit's state: the running fits' own, and as read
        from the checkpoint for those that have not run again yet since it was read."""
        tensors, fits = {"teacher": self.batch.teacher()}, []
        for index, fit in enumerate(self.fits):
            fit_tensors, fit_record = fit.state(f"fit{index}.")
            tensors.update(fit_tensors)
            fits.append(fit_record)
        for index, fit_record in list(enumerate(self.record.get("fits", [])))[len(self.fits):]:
            prefix = f"fit{index}."
            tensors.update({key: value for key, value in self.tensors.items() if key.startswith(prefix)})
            fits.append(fit_record)
        save_state(self.checkpoint, {"settings": self.settings, "candidates": self.candidates, "fits": fits},
                   tensors)


def distinct_starts(labels: Sequence[str], starts: Mapping[str, LinearSolver]) -> list[str]:
    """``labels`` without those whose solver repeats an earlier one's numbers (polyexponential at its
    default rho is exponential: one fit from them is enough)."""
    kept: list[str] = []
    for label in labels:
        solver = starts[label]
        if not any(solver.afs == starts[k].afs and torch.allclose(solver.sigmas, starts[k].sigmas)
                   and torch.allclose(solver.weights, starts[k].weights) for k in kept):
            kept.append(label)
    return kept


def fittable_samplers(nfe: int) -> list[str]:
    """The registered samplers a fit of ``nfe`` calls can start from: those that are points of the space
    at that budget (deterministic, one model call per noise level)."""
    return sorted({label.split(" / ")[0] for label in start_candidates(nfe, 0.002, 80.0, ("karras",))})


def check_start(init, schedule: str | None, nfe: int, sigma_min: float, sigma_max: float) -> None:
    """BadInput naming ``nfe``, ``init`` or ``schedule`` (the one at fault) unless a fit of ``nfe`` calls
    can start from ``init`` on ``schedule`` (see :func:`tune_solver`), saying what is accepted."""
    if isinstance(nfe, int) and not isinstance(nfe, bool) and nfe < MIN_NFE:
        raise BadInput(f"a fitted solver takes at least {MIN_NFE} NFE (sigma_max and sigma_min are each a "
                       f"level of its own), got {nfe}", "nfe")
    if isinstance(init, str) and init not in samplers.list():
        raise BadInput(f"a fit starts from a registered sampler, not {init!r}; {_accepted(nfe)}", "init")
    if schedule is not None:
        try:
            _levels_on(schedule, 3, sigma_min, sigma_max)
        except ValueError as e:
            file = "; a fit starts on a registered schedule (`edm schedules`), not a schedule file"
            raise BadInput(one_line(e) + (file if schedule.startswith("file:") else ""), "schedule") from None
    try:
        _starts(init, schedule, nfe, sigma_min, sigma_max)
    except ValueError as e:
        raise BadInput(f"{one_line(e)}; {_accepted(nfe)}", "init" if init is not None else "nfe") from None


def _accepted(nfe: int) -> str:
    return (f"at {nfe} NFE a fit starts from {', '.join(fittable_samplers(nfe))} (or leave --sampler out: "
            "the best of them)")


def _starts(init, schedule, nfe, sigma_min, sigma_max) -> dict[str, LinearSolver]:
    if isinstance(init, LinearSolver):
        if init.nfe != nfe:
            raise ValueError(f"init solver takes {init.nfe} NFE, not {nfe}")
        return {init.name: init}
    if init is None:
        names = START_SCHEDULES if schedule is None else (schedule,)
        found = start_candidates(nfe, sigma_min, sigma_max, names)
        if not found:
            raise ValueError(f"no registered sampler is a linear solver of exactly {nfe} NFE")
        return found
    schedule = schedule or "karras"
    steps = samplers.steps_for_nfe(init, nfe)
    solver = from_sampler(init, _levels_on(schedule, steps, sigma_min, sigma_max))
    if solver.nfe != nfe:
        raise ValueError(f"{init} takes {solver.nfe} NFE at {steps} steps, not {nfe}")
    return {f"{init} / {schedule}": solver}


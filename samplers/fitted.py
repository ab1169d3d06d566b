"""Linear multistep solvers given by their numbers: noise levels and per-step weights (``edm tune-solver``).

Every solver here takes one denoiser evaluation per level and steps the probability-flow ODE in the
data-prediction exponential-integrator form (DPM-Solver++'s, Euler's = DDIM's)::

    x_{i+1} = (s_{i+1} / s_i) x_i + (1 - s_{i+1} / s_i) * sum_{j <= i} a_ij D_j,    D_j = D(x_j; s_j)

over evaluation levels ``s_0 > s_1 > ... > s_{K-1} > s_K = 0``, with a lower-triangular weight matrix
``a``. The last step, onto 0, returns the weighted denoised mix itself. The model may be told another
level than the state's, ``D(x_j; t_j)`` with ``t_j`` = ``model_sigmas[j]`` (a fitted time shift; default
``s_j``). Why this form:

* every weight row summing to 1 keeps the solver exact whenever D is constant along the way (one
  data point: the ODE is then ``x(s) = D + (s / s_0) (x_0 - D)``), whatever the levels; weights that
  move away from a known method by zero-sum changes keep that property;
* the weights are dimensionless, so a method's weights mean the same on nearby levels;
* every deterministic registered sampler that evaluates the model at strictly decreasing levels and is
  linear in its inputs (euler, dpmpp_2m, dpmpp_3m, ipndm, deis, lms, unipc with or without its
  corrector, ...) is a point of this space: :func:`from_sampler` reads its weights by running it
  on a tracing denoiser. The space is S4S-Alt's (Frankel et al. 2025): levels and coefficients.

``afs`` (analytical first step, as ``ipndm_afs``): ``D_0 = 0`` at ``s_0`` without calling the model, so
the solver takes ``K - 1`` evaluations.

A :class:`LinearSolver` is also a sampler: ``samplers.sample(D, x, solver.sigmas, solver)`` runs it
(``samplers.get`` accepts it), and :meth:`LinearSolver.sample` is the short form from unit latents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from .registry import SamplerSpec
from .steps import report

__all__ = ["LinearSolver", "from_sampler", "multistep"]

# The reading of a registered sampler must reproduce it to this relative tolerance (float64 arithmetic).
TRACE_TOLERANCE = 1e-9


def multistep(model: Callable, x: torch.Tensor, levels: Sequence, weights, *, afs: bool = False,
              model_levels: Sequence | None = None, callback=None) -> torch.Tensor:
    """Run the solver of evaluation ``levels`` ``s_0..s_{K-1}`` (then 0) and ``weights`` ``a`` (K x K).

    ``model(x, s)`` is the denoiser at level ``s``; ``model_levels`` (default ``levels``) are the
    levels the model is told, when they differ from the state's (a learned time shift). Levels and
    weights may be floats or tensors (a fit passes tensors that require grad, so the result is
    differentiable in them).
    """
    denoised: list[torch.Tensor] = []
    count = len(levels)
    told = levels if model_levels is None else model_levels
    for i in range(count):
        sigma = levels[i]
        d = torch.zeros_like(x) if afs and i == 0 else model(x, told[i])
        denoised.append(d)
        if callback is not None:
            report(callback, i, x, float(sigma), d)
        mix = sum(weights[i][j] * denoised[j] for j in range(i + 1))
        if i + 1 == count:
            return mix
        ratio = levels[i + 1] / sigma
        x = ratio * x + (1 - ratio) * mix
    return x


def _check_finite(values: torch.Tensor, key: str) -> None:
    """ValueError naming the first NaN or inf of ``values`` where a solver file holds it (``weights[2][1]``),
    so a hand-edited or diverged file can be mended."""
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        where = "".join(f"[{int(i)}]" for i in bad[0])
        more = f" (and {len(bad) - 1} more in {key})" if len(bad) > 1 else ""
        raise ValueError(f"{key}{where} is {float(values[tuple(bad[0])])}, not a finite number{more}")


@dataclass(frozen=True)
class LinearSolver:
    """A solver of ``nfe`` evaluations: float64 ``sigmas`` (the K evaluation levels, then 0) and the
    K x K lower-triangular ``weights``; see the module docstring. ``metadata`` says where it came from."""

    sigmas: torch.Tensor
    weights: torch.Tensor
    afs: bool = False
    name: str = "fitted"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The K levels the model is told at each evaluation, when a fit shifted them off the state's levels
    # (None: the same as ``sigmas[:-1]``).
    model_sigmas: torch.Tensor | None = None

    def __post_init__(self):
        sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).detach().cpu().clone()
        weights = torch.as_tensor(self.weights, dtype=torch.float64).detach().cpu().clone()
        count = len(sigmas) - 1
        if sigmas.ndim != 1 or count < 1:
            raise ValueError("a solver needs at least one evaluation level and the final 0")
        _check_finite(sigmas, "sigmas")
        levels = sigmas[:-1]
        if not ((levels > 0).all() and sigmas[-1] == 0 and (levels[1:] < levels[:-1]).all()):
            raise ValueError("a solver's sigmas must be finite, positive and strictly decreasing, then 0")
        if weights.shape != (count, count):
            raise ValueError(f"a solver with {count} levels needs a {count}x{count} weight matrix, "
                             f"got shape {tuple(weights.shape)}")
        _check_finite(weights, "weights")
        if torch.triu(weights, diagonal=1).any():
            raise ValueError("a solver's weights must be lower-triangular (a step uses only evaluations "
                             "made so far)")
        if self.afs and count < 2:
            raise ValueError("an analytical first step needs at least one more level")
        if self.model_sigmas is not None:
            told = torch.as_tensor(self.model_sigmas, dtype=torch.float64).detach().cpu().clone()
            if told.shape == (count,):
                _check_finite(told, "model_sigmas")
            if told.shape != (count,) or not (told > 0).all():
                raise ValueError(f"a solver's model_sigmas must be {count} finite positive levels")
            object.__setattr__(self, "model_sigmas", told)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def levels(self) -> int:
        """K, the evaluation levels (``nfe`` plus one with an analytical first step)."""
        return len(self.sigmas) - 1

    @property
    def nfe(self) -> int:
        return self.levels - int(self.afs)

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[0])

    def __call__(self, model, x, sigmas, *, noise=None, callback=None):
        """The sampler protocol (``samplers.registry``): ``sigmas`` must have this solver's length; the
        weights are used on them as given (normally they are ``self.sigmas``)."""
        if len(sigmas) != len(self.sigmas):
            raise ValueError(f"solver {self.name!r} takes {self.levels} levels then 0 (its own sigmas); got "
                             f"{len(sigmas)} sigmas")
        told = None if self.model_sigmas is None else self.model_sigmas.tolist()
        return multistep(model, x, [float(s) for s in sigmas[:-1]], self.weights.tolist(), afs=self.afs,
                         model_levels=told, callback=callback)

    @property
    def spec(self) -> SamplerSpec:
        """This solver as a registry entry, so ``samplers.sample`` and the NFE counters take it."""
        def count(sigmas, options):
            return len(sigmas) - 1 - int(self.afs)

        return SamplerSpec(name=self.name, fn=self, order=1, nfe_per_step=None, last_step_nfe=None,
                           stochastic=False, noise=None, options=MappingProxyType({}),
                           option_help=MappingProxyType({}), reference="edm tune-solver",
                           description=f"fitted linear multistep solver, {self.nfe} NFE", count_nfe=count)

    def sample(self, denoiser, latents: torch.Tensor, *, cond=None, callback=None) -> torch.Tensor:
        """Sample ``denoiser`` (any ``D(x, sigma, **cond)``) from unit ``latents`` (``[B, ...]``)."""
        from .api import sample

        return sample(denoiser, latents * self.sigma_max, self.sigmas.to(latents.dtype), self, cond=cond,
                      callback=callback)


# ---------------------------------------------------------------------------------------------------
# Reading a registered sampler's weights


class _Tracer:
    """A denoiser whose k-th call returns the basis vector e_{k+1} and records where it was called.

    Run on ``x = e_0`` (the start point), a sampler that is linear in the start point and in the
    denoiser's outputs hands every call an ``x`` whose entries are its coefficients on them.
    """

    def __init__(self, size: int):
        self.size = size
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, x, sigma, **cond):
        k = len(self.calls)
        if k + 1 >= self.size:
            raise ValueError("the sampler called the model more often than its NFE says")
        self.calls.append((float(sigma[0]), x[0].clone()))
        out = torch.zeros_like(x)
        out[:, k + 1] = 1
        return out


def from_sampler(sampler: str, sigmas, **options) -> LinearSolver:
    """Registered deterministic ``sampler`` with ``options`` on ``sigmas`` (ending in 0) as a
    :class:`LinearSolver`: the same results, as weights. ValueError (one line) when the sampler is not of
    that form: stochastic, calling the model twice at one level (heun's correction), or not linear in
    the denoiser's outputs (checked by running both on a nonlinear test denoiser)."""
    from . import registry
    from .api import sample

    spec = registry.get(sampler)
    if spec.stochastic and not (options.get("eta", spec.options.get("eta")) == 0
                                or options.get("s_churn", spec.options.get("s_churn")) == 0):
        raise ValueError(f"sampler {sampler!r} is stochastic: only deterministic samplers are linear solvers")
    sigma_list = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).tolist()]
    if sigma_list[-1] != 0:
        raise ValueError("sigmas must end in 0")
    nfe = registry.nfe_on(sampler, sigma_list, **options)
    if nfe is None:
        raise ValueError(f"sampler {sampler!r} is adaptive: it has no fixed weights")
    tracer = _Tracer(nfe + 1)
    start = torch.zeros(1, nfe + 1, dtype=torch.float64)
    start[0, 0] = 1
    out = sample(tracer, start, torch.tensor(sigma_list, dtype=torch.float64), sampler, seeds=[0],
                 **options)[0]
    calls = tracer.calls
    top = sigma_list[0]
    afs = not calls or calls[0][0] != top or not torch.equal(calls[0][1], start[0])
    states = ([(top, start[0])] if afs else []) + calls
    levels = [s for s, _ in states]
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"sampler {sampler!r} evaluates the model twice at one noise level or out of order "
                         "(e.g. a Heun correction): it is not a one-evaluation-per-level solver")
    for s, state in [*states, (0.0, out)]:
        if not math.isclose(float(state[0]), s / top, rel_tol=TRACE_TOLERANCE, abs_tol=TRACE_TOLERANCE):
            raise ValueError(f"sampler {sampler!r} is not exact for a zero denoiser: not of this form")
    # The D-coefficients of each state, in the solver's evaluation order (afs: a virtual D_0 = 0 first).
    shift = int(afs)
    coefficients = torch.zeros(len(states) + 1, len(states), dtype=torch.float64)
    for i, (_, state) in enumerate([*states[1:], (0.0, out)], start=1):
        coefficients[i, shift:] = state[1:nfe + 1]
    count = len(states)
    weights = torch.zeros(count, count, dtype=torch.float64)
    for i in range(count):
        ratio = (levels[i + 1] if i + 1 < count else 0.0) / levels[i]
        weights[i] = (coefficients[i + 1] - ratio * coefficients[i]) / (1 - ratio)
    if afs:
        weights[0, 0] = 1.0  # it multiplies D_0 = 0: any value gives the same step; 1 keeps rows summing to 1
    solver = LinearSolver(torch.tensor([*levels, 0.0], dtype=torch.float64), weights, afs=afs, name=sampler,
                          metadata={"sampler": sampler, "options": dict(options)})
    _check_reading(solver, sampler, sigma_list, options)
    return solver


def _check_reading(solver: LinearSolver, sampler: str, sigmas: list[float], options) -> None:
    """The read weights must give the sampler's own result on a nonlinear denoiser."""
    from .api import sample

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64) * sigmas[0]
    centres = torch.tensor([[1.0, -0.5, 0.2], [-0.7, 0.4, 0.9]], dtype=torch.float64)

    def denoiser(x, sigma, **cond):  # the exact denoiser of two equal-weight points: nonlinear in x
        logits = -((x[:, None, :] - centres) ** 2).sum(-1) / (2 * sigma[:, None] ** 2)
        return torch.softmax(logits, dim=1) @ centres

    grid = torch.tensor(sigmas, dtype=torch.float64)
    want = sample(denoiser, x, grid, sampler, seeds=[0, 1], **options)
    got = sample(denoiser, x, solver.sigmas, solver)
    scale = float(want.abs().max()) or 1.0
    if not float((got - want).abs().max()) <= TRACE_TOLERANCE * 100 * scale:
        raise ValueError(f"sampler {sampler!r} is not linear in the denoiser's outputs: it has no fixed "
                         "weights")

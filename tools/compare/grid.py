"""The benchmark grid: every sampler x schedule x NFE budget, each cell run with the most steps that fit.

A cell's NFE is counted exactly on the schedule it runs (``samplers.registry.nfe_on``), so samplers
whose NFE depends on the schedule (``restart``) and schedules that give fewer steps than asked (table
schedules) are budgeted correctly. A cell that cannot be run within its budget, or whose sampler is
truly adaptive, is kept with a one-line reason instead of metrics.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import samplers
from samplers.registry import nfe_on
from tools.common import one_line
from tools.solvers.use import FITTED_SCHEDULE

from .outputs import COLUMNS

__all__ = ["CELL_KEYS", "Cell", "fit_budget", "fitted_cell", "parse_budgets", "plan_cells"]

# The flat record of one cell, in this order: the columns the output writer expects.
CELL_KEYS = COLUMNS

Schedule = Callable[[int], torch.Tensor]  # steps -> float64 sigmas ending in 0; ValueError if impossible


@dataclass(frozen=True)
class Cell:
    """One planned cell: the schedule it runs and its exact NFE, or why it is skipped."""

    sampler: str
    schedule: str
    budget: int
    sigmas: torch.Tensor | None = None
    nfe: int | None = None
    skip: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return self.sampler, self.schedule, self.budget

    @property
    def steps(self) -> int | None:
        return None if self.sigmas is None else len(self.sigmas) - 1

    @property
    def status(self) -> str:
        return "ok" if self.skip is None else f"skipped: {self.skip}"

    def record(self, *, stochastic: bool, num: int, per_call: int = 1) -> dict[str, Any]:
        """The cell's flat record, without metrics yet. ``per_call``: network passes per denoiser call
        (2 under guidance: CFG's batch of 2B, autoguidance's second model, a classifier's backward pass),
        so ``evaluations`` is what a guided cell really costs."""
        record = dict.fromkeys(CELL_KEYS)
        record.update(sampler=self.sampler, schedule=self.schedule, nfe_budget=self.budget, steps=self.steps,
                      nfe=self.nfe, evaluations=None if self.nfe is None else self.nfe * per_call,
                      stochastic=bool(stochastic), status=self.status, num=int(num))
        return record


def parse_budgets(value: str | int | Iterable[int]) -> list[int]:
    """NFE budgets from ``"5,10,20,50"``, one int or a list: sorted, without repeats; ValueError otherwise."""
    if isinstance(value, str):
        items = [int(item) if item.strip().isdigit() else item for item in value.split(",")]
    else:
        items = list(value) if isinstance(value, Iterable) else [value]
    positive = [isinstance(b, numbers.Integral) and not isinstance(b, bool) and b > 0 for b in items]
    if not items or not all(positive):
        raise ValueError(f"NFE budgets must be positive integers such as 5,10,20,50, got {value!r}")
    return sorted({int(b) for b in items})


def fit_budget(sampler: str, schedule_name: str, schedule: Schedule, budget: int,
               options: Mapping[str, Any] | None = None, corrector_steps: int = 0) -> Cell:
    """The cell of ``sampler`` on ``schedule`` with the most steps whose exact NFE (``corrector_steps``
    corrector evaluations per step included) is within ``budget``."""
    cell = functools.partial(Cell, sampler, schedule_name, budget)
    spec = samplers.get(sampler)
    if spec.adaptive and spec.count_nfe is None:
        return cell(skip=f"{sampler} is adaptive: its NFE is known only after it runs")
    # Every step but an analytical first one (ipndm_afs) evaluates the denoiser at least once, so more than
    # `budget + 1` steps never fit. Counting down finds the most steps that fit even where the NFE is not a
    # fixed function of the step count.
    for steps in range(budget + 1, 0, -1):
        try:
            sigmas = schedule(steps)
        except ValueError as e:
            return cell(skip=f"schedule {schedule_name}: {one_line(e)}")
        nfe = nfe_on(sampler, sigmas, corrector_steps=corrector_steps, **(options or {}))
        if nfe <= budget:
            return cell(sigmas=sigmas, nfe=nfe)
    return cell(skip=f"needs at least {nfe} NFE (one step), more than the budget")


def fitted_cell(name: str, solver, budget: int) -> Cell:
    """A fitted solver's cell: at its own levels, only at the budget it was fitted for (a run at another
    budget would not be the solver the file holds)."""
    if budget != solver.nfe:
        return Cell(name, FITTED_SCHEDULE, budget, skip=f"fitted for {solver.nfe} NFE")
    return Cell(name, FITTED_SCHEDULE, budget, sigmas=solver.sigmas.clone(), nfe=solver.nfe)


def plan_cells(sampler_names: Sequence[str], schedules: Mapping[str, Schedule], budgets: Sequence[int],
               options: Mapping[str, Mapping[str, Any]] | None = None,
               corrector_steps: int = 0) -> list[Cell]:
    """Every sampler x schedule x budget, in that nesting order."""
    options = options or {}
    return [fit_budget(sampler, name, schedule, budget, options.get(sampler), corrector_steps)
            for sampler in sampler_names for name, schedule in schedules.items() for budget in budgets]

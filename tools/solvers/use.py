"""What ``--sampler`` names besides a registered sampler: a fitted solver file (``file:PATH``, written by
``edm tune-solver``) or ``auto`` (the best registered sampler x schedule at an NFE budget, from a table
``edm bench --write-auto`` wrote for the model, a shipped one, or the fallback rule of
``tools.solvers.auto``).

A fitted solver brings its own noise levels and runs only at its own NFE, for the model it was fitted
to, with the guidance weight it was fitted with; each mismatch is one line of BadInput. (Its thresholding,
``--threshold``, is a steering setting: ``tools.generate.sampling.fitted_steering`` checks it.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tools.common import FILE_PREFIX, BadInput, one_line

__all__ = ["AUTO", "FITTED_SCHEDULE", "Fitted", "auto_pick", "check_fitted_model", "check_fitted_use",
           "fitted_guidance", "read_fitted", "special_sampler"]

AUTO = "auto"
#: the schedule a fitted solver's run records: its own levels
FITTED_SCHEDULE = "fitted"


def special_sampler(name) -> str | None:
    """``"file"`` for ``file:PATH``, ``"auto"`` for auto, None for a registry name."""
    if isinstance(name, str) and name.startswith(FILE_PREFIX):
        return "file"
    return AUTO if name == AUTO else None


@dataclass(frozen=True)
class Fitted:
    """A solver file as a run uses it."""

    name: str  # file:PATH as given
    solver: Any  # samplers.fitted.LinearSolver
    metadata: dict[str, Any] = field(default_factory=dict)


def read_fitted(name: str, *, steps=None, nfe=None, options=None) -> Fitted:
    """The solver file of ``file:PATH``; BadInput when it is unreadable or asked for something else (other
    steps or NFE, sampler options)."""
    from tools.solvers.file import SolverFileError, file_path, load_solver

    try:
        loaded = load_solver(file_path(name))
    except SolverFileError as e:
        raise BadInput(one_line(e), "sampler") from None
    solver = loaded.solver
    if options:
        given = ", ".join("--" + key.replace("_", "-") for key in options)  # every option has its flag
        raise BadInput(f"a fitted solver takes no sampler options (got {given})", "sampler")
    if nfe is not None and nfe != solver.nfe:
        raise BadInput(f"solver file {loaded.path} runs at {solver.nfe} NFE, not {nfe}: fit one for {nfe} "
                       "with edm tune-solver", "nfe")
    if steps is not None and steps != solver.levels:
        raise BadInput(f"solver file {loaded.path} takes {solver.levels} steps ({solver.nfe} NFE), not "
                       f"{steps}", "steps")
    return Fitted(name=name, solver=solver, metadata=dict(loaded.metadata))


def check_fitted_model(fitted: Fitted, model) -> None:
    """BadInput unless the solver was fitted to this model's weights."""
    from tools.solvers.file import SolverFile, SolverFileError, fingerprint

    record = SolverFile(path=fitted.name.removeprefix("file:"), solver=fitted.solver,
                        metadata=fitted.metadata)
    try:
        record.check_model(fingerprint(model.denoiser))
    except SolverFileError as e:
        raise BadInput(one_line(e), "sampler") from None


def fitted_guidance(fitted: Fitted, guidance):
    """The guidance weight to sample with: the fitted one when none is given; BadInput when another one is
    (the levels and weights are fitted to the guided trajectories)."""
    fitted_w = float(fitted.metadata.get("guidance") or 0.0)
    if guidance is None:
        return fitted_w
    if not math.isclose(float(guidance), fitted_w, rel_tol=1e-9, abs_tol=1e-12):
        raise BadInput(f"solver file {fitted.name.removeprefix('file:')} was fitted with guidance "
                       f"{fitted_w:g}, not {float(guidance):g}: sample with its guidance or fit one for "
                       f"{float(guidance):g}", "guidance")
    return guidance


def check_fitted_use(fitted: Fitted, model, guidance):
    """BadInput unless the solver was fitted to this model; the guidance weight to sample with (see
    :func:`fitted_guidance`). The one check every command that runs a solver file makes (with
    ``tools.generate.sampling.fitted_steering``'s of its thresholding, which needs the steering floor)."""
    check_fitted_model(fitted, model)
    return fitted_guidance(fitted, guidance)


def auto_pick(model, nfe, accept=None):
    """``tools.solvers.auto.AutoChoice`` for the model at ``nfe``; BadInput without a budget. ``accept``:
    which rows the run may take (``tools.solvers.students.AutoGate``; default every row but a model's)."""
    if nfe is None:
        raise BadInput("--sampler auto picks a sampler for an NFE budget: give --nfe", "nfe")
    from tools.solvers.auto import auto_choice, plain
    from tools.solvers.file import fingerprint

    try:
        return auto_choice(fingerprint(model.denoiser), nfe, accept or plain)
    except ValueError as e:
        raise BadInput(one_line(e), "sampler") from None

"""The kinds of row an auto table (``tools.solvers.auto``) holds, each with its checks and where it runs.

A row names what ran at its NFE (``nfe``) and how well (``value`` of the table's metric). Its kind follows
from its fields:

- ``registry``: a registered ``sampler`` on a registered ``schedule`` (with ``options``); runs at any
  budget its sampler takes (``samplers.steps_for_nfe``);
- ``schedule``: a registered ``sampler`` on a tuned schedule file, ``schedule: "file:PATH"``; runs at any
  budget its sampler takes (the file's levels, resampled for another step count);
- ``solver``: a fitted solver file, ``sampler: "file:PATH"``, ``schedule: "fitted"`` (its own levels); runs
  only at its own NFE, the row's ``nfe_used`` (else ``nfe``);
- ``model``: another model, ``model: NAME`` (a student distilled from the table's model), run with its
  own ``sampler``, ``steps`` and ``schedule`` (registered), and the schedule's range if the row gives one
  (``sigma_min``, ``sigma_max``, ``rho``: a distilled student's levels are those it was trained on); runs
  at any budget at or above the NFE those steps take, which is what it costs.

A ``PATH`` (and a ``model`` that is a path rather than a built-in name) is absolute or relative to the
table's folder, so a table ships with its files beside it. Only JSON data is read here; the files
themselves are read, and checked against the model, where the pick runs (``tools.generate.sampling``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.common import FILE_PREFIX

__all__ = ["KINDS", "RANGE", "check_row", "kind_of", "ranges", "resolved", "row_cost", "runs_at"]

#: a model row's schedule settings (each optional: the model's own range and the schedule's default rho)
RANGE = ("sigma_min", "sigma_max", "rho")

#: the schedule a solver row names: a fitted solver brings its own levels
FITTED = "fitted"


def _name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _file(value: Any) -> bool:
    return _name(value) and value.startswith(FILE_PREFIX) and len(value) > len(FILE_PREFIX)


def _registered(value: Any) -> bool:
    return _name(value) and not value.startswith(FILE_PREFIX)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def ranges(row: Mapping[str, Any]) -> dict[str, float]:
    """A model row's schedule settings that it gives (see :data:`RANGE`)."""
    return {key: float(row[key]) for key in RANGE if row.get(key) is not None}


def kind_of(row: Mapping[str, Any]) -> str:
    """The kind of a row (see the module docstring), from its fields."""
    if "model" in row:
        return "model"
    if isinstance(row.get("sampler"), str) and row["sampler"].startswith(FILE_PREFIX):
        return "solver"
    if isinstance(row.get("schedule"), str) and row["schedule"].startswith(FILE_PREFIX):
        return "schedule"
    return "registry"


def _path(name: str, folder: Path) -> Path:
    path = Path(name[len(FILE_PREFIX):]).expanduser()
    return path if path.is_absolute() else folder / path


def _model_spec(name: str, folder: Path) -> str:
    """A built-in model's name as it is; a checkpoint path absolute, or relative to the table's folder."""
    from tools.models.checkpoint import BUILTIN

    if name in BUILTIN or Path(name).expanduser().is_absolute():
        return name
    return str(folder / name)


def row_cost(row: Mapping[str, Any]) -> int | None:
    """The NFE a row takes when it runs: a solver's and a model's own (None: its sampler cannot tell);
    None for the kinds that run at the budget asked."""
    kind = kind_of(row)
    if kind == "solver":
        return row.get("nfe_used") or row["nfe"]
    if kind == "model":
        import samplers

        try:
            return samplers.get(row["sampler"]).nfe(row["steps"], row.get("options") or {})
        except (ValueError, KeyError, TypeError):
            return None
    return None


def takes_budget(sampler: str, nfe: int, options: Mapping[str, Any] | None) -> bool:
    """Whether the registered ``sampler`` takes a fixed budget of ``nfe`` with ``options``."""
    import samplers

    try:
        samplers.steps_for_nfe(sampler, nfe, dict(options or {}))
    except (ValueError, KeyError, TypeError):
        return False
    return True


def _schedule_known(name: str) -> bool:
    from samplers import schedules

    try:
        schedules.spec(name)
    except (ValueError, KeyError):
        return False
    return True


@dataclass(frozen=True)
class Kind:
    """A row kind: ``check(row, folder)`` says what is wrong with a row (None: nothing), ``runs(row, nfe)``
    whether it runs at budget ``nfe``."""

    check: Callable[[Mapping[str, Any], Path], str | None]
    runs: Callable[[Mapping[str, Any], int], bool]


def _check_registry(row, folder) -> str | None:
    return None


def _missing(name: str, folder: Path, what: str) -> str | None:
    path = _path(name, folder)
    return None if path.is_file() else f"its {what} {path} is missing"


def _check_schedule(row, folder) -> str | None:
    if not _registered(row["sampler"]):
        return "a tuned schedule's sampler must be a registered one"
    return _missing(row["schedule"], folder, "schedule file")


def _check_solver(row, folder) -> str | None:
    if row["schedule"] != FITTED:
        return f"a solver file's schedule must be {FITTED!r} (its own levels), got {row['schedule']!r}"
    cost = row.get("nfe_used", row["nfe"])
    if not _positive(cost) or cost > row["nfe"]:
        return f"its nfe_used is {cost!r}, not a positive integer up to its nfe"
    return _missing(row["sampler"], folder, "solver file")


def _check_model(row, folder) -> str | None:
    if not _name(row["model"]):
        return f"its model is {row['model']!r}, not a model name"
    if not _registered(row["sampler"]) or not _registered(row["schedule"]):
        return "a model row runs a registered sampler on a registered schedule"
    if not _positive(row.get("steps")):
        return f"its steps are {row.get('steps')!r}, not a positive integer"
    for key in RANGE:
        if row.get(key) is not None and not _positive_real(row[key]):
            return f"its {key} is {row[key]!r}, not a positive number"
    cost = row_cost(row)
    if cost is None or cost > row["nfe"]:
        return f"{row['sampler']} with {row['steps']} steps does not run within NFE {row['nfe']}"
    return None


def _registry_runs(row, nfe: int) -> bool:
    return _registered(row["sampler"]) and _schedule_known(row["schedule"]) \
        and takes_budget(row["sampler"], nfe, row.get("options"))


KINDS: dict[str, Kind] = {
    "registry": Kind(_check_registry, _registry_runs),
    "schedule": Kind(_check_schedule, lambda row, nfe: takes_budget(row["sampler"], nfe, row.get("options"))),
    "solver": Kind(_check_solver, lambda row, nfe: row_cost(row) == nfe),
    "model": Kind(_check_model, lambda row, nfe: (row_cost(row) or nfe + 1) <= nfe),
}


def check_row(row: Mapping[str, Any], folder: Path) -> str | None:
    """What is wrong with a row of a table in ``folder`` (the fields every kind has are checked by the
    caller), or None."""
    return KINDS[kind_of(row)].check(row, folder)


def runs_at(row: Mapping[str, Any], nfe: int) -> bool:
    """Whether a (checked) row runs at budget ``nfe``."""
    return KINDS[kind_of(row)].runs(row, nfe)


def resolved(row: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The row with its file paths (``file:PATH``) absolute and a checkpoint path of its model too."""
    out = dict(row)
    for key in ("sampler", "schedule"):
        if _file(out.get(key)):
            out[key] = FILE_PREFIX + str(_path(out[key], folder))
    if _name(out.get("model")):
        out["model"] = _model_spec(out["model"], folder)
    return out

"""``--sampler auto``: the best of everything measured for a model at an NFE budget, from a table written
for the model (its weights' fingerprint), or a documented fallback rule without one.

Rows. A table (JSON, format ``edm-samplers/auto-v2``; ``auto-v1`` tables, of registry rows only, are still
read) holds rows of four kinds (``tools.solvers.auto_rows``): a registered sampler x schedule, a sampler on
a tuned schedule file, a fitted solver file, or another model (a student distilled from this one, run
with its own sampler and steps). Files are named ``file:PATH``, absolute or relative to the table's
folder, so a shipped table ships its files beside it (``auto_tables/digits/``). Each row records the
budget it was measured at (``nfe``), its ``value`` of the table's quality metric and the images it was
measured on. A v2 table may hold several rows at one budget (``bench/auto_digits.py`` keeps the best of
each kind), so that a budget a fitted solver cannot run at still finds the next best row.

Writing. ``write_auto_table`` (``edm bench --write-auto``) keeps, for each NFE budget of a benchmark, the
"ok" cell with the lowest value of the benchmark's first quality metric present (``fd`` if it was
computed, else ``ode_rmse``): any registered sampler, deterministic or stochastic, on a registered
schedule. ``file:`` samplers and schedules are left out there (a path need not exist where the table is
read; file and model rows are written with ``save_auto_table``, as the digits script does), and so are
samplers that cannot be given a fixed budget (``samplers.steps_for_nfe`` refuses them: ``restart``,
adaptive ones). A table names the model and the fingerprint of its weights
(``tools.solvers.file.fingerprint``). Writing merges into the table already at that path when its rows
were measured the same way (same weights, metric and conditions): the budgets benchmarked again get the
new rows, the others keep theirs, so a table grows budget by budget; otherwise (or when that file is
corrupt) the new table replaces it.

Lookup (``auto_choice``). The user's table ``auto_dir()/<fingerprint>.json`` (``$EDM_AUTO_DIR``, else
``~/.cache/edm-samplers/auto``), then the user's and the shipped (``tools/solvers/auto_tables/``) tables
that list the fingerprint among their ``fingerprints``: a table records, besides its weights'
fingerprint, the ones they have when loaded in float16 and bfloat16 (``tools.solvers.file.fingerprints``),
so a table measured in float32 serves half-precision loads of the model too.
In each, the best row measured at exactly the asked NFE that runs there and the caller accepts, else the
same among the rows of the largest NFE below it (a registry or tuned-schedule row then runs at the asked
NFE: more steps of a method that was best with fewer is a safe bet; a fitted solver runs only at its own
NFE, a student at its own steps, within the budget), whereas a row above the budget cannot run in it. The
caller's ``accept`` passes over what the run cannot honour (``tools.solvers.students.AutoGate``: students
need the model's record to name them, and no guidance or steering); by default model rows are passed over.
Of the tables' picks, the one measured on the
most images (a row's ``sample_size``: the images its fd, or its ode error, was measured on), the first in
the order above on a tie: an FD measured on 16 images is too noisy to override one measured on 1000 (the
shipped digits table's), and ``AutoChoice.note`` names the table passed over, which the commands print
as a warning. A row without ``sample_size`` (a table written before it was recorded) counts its ``num``
when ranked by fd; else its size is unknown, below any known size. Without a table, or a row at or below
the budget, the fallback rule.

Fallback rule (:data:`FALLBACK`): ``ipndm`` / ``exponential`` below 30 NFE, ``unipc`` / ``exponential`` from
30 on. Without a model's own table the rule should be safe rather than best somewhere: these are the pairs
whose worst case was mildest in the project's measurements, recorded with the reasoning in
``bench/results/auto_fallback.md``. Both run at any budget >= 1, and ``exponential`` needs only the
model's sigma range, so the rule serves every model, discrete ones too.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edm.checkpoint import atomic_write, read_record

from . import auto_rows

__all__ = ["AUTO", "FALLBACK", "FORMAT", "FORMATS", "AutoChoice", "AutoTableError", "auto_choice", "auto_dir",
           "best_per_budget", "load_auto_table", "plain", "ranking_value", "sample_size", "save_auto_table",
           "shipped_tables", "write_auto_table"]

AUTO = "auto"
FORMAT = "edm-samplers/auto-v2"
V1 = "edm-samplers/auto-v1"  # still read: registry rows only, one per NFE
FORMATS = (FORMAT, V1)
QUALITY = ("fd", "ode_rmse")  # in order of preference; lower is better for both
SHIPPED = Path(__file__).parent / "auto_tables"

#: (below this NFE, sampler, schedule), in increasing order; the last applies to every larger budget
FALLBACK = ((30, "ipndm", "exponential"), (None, "unipc", "exponential"))

#: the benchmark settings a table records as the conditions of its measurements
CONDITIONS = ("seeds", "num", "dtype", "device", "detector", "ref", "guidance", "class", "steering", "text",
              "batch")


class AutoTableError(ValueError):
    """An auto table that is missing, corrupt or not a table, or cells that give none (one line)."""


@dataclass(frozen=True)
class AutoChoice:
    """What ``--sampler auto`` runs at ``nfe``: the sampler, its schedule and options, and where the pick
    came from: ``source`` is ``"table PATH"`` (with the measured ``metric``, ``value`` and ``sample_size``
    at the row's NFE) or ``"fallback"`` (those None); ``note`` says which less-measured table was passed
    over, if one was. ``kind`` is the row's: a ``solver`` pick's sampler is ``file:PATH`` (schedule
    ``"fitted"``), a ``schedule`` pick's schedule is ``file:PATH`` (absolute paths), a ``model`` pick
    names the ``model`` to run instead, with ``steps`` of its sampler."""

    sampler: str
    schedule: str
    options: dict
    nfe: int
    source: str
    metric: str | None
    value: float | None
    sample_size: int | None = None  # the images ``value`` was measured on (None: unknown, or fallback)
    note: str | None = None  # a less-measured table's row passed over for this one (worth a warning)
    kind: str = "registry"  # the row's kind (tools.solvers.auto_rows): registry, schedule, solver, model
    model: str | None = None  # a model row's model (a built-in name or a checkpoint path), run instead
    steps: int | None = None  # a model row's steps (its sampler then runs them, whatever ``nfe`` is)
    ranges: dict | None = None  # a model row's sigma_min / sigma_max / rho, those it gives


def auto_dir() -> Path:
    """Where ``edm bench --write-auto`` puts tables: ``$EDM_AUTO_DIR``, else
    ``~/.cache/edm-samplers/auto``."""
    given = os.environ.get("EDM_AUTO_DIR")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "edm-samplers" / "auto"


def table_name(fingerprint: str) -> str:
    """The file name of a model's table (':' is not portable in file names)."""
    return fingerprint.replace(":", "-") + ".json"


def _registered(name: Any) -> bool:
    return isinstance(name, str) and not name.startswith("file:")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _quality_metric(cells: list[dict]) -> str:
    for metric in QUALITY:
        if any(_finite(cell.get(metric)) is not None for cell in cells):
            return metric
    raise AutoTableError("no cell has a quality metric (fd or ode_rmse) to rank by: bench with --metrics fd "
                         "or ode")



def ranking_value(cell: Mapping[str, Any], metric: str) -> float | None:
    """A benchmark cell's finite ``metric``, or None (not measured, skipped, or NaN/inf: cannot rank)."""
    value = cell.get(metric)
    if cell.get("status") != "ok" or value is None or not math.isfinite(value):
        return None
    return float(value)


def best_per_budget(cells: Iterable[Mapping[str, Any]], metric: str) -> dict[int, Any]:
    """For each NFE budget, the "ok" cell with the lowest finite ``metric`` (the first one on ties).

    Budgets where no cell has a value are left out; keys are in increasing budget order.
    """
    best: dict[int, Any] = {}
    for cell in cells:
        value = ranking_value(cell, metric)
        budget = cell["nfe_budget"]
        if value is not None and (budget not in best or value < ranking_value(best[budget], metric)):
            best[budget] = cell
    return dict(sorted(best.items()))


def write_auto_table(cells: Iterable[Mapping[str, Any]], *, model: str, fingerprint: str, path=None,
                     sampler_options: Mapping[str, Mapping[str, Any]] | None = None,
                     conditions: Mapping[str, Any] | None = None,
                     fingerprints: Iterable[str] | None = None) -> Path:
    """Write the best cell per NFE budget of ``edm bench`` cells (``Bench.run()``'s flat dicts) as the auto
    table of the model whose weights have ``fingerprint``; return its path (default
    ``auto_dir()/<fingerprint>.json``, ':' as '-'). A table measured alike already there keeps its rows
    at the budgets these cells do not cover (see the module docstring). ``fingerprints``: the other
    fingerprints the same weights have (half-precision loads), recorded for the lookup.

    ``sampler_options``: the options each sampler ran with (the bench's ``--option``/flags), recorded
    with its row, as is a cell's own ``options`` key if it has one. ``conditions``: the benchmark's
    settings (``Bench.settings``); those of :data:`CONDITIONS` are recorded. AutoTableError (one line)
    when no cell qualifies.
    """
    sampler_options = sampler_options or {}
    today = datetime.date.today().isoformat()
    usable = []
    for cell in cells:
        cell = dict(cell)
        sampler, schedule, budget = cell.get("sampler"), cell.get("schedule"), cell.get("nfe_budget")
        if cell.get("status") != "ok" or not (_registered(sampler) and _registered(schedule)):
            continue
        options = dict(cell.get("options") or sampler_options.get(sampler) or {})
        if isinstance(budget, int) and auto_rows.takes_budget(sampler, budget, options):
            usable.append({**cell, "options": options})
    metric = _quality_metric(usable)
    settings = dict(conditions or {})
    rows = []
    for budget, cell in best_per_budget(usable, metric).items():
        # the ode metric is measured on the first ode_num seeds only
        size = settings.get("ode_num") if metric == "ode_rmse" else None
        rows.append({"nfe": budget, "sampler": cell["sampler"], "schedule": cell["schedule"],
                     "options": cell["options"], "metric": metric, "value": _finite(cell[metric]),
                     "steps": cell.get("steps"), "nfe_used": cell.get("nfe"), "num": cell.get("num"),
                     "sample_size": size or cell.get("num"),
                     "stochastic": bool(cell.get("stochastic")), "date": today})
    return save_auto_table(rows, model=model, fingerprint=fingerprint, path=path, metric=metric,
                           conditions=settings, fingerprints=fingerprints, merge=True)


def save_auto_table(rows: Iterable[Mapping[str, Any]], *, model: str, fingerprint: str, metric: str,
                    path=None, conditions: Mapping[str, Any] | None = None,
                    fingerprints: Iterable[str] | None = None, merge: bool = False) -> Path:
    """Write ``rows`` (table rows of any kind, see the module docstring) as the auto table of the model
    whose weights have ``fingerprint``; return its path (default ``auto_dir()/<fingerprint>.json``).
    ``merge``: keep the rows of a table measured alike already there at the budgets ``rows`` lacks. The
    rows are checked as :func:`load_auto_table` checks them, so a table that could not be read back is
    never written (AutoTableError, one line)."""
    from tools.common import jsonable

    settings = dict(conditions or {})
    today = datetime.date.today().isoformat()
    record = jsonable({
        "format": FORMAT, "model": str(model), "fingerprint": str(fingerprint), "date": today,
        "fingerprints": list(dict.fromkeys([str(fingerprint), *map(str, fingerprints or ())])),
        "metric": metric,
        "conditions": {key: settings[key] for key in CONDITIONS if settings.get(key) is not None},
        "rows": [dict(row) for row in rows],
    })
    path = Path(path).expanduser() if path is not None else auto_dir() / table_name(str(fingerprint))
    new_budgets = {row["nfe"] for row in record["rows"]}
    kept = [row for row in _mergeable_rows(path, record) if row["nfe"] not in new_budgets] if merge else []
    record["rows"] = sorted([*kept, *record["rows"]], key=lambda row: row["nfe"])  # stable: keeps ranks
    _check_rows(record, path)
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as e:
        raise AutoTableError(f"cannot write the auto table {path}: {e.strerror or e}") from None
    return path


def _mergeable_rows(path: Path, record: dict) -> list[dict]:
    """The rows of the table already at ``path`` when ``record`` (a new table) may be merged into it: the
    same weights, metric and conditions, so that values at different budgets were measured alike."""
    if not path.is_file():
        return []
    try:
        old = load_auto_table(path)
    except AutoTableError:  # a corrupt table is replaced
        return []
    same = all(old.get(key) == record[key] for key in ("fingerprint", "metric", "conditions"))
    return old["rows"] if same else []


def _check_row(row: Any, path: Path, version: str = FORMAT) -> None:
    def bad(why: str) -> AutoTableError:
        return AutoTableError(f"corrupt auto table {path}: {why}")

    if not isinstance(row, dict):
        raise bad("a row is not an object")
    nfe = row.get("nfe")
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise bad(f"a row's nfe is {nfe!r}, not a positive integer")
    for key in ("sampler", "schedule"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise bad(f"the row of NFE {nfe} has no {key} name")
    if not isinstance(row.get("options", {}), dict):
        raise bad(f"the row of NFE {nfe} has options that are not an object")
    value = row.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise bad(f"the row of NFE {nfe} has value {value!r}, not a number")
    if version != V1 and (why := auto_rows.check_row(row, path.parent)) is not None:
        raise bad(f"the {auto_rows.kind_of(row)} row of NFE {nfe}: {why}")


def _check_rows(record: dict, path: Path) -> None:
    if not isinstance(record.get("fingerprint"), str) or not record["fingerprint"]:
        raise AutoTableError(f"corrupt auto table {path}: no model fingerprint")
    rows = record.get("rows")
    if not isinstance(rows, list):
        raise AutoTableError(f"corrupt auto table {path}: its rows are not a list")
    for row in rows:
        _check_row(row, path, record["format"])
    if record["format"] == V1 and len({row["nfe"] for row in rows}) != len(rows):
        raise AutoTableError(f"corrupt auto table {path}: two rows for one NFE")


def load_auto_table(path) -> dict:
    """The auto table at ``path`` (JSON only is read; format v2, or v1); AutoTableError (one line) naming
    the file when it is missing, corrupt or not a table, or a file a row names is missing."""
    path = Path(path).expanduser()
    record = read_record(path, FORMATS, "auto table", AutoTableError)
    _check_rows(record, path)
    return record


def shipped_tables() -> list[Path]:
    """The tables shipped with the package, in name order."""
    return sorted(SHIPPED.glob("*.json"))


def _lists(table: dict, fingerprint: str) -> bool:
    also = table.get("fingerprints")
    return table["fingerprint"] == fingerprint or (isinstance(also, list) and fingerprint in also)


def _tables(fingerprint: str) -> list[tuple[Path, dict]]:
    """The tables for ``fingerprint``: the user's named by it, the user's other tables that list it (a
    half-precision load of a model benchmarked in float32), then the shipped ones."""
    found = []
    user = auto_dir() / table_name(fingerprint)
    if user.is_file():
        table = load_auto_table(user)
        if table["fingerprint"] != fingerprint:
            raise AutoTableError(f"auto table {user} is for weights {table['fingerprint'][:19]}, not "
                                 f"{fingerprint[:19]} as its name says: rewrite it (edm bench --write-auto)")
        found.append((user, table))
    others = sorted(path for path in auto_dir().glob("*.json") if path != user) if auto_dir().is_dir() else []
    for path in [*others, *shipped_tables()]:
        try:
            table = load_auto_table(path)
        except AutoTableError:
            if path.parent == SHIPPED:
                raise
            continue  # another model's table (by its name), unreadable: not this model's business
        if _lists(table, fingerprint):
            found.append((path, table))
    return found


def _rank(row: dict) -> tuple[int, float]:
    value = _finite(row.get("value"))
    return -row["nfe"], math.inf if value is None else value


def _row_for(table: dict, path: Path, nfe: int, accept: Callable[[AutoChoice], bool]) -> AutoChoice | None:
    """The pick of a table at ``nfe``: of the rows measured at ``nfe`` that run there and ``accept``
    takes, the best; else the same among the rows of the largest NFE below it, and so on."""
    rows = sorted((row for row in table["rows"] if row["nfe"] <= nfe), key=_rank)
    for row in rows:
        kind = auto_rows.kind_of(row)
        if table["format"] == V1 and kind != "registry":
            continue  # a v1 table's rows are registered pairs; it never shipped files
        if not auto_rows.runs_at(row, nfe):
            continue
        row = auto_rows.resolved(row, path.parent)
        choice = AutoChoice(row["sampler"], row["schedule"], dict(row.get("options") or {}), nfe,
                            f"table {path}", row.get("metric", table.get("metric")), row.get("value"),
                            sample_size(row, table), kind=kind, model=row.get("model"),
                            steps=row.get("steps") if kind == "model" else None,
                            ranges=auto_rows.ranges(row) if kind == "model" else None)
        if accept(choice):
            return choice
    return None


def plain(choice: AutoChoice) -> bool:
    """The default of ``auto_choice``'s ``accept``: every row but a model row (running another model is
    the front end's business, which checks it)."""
    return choice.kind != "model"


def fallback(nfe: int) -> AutoChoice:
    """The documented rule's pick at ``nfe`` (see the module docstring)."""
    for below, sampler, schedule in FALLBACK:
        if (below is None or nfe < below) and auto_rows.takes_budget(sampler, nfe, None):
            return AutoChoice(sampler, schedule, {}, nfe, "fallback", None, None)
    # only reached if a budget is too small for the rule's sampler; euler runs at any budget
    return AutoChoice("euler", "karras", {}, nfe, "fallback", None, None)


def auto_choice(fingerprint: str, nfe: int, accept: Callable[[AutoChoice], bool] = plain) -> AutoChoice:
    """What ``--sampler auto`` runs at ``nfe`` for the model whose weights have ``fingerprint``.

    The user's table, then the shipped ones (see the module docstring); else the fallback rule.
    ``accept(choice)``: whether a row may be picked for this run (default :func:`plain`: not a model
    row); a row it refuses is passed over for the next best. ValueError (one line) when ``nfe`` is not a
    positive integer; AutoTableError when a table found is corrupt.
    """
    if not isinstance(nfe, numbers.Integral) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"--sampler auto needs an NFE budget, a positive integer (--nfe N), got {nfe!r}")
    nfe = int(nfe)
    found = [(path, table, choice) for path, table in _tables(str(fingerprint))
             if (choice := _row_for(table, path, nfe, accept)) is not None]
    if not found:
        return fallback(nfe)
    # the best-measured row; on a tie (or sizes unknown) the first, in the order of _tables
    best = max(range(len(found)), key=lambda i: (_size_key(found[i]), -i))
    path, _, choice = found[best]
    return replace(choice, note=_passed_over(found[:best], path, choice.sample_size, nfe))


def sample_size(row: Mapping[str, Any], table: Mapping[str, Any]) -> int | None:
    """The number of images a row's value was measured on: its ``sample_size``; for a table written before
    that was recorded, the ``num`` of an fd row (fd scores all the samples); else None (unknown)."""
    size = row.get("sample_size")
    if size is None and row.get("metric", table.get("metric")) == "fd":
        size = row.get("num")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    return size


def _size_key(found: tuple[Path, dict, AutoChoice]) -> int:
    size = found[2].sample_size
    return -1 if size is None else size  # unknown ranks below any measured size


def _passed_over(before: list[tuple[Path, dict, AutoChoice]], path: Path, size: int | None,
                 nfe: int) -> str | None:
    """A line naming the first table that would have been taken (it comes first) but was measured on fewer
    images than the one taken, or None."""
    if not before:
        return None
    other, _, choice = before[0]
    few = choice.sample_size
    few_text = "an unknown number of images" if few is None else f"{few} images"
    return (f"--sampler auto at NFE {nfe}: the auto table {other} (measured on {few_text}) is passed over "
            f"for {path} (measured on {size} images): bench with --num {size} or more to replace it")

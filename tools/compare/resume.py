"""Resuming a benchmark from its ``results.json``: the same settings, then only what is missing.

Settings that decide the numbers (model, seeds, precision, detector, reference, sampler options, ...)
must match the previous run's; ``None`` marks one a run did not use (no ``ode``: no ``ode_num``), and
those are compared only where both runs used them, so a later run may add metrics, samplers, schedules
or budgets. A finished cell is kept when its schedule is unchanged; only its missing metrics are computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools.common import jsonable, one_line

from .inputs import BenchError
from .metrics import FIELDS, METRICS
from .outputs import read_results

__all__ = ["conflicts", "merge_settings", "plain", "read_previous", "reusable_metrics"]


SAME = ("model", "shape", "sigma_min", "sigma_max", "seeds", "num", "dtype", "device", "rho", "class",
        "guidance")
SAME_WHEN_USED = ("ode_num", "detector", "ref", "time_measured_on")
UNIONS = ("samplers", "schedules")


def read_previous(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings and cells in ``out/results.json``; empty when there is none."""
    try:
        found = read_results(out)
    except (OSError, ValueError) as e:
        raise BenchError(f"{one_line(e)}; use another --out or --overwrite", "out") from None
    if found is None:
        return {}, []
    settings, cells = found
    return settings or {}, cells


def plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from results.json (tuples as lists), so that they compare equal."""
    return jsonable(settings)


def conflicts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The settings in which ``new`` differs from ``old`` as ``"name: old there, new here"``."""
    names = [k for k in SAME if old.get(k) != new.get(k)]
    names += [k for k in SAME_WHEN_USED if None not in (old.get(k), new.get(k)) and old[k] != new[k]]
    shared = [s for s in new["samplers"] if s in old.get("samplers", ())]
    options = [s for s in shared if old.get("options", {}).get(s, {}) != new["options"].get(s, {})]
    return ([f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in names]
            + [f"options of {s}: {old.get('options', {}).get(s, {})} there, {new['options'].get(s, {})} here"
               for s in options])


def merge_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of all the cells kept together: what either run used."""
    merged = {**old, **{k: v for k, v in new.items() if v is not None}}
    for key in UNIONS:
        merged[key] = list(dict.fromkeys([*old.get(key, []), *new[key]]))
    merged["nfe"] = sorted({*old.get("nfe", []), *new["nfe"]})
    merged["metrics"] = [m for m in METRICS if m in {*old.get("metrics", []), *new["metrics"]}]
    merged["options"] = {**old.get("options", {}), **new["options"]}
    return merged


def reusable_metrics(old: Mapping[str, Any] | None, record: Mapping[str, Any]) -> dict[str, Any]:
    """The metric fields of a previous run's cell that still hold for ``record`` (the same schedule)."""
    same_run = old is not None and old.get("status") == record["status"] == "ok" and all(
        old.get(k) == record[k] for k in ("steps", "nfe", "num"))
    if not same_run:
        return {}
    return {key: old.get(key) for keys in FIELDS.values() for key in keys}

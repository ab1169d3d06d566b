"""What ``edm bench`` leaves in its output folder: results.json (also read back to resume), results.csv,
results.md and, where matplotlib is installed, one PNG per metric.

A *cell* is one (sampler, schedule, NFE budget) run, a dict with the keys of ``COLUMNS``; ``status`` is
"ok" or "skipped: <reason>" and a metric is None where it was not measured.

results.json is strict JSON: non-finite floats are stored as the strings "nan", "inf", "-inf"
(``tools.common.jsonable``). ``read_results`` turns those strings back into floats in the metric columns
(``METRICS``) only, so a cell round-trips exactly apart from NaN's usual ``nan != nan``; anywhere else
(extra keys, settings) such strings stay strings.

Every file is written atomically (temporary file + rename), so a reader never sees a partial file.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edm.checkpoint import atomic_write, read_record
from tools.common import format_value, jsonable
from tools.seeds import format_seeds
from tools.solvers.auto import best_per_budget, ranking_value

__all__ = ["COLUMNS", "FORMAT", "METRICS", "best_per_budget", "read_results", "write_outputs"]

FORMAT = "edm-samplers/bench-v1"
RESULTS_JSON, RESULTS_CSV, RESULTS_MD = "results.json", "results.csv", "results.md"
COLUMNS = ("sampler", "schedule", "nfe_budget", "steps", "nfe", "evaluations", "stochastic", "status", "num",
           "ode_rmse", "fd", "detector", "time_per_sample_s", "denoiser_share")
METRICS = ("ode_rmse", "fd", "time_per_sample_s", "denoiser_share")
RANKED = ("ode_rmse", "fd", "time_per_sample_s")  # lower is better; denoiser_share is only informative
PLOTTED = RANKED
SKIPPED = "—"
PLOT_HINT = "pip install 'edm-samplers[plot]'"

_NON_FINITE = {str(v): v for v in (math.inf, -math.inf, math.nan)}  # as jsonable writes them
_EXPONENT = re.compile(r"e([+-])0*(\d)")


# ---------------------------------------------------------------------------------------------------
# Cells


def _is_ok(cell: dict) -> bool:
    return cell.get("status") == "ok"


def _pair(cell: dict) -> tuple[str, str]:
    return cell["sampler"], cell["schedule"]


def _pairs(cells: Iterable[dict]) -> list[tuple[str, str]]:
    """The distinct (sampler, schedule) pairs in the order they first appear."""
    return list(dict.fromkeys(_pair(cell) for cell in cells))


def _budgets(cells: Iterable[dict]) -> list[int]:
    return sorted({cell["nfe_budget"] for cell in cells})


def _present(cells: list[dict], metric: str) -> bool:
    """Whether any measured cell has a value (NaN included: it is shown, just never ranked)."""
    return any(_is_ok(cell) and cell.get(metric) is not None for cell in cells)


# ---------------------------------------------------------------------------------------------------
# results.json


def _results_json(cells: list[dict], settings: dict | None) -> str:
    record = {"format": FORMAT, "settings": settings, "cells": cells}
    return json.dumps(jsonable(record), indent=1, allow_nan=False) + "\n"


def _restore_floats(cell: dict) -> dict:
    """Undo ``jsonable`` on the metric columns: "nan"/"inf"/"-inf" back to floats."""
    return {key: _NON_FINITE.get(value, value) if key in METRICS and isinstance(value, str) else value
            for key, value in cell.items()}


def read_results(out_dir: Path) -> tuple[dict | None, list[dict]] | None:
    """``(settings, cells)`` from ``out_dir/results.json``; None when there is none.

    A file that is not valid JSON, not of ``FORMAT`` or not shaped as written raises a one-line
    ValueError naming it.
    """
    path = Path(out_dir) / RESULTS_JSON
    if not path.exists():
        return None
    record = read_record(path, FORMAT, "bench results", ValueError)
    settings, cells = record.get("settings"), record.get("cells")
    if not (settings is None or isinstance(settings, dict)) or not isinstance(cells, list) \
            or not all(isinstance(cell, dict) for cell in cells):
        raise ValueError(f"corrupt bench results {path}: expected a settings object and a list of cells")
    return settings, [_restore_floats(cell) for cell in cells]


# ---------------------------------------------------------------------------------------------------
# results.csv


def _csv_columns(cells: list[dict]) -> list[str]:
    extra = sorted({key for cell in cells for key in cell} - set(COLUMNS))
    return [*COLUMNS, *extra]


def _write_csv(path: str, cells: list[dict]) -> None:
    columns = _csv_columns(cells)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        # str(float) is the shortest repr that reads back exactly; None is the empty field
        writer.writerows([["" if cell.get(key) is None else cell[key] for key in columns] for cell in cells])


# ---------------------------------------------------------------------------------------------------
# results.md


def _compact(value: float) -> str:
    """3 significant digits; plain between 0.01 and 1000, else a short exponent: 0.00123 -> 1.23e-3."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    rounded = f"{value:.2e}"  # decide on the rounded value: 999.9 is 1.00e3, not 1000
    if 1e-2 <= abs(float(rounded)) < 1e3:
        return f"{value:#.3g}".rstrip(".")  # "#" keeps trailing zeros (3.10), and a bare point on 100.
    return _EXPONENT.sub(lambda m: f"e{'-' if m[1] == '-' else ''}{m[2]}", rounded)


_SCALES: dict[str, Callable[[float], str]] = {
    "time_per_sample_s": lambda v: _compact(v * 1e3),  # shown in ms
    "denoiser_share": lambda v: f"{_compact(v * 100)}%",
}


def _format_metric(metric: str, value: float) -> str:
    return _SCALES.get(metric, _compact)(value)


def _label(metric: str, cells: list[dict]) -> str:
    """The metric's title; FD names its detector(s), since FD values of different detectors differ."""
    if metric == "fd":
        detectors = list(dict.fromkeys(c["detector"] for c in cells if c.get("detector") and _is_ok(c)))
        return f"FD ({', '.join(detectors)})" if detectors else "FD"
    return {"ode_rmse": "ODE error (RMS, lower is better)", "time_per_sample_s": "time per sample (ms)",
            "denoiser_share": "share of time in the denoiser"}[metric]


def _cell_text(cell: dict | None, metric: str, best: bool) -> str:
    """A table entry: the value, the NFE actually used where it differs from the budget, bold if best."""
    if cell is None:
        return ""
    if not _is_ok(cell):
        return SKIPPED
    if cell.get(metric) is None:
        return ""
    text = _format_metric(metric, cell[metric])
    if cell.get("nfe") is not None and cell["nfe"] != cell["nfe_budget"]:
        text += f" ({cell['nfe']})"
    return f"**{text}**" if best else text


def _md_row(items: Iterable[str]) -> str:
    return "| " + " | ".join(items) + " |"


def _shown_pairs(cells: list[dict], metric: str) -> list[tuple[str, str]]:
    """Pairs with a value for ``metric``, and pairs never run at all (to show they were skipped).

    A pair whose runs succeeded without this metric (a stochastic sampler has no ODE error) is left out.
    """
    keep = {_pair(c) for c in cells if _is_ok(c) and c.get(metric) is not None}
    ran = {_pair(c) for c in cells if _is_ok(c)}
    return [pair for pair in _pairs(cells) if pair in keep or pair not in ran]


def _md_table(cells: list[dict], metric: str) -> list[str]:
    budgets = _budgets(cells)
    grid = {(_pair(c), c["nfe_budget"]): c for c in cells}
    best = best_per_budget(cells, metric) if metric in RANKED else {}
    lines = [_md_row(["sampler", "schedule", *(f"NFE {b}" for b in budgets)]),
             _md_row(["---", "---", *("---:" for _ in budgets)])]
    for pair in _shown_pairs(cells, metric):
        entries = [grid.get((pair, b)) for b in budgets]
        texts = [_cell_text(c, metric, c is not None and best.get(c["nfe_budget"]) is c) for c in entries]
        lines.append(_md_row([*pair, *texts]))
    return lines


def _md_best(cells: list[dict], metric: str) -> list[str]:
    best = best_per_budget(cells, metric)
    return ["Best per budget:", ""] + [
        f"- NFE {budget}: {cell['sampler']} / {cell['schedule']}, {_cell_text(cell, metric, False)}"
        for budget, cell in best.items()]


def _setting_text(value: Any) -> str:
    """Compact: lists of non-negative ints in seed syntax (0-99), other lists comma-separated."""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            return format_seeds(value)
        return ",".join(_setting_text(v) for v in value)
    if isinstance(value, dict):
        return "{" + _settings_line(value) + "}"
    return format_value(value)


def _settings_line(settings: dict) -> str:
    return ", ".join(f"{key}={_setting_text(value)}" for key, value in settings.items())


def _markdown(cells: list[dict], settings: dict | None) -> str:
    lines = ["# Sampler benchmark", ""]
    if settings:
        lines += [f"Settings: {_settings_line(settings)}", ""]
    for metric in METRICS:
        if not _present(cells, metric):
            continue
        lines += [f"## {_label(metric, cells)}", "", *_md_table(cells, metric), ""]
        if metric in RANKED:
            lines += [*_md_best(cells, metric), ""]
    skipped = sum(not _is_ok(c) for c in cells)
    if skipped:
        lines += [f"{SKIPPED}: skipped ({skipped} of {len(cells)} runs; see results.csv for why).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Plots

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _import_matplotlib():
    """``(Figure, FigureCanvasAgg, colormaps)``, or None (with one warning) when matplotlib is not installed.

    The Agg canvas is attached per figure: no ``matplotlib.use`` and no pyplot, so the caller's backend
    and pyplot's figure registry are left alone.
    """
    try:
        import matplotlib  # noqa: F401 (importing the parent first makes a blocked matplotlib fail here)
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn(f"matplotlib is not installed: no plots written ({PLOT_HINT})", stacklevel=4)
        return None
    return Figure, FigureCanvasAgg, colormaps


def _series(cells: list[dict], metric: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Per pair, the (NFE used, value) points that fit log axes: positive and finite, sorted by NFE.

    Values are in the units of the metric's label (time in ms).
    """
    scale = 1e3 if metric == "time_per_sample_s" else 1.0
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for cell in cells:
        value, nfe = ranking_value(cell, metric), cell.get("nfe") or cell["nfe_budget"]
        if value is not None and value > 0 and nfe > 0:
            series.setdefault(_pair(cell), []).append((nfe, value * scale))
    return {pair: sorted(points) for pair, points in series.items()}


def _styles(pairs: list[tuple[str, str]], palette: list) -> list[dict]:
    """Colour per sampler, line style and marker per schedule; once the colours run out, line style and
    marker shift too, so no two lines look alike while (schedules x rounds of colours) <= 8."""
    samplers = list(dict.fromkeys(s for s, _ in pairs))
    schedules = list(dict.fromkeys(h for _, h in pairs))
    styles = []
    for sampler, schedule in pairs:
        i, j = samplers.index(sampler), schedules.index(schedule)
        k = j + (i // len(palette)) * len(schedules)
        styles.append({"color": palette[i % len(palette)], "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
                       "marker": _MARKERS[k % len(_MARKERS)]})
    return styles


def _y_scale(metric: str, series: dict) -> str:
    """Log, except FD within one decade: FD often varies little across the grid and log would flatten it."""
    values = [y for points in series.values() for _, y in points]
    return "linear" if metric == "fd" and max(values) < 10 * min(values) else "log"


def _plot(path: Path, cells: list[dict], metric: str, mpl) -> bool:
    """Write ``path``, a PNG of ``metric`` against the NFE used; False when nothing fits on log axes."""
    series = _series(cells, metric)
    if not series:
        return False
    Figure, FigureCanvasAgg, colormaps = mpl
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # tab10 rather than tab20: tab20's pale halves are hard to tell from their dark twins
    for (pair, points), style in zip(series.items(), _styles(list(series), colormaps["tab10"].colors)):
        ax.plot(*zip(*points), label=" / ".join(pair), markersize=4, linewidth=1.2, **style)
    ax.set(xscale="log", yscale=_y_scale(metric, series), title=_label(metric, cells),
           xlabel="NFE used (denoiser evaluations per sample)", ylabel=_label(metric, cells))
    # tick the budgets themselves: a log axis spanning 5-100 would otherwise be labelled 10^1 only
    budgets = _budgets(cells)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xticks([], minor=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="x-small", frameon=False,
              ncols=1 if len(series) <= 20 else 2, title="sampler / schedule", title_fontsize="small")
    # the temporary name ends in .tmp, so the format is given; "tight" makes room for the outside legend
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return True


# ---------------------------------------------------------------------------------------------------
# All outputs


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def _write(path: Path, write: Callable[[str], object]) -> Path:
    atomic_write(path, write)
    return path


def _write_plots(out_dir: Path, cells: list[dict], plots: bool) -> list[Path]:
    """The metric PNGs; any of ours left from an earlier call and not redrawn now is removed, so the
    folder never shows plots that disagree with results.md."""
    metrics = [m for m in PLOTTED if _present(cells, m)]
    mpl = _import_matplotlib() if plots and metrics else None
    drawn = [out_dir / f"{m}.png" for m in metrics if mpl and _plot(out_dir / f"{m}.png", cells, m, mpl)]
    for stale in {out_dir / f"{m}.png" for m in PLOTTED} - set(drawn):
        stale.unlink(missing_ok=True)
    return drawn


def write_outputs(out_dir: Path, cells: list[dict], *, settings: dict | None = None,
                  plots: bool = True) -> list[Path]:
    """Write results.json, results.csv, results.md and (``plots``) the metric PNGs; return their paths.

    results.json goes first: it is what a resumed run reads, so a failure further on cannot lose it.
    ``settings`` is stored as JSON data (tuples come back as lists, paths as strings).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a list display runs left to right: the files are written in this order
    return [_write(out_dir / RESULTS_JSON, lambda tmp: _write_text(tmp, _results_json(cells, settings))),
            _write(out_dir / RESULTS_CSV, lambda tmp: _write_csv(tmp, cells)),
            _write(out_dir / RESULTS_MD, lambda tmp: _write_text(tmp, _markdown(cells, settings))),
            *_write_plots(out_dir, cells, plots)]

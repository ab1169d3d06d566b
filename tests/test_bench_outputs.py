"""The benchmark's output writer: results.json round trip, CSV, Markdown tables, PNG plots."""

from __future__ import annotations

import csv
import json
import math
import sys
import warnings

import pytest
from PIL import Image

from tools.compare import outputs
from tools.compare.outputs import COLUMNS, best_per_budget, read_results, write_outputs

SETTINGS = {"model": "digits", "num": 16, "seeds": list(range(16)), "device": "cpu", "dtype": "float32"}
TABLES = ("results.json", "results.csv", "results.md")
PNGS = ("ode_rmse.png", "fd.png", "time_per_sample_s.png")


def cell(sampler, budget, *, schedule="karras", nfe=None, status="ok", **metrics):
    """A cell as the runner makes it; metrics default to None (not measured)."""
    row = {"sampler": sampler, "schedule": schedule, "nfe_budget": budget, "steps": budget,
           "nfe": budget if nfe is None else nfe, "stochastic": sampler.endswith("_a"), "status": status,
           "num": 16, "detector": "digits-cnn" if "fd" in metrics else None}
    return row | {m: metrics.get(m) for m in outputs.METRICS}


def grid() -> list[dict]:
    """Two deterministic samplers (heun uses one NFE less than its budget), a stochastic one without an
    ODE error, one skipped run and one extra key."""
    return [
        cell("euler", 10, ode_rmse=0.0123, fd=5.5, time_per_sample_s=0.002, denoiser_share=0.8),
        cell("euler", 20, ode_rmse=3.1e-3, fd=4.25, time_per_sample_s=0.004, denoiser_share=0.81),
        cell("heun", 10, nfe=9, ode_rmse=1.23e-3, fd=5.0, time_per_sample_s=0.0018, denoiser_share=0.9),
        cell("heun", 20, nfe=19, ode_rmse=1.1e-4, fd=4.5, time_per_sample_s=0.0035, denoiser_share=0.91),
        cell("euler_a", 10, fd=4.0, time_per_sample_s=0.0021, denoiser_share=0.7) | {"seed_offset": 7},
        cell("euler_a", 20, status="skipped: budget below the sampler's minimum", nfe=0),
    ]


def written_names(out_dir) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir())


# ---------------------------------------------------------------------------------------------------
# results.json


def test_round_trip_is_exact_and_strict_json(tmp_path):
    cells = grid()
    cells[0]["ode_rmse"] = 0.1 + 0.2  # a float with a long repr must come back bit for bit
    cells[1]["fd"] = math.nan
    cells[3]["time_per_sample_s"] = math.inf
    write_outputs(tmp_path, cells, settings=SETTINGS, plots=False)

    # strict JSON: no NaN/Infinity tokens; non-finite floats are the strings tools.common.jsonable writes
    record = json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)
    assert record["format"] == "edm-samplers/bench-v1" and record["settings"] == SETTINGS
    assert record["cells"][1]["fd"] == "nan" and record["cells"][3]["time_per_sample_s"] == "inf"

    settings, back = read_results(tmp_path)
    assert settings == SETTINGS
    assert math.isnan(back[1]["fd"]) and back[3]["time_per_sample_s"] == math.inf  # floats again
    back[1]["fd"] = cells[1]["fd"] = None  # nan != nan; everything else compares exactly
    assert back == cells
    assert back[0]["ode_rmse"] == 0.1 + 0.2 and back[4]["ode_rmse"] is None
    assert back[4]["stochastic"] is True and back[0]["stochastic"] is False
    assert back[4]["seed_offset"] == 7


def test_read_results_without_settings_and_when_absent(tmp_path):
    assert read_results(tmp_path) is None
    write_outputs(tmp_path / "new" / "dir", grid(), plots=False)  # the folder is created
    assert read_results(tmp_path / "new" / "dir") == (None, grid())


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "edm-samplers/checkpoint-1"}),
                                  json.dumps({"format": "edm-samplers/bench-v1", "cells": {"a": 1}})])
def test_corrupt_results_name_the_file(tmp_path, text):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ValueError, match="results.json") as info:
        read_results(tmp_path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# results.csv


def test_csv_columns_rows_and_values(tmp_path):
    write_outputs(tmp_path, grid(), plots=False)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [*COLUMNS, "seed_offset"]  # extra keys after the fixed columns
    assert len(rows) == 1 + len(grid())
    heun = dict(zip(rows[0], rows[3]))
    assert heun["sampler"] == "heun" and heun["nfe"] == "9" and float(heun["ode_rmse"]) == 1.23e-3
    euler_a = dict(zip(rows[0], rows[5]))
    assert euler_a["ode_rmse"] == "" and euler_a["seed_offset"] == "7" and euler_a["stochastic"] == "True"


# ---------------------------------------------------------------------------------------------------
# results.md


def markdown_sections(out_dir) -> dict[str, str]:
    """The Markdown's "## " sections by title."""
    parts = (out_dir / "results.md").read_text().split("\n## ")
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts[1:]}


def table_row(section: str, sampler: str) -> list[str]:
    row = next(line for line in section.splitlines() if line.startswith(f"| {sampler} |"))
    return [item.strip() for item in row.strip("|").split("|")]


def test_markdown_tables(tmp_path):
    write_outputs(tmp_path, grid(), settings=SETTINGS, plots=False)
    text = (tmp_path / "results.md").read_text()
    assert "model=digits, num=16, seeds=0-15, device=cpu, dtype=float32" in text
    sections = markdown_sections(tmp_path)
    assert list(sections) == ["ODE error (RMS, lower is better)", "FD (digits-cnn)", "time per sample (ms)",
                              "share of time in the denoiser"]

    ode = sections["ODE error (RMS, lower is better)"]
    assert "| sampler | schedule | NFE 10 | NFE 20 |" in ode
    assert table_row(ode, "euler") == ["euler", "karras", "0.0123", "3.10e-3"]
    assert table_row(ode, "heun") == ["heun", "karras", "**1.23e-3 (9)**", "**1.10e-4 (19)**"]  # NFE used
    assert "| euler_a |" not in ode  # it ran, but has no ODE error

    fd = sections["FD (digits-cnn)"]
    assert table_row(fd, "euler_a") == ["euler_a", "karras", "**4.00**", "—"]  # skipped
    assert "- NFE 10: euler_a / karras, 4.00" in fd and "- NFE 20: euler / karras, 4.25" in fd

    time = sections["time per sample (ms)"]
    assert table_row(time, "heun")[2] == "**1.80 (9)**"  # milliseconds

    share = sections["share of time in the denoiser"]
    assert "**" not in share and "Best per budget" not in share  # informational: nothing is ranked
    assert table_row(share, "euler")[2:] == ["80.0%", "81.0%"]


def test_markdown_leaves_out_metrics_without_values(tmp_path):
    cells = [{**c, "fd": None, "detector": None} for c in grid()]
    write_outputs(tmp_path, cells, plots=False)
    assert not any(title.startswith("FD") for title in markdown_sections(tmp_path))


@pytest.mark.parametrize("value, text", [(0.0123, "0.0123"), (1.23e-3, "1.23e-3"), (3.1, "3.10"),
                                         (100.0, "100"), (999.9, "1.00e3"), (12345.0, "1.23e4"), (0.0, "0"),
                                         (math.nan, "nan")])
def test_compact_numbers(value, text):
    assert outputs._compact(value) == text


def test_best_per_budget_ranks_only_finite_ok_values():
    cells = grid() + [cell("dpm", 10, ode_rmse=math.nan), cell("dpm", 20, status="skipped: x", ode_rmse=1e-9)]
    best = best_per_budget(cells, "ode_rmse")
    assert list(best) == [10, 20] and best[10]["sampler"] == "heun" and best[20]["nfe"] == 19
    assert best_per_budget(cells, "fd")[10]["sampler"] == "euler_a"
    assert best_per_budget([], "fd") == {}


# ---------------------------------------------------------------------------------------------------
# Plots and the files written


def test_plots_are_valid_pngs(tmp_path):
    import matplotlib  # in the test extra: a missing matplotlib fails here rather than skipping

    backend = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    paths = write_outputs(tmp_path, grid(), settings=SETTINGS)
    assert [p.name for p in paths] == [*TABLES, *PNGS]  # no plot of the denoiser share
    for name in PNGS:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0
            image.verify()
    assert matplotlib.get_backend() == backend and ("matplotlib.pyplot" in sys.modules) == pyplot_loaded


def test_non_positive_values_are_left_off_the_log_axes(tmp_path):
    cells = grid()
    for c in cells:  # ODE errors all zero: nothing to plot; FD partly non-positive or nan
        c["ode_rmse"] = 0.0 if c["ode_rmse"] is not None else None
    cells[0]["fd"], cells[1]["fd"] = -0.5, math.nan
    paths = write_outputs(tmp_path, cells)
    assert [p.name for p in paths] == [*TABLES, "fd.png", "time_per_sample_s.png"]


def test_without_matplotlib_the_tables_are_written_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.warns(UserWarning, match=r"pip install 'edm-samplers\[plot\]'") as record:
        paths = write_outputs(tmp_path, grid(), settings=SETTINGS)
    assert len(record) == 1
    assert [p.name for p in paths] == list(TABLES) and written_names(tmp_path) == sorted(TABLES)


def test_plots_false_writes_no_png_and_does_not_warn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_outputs(tmp_path, grid(), plots=False)
        write_outputs(tmp_path / "empty", [])
    assert written_names(tmp_path / "empty") == sorted(TABLES)


@pytest.mark.slow
def test_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    write_outputs(tmp_path, grid(), settings=SETTINGS)
    assert written_names(tmp_path) == sorted([*TABLES, *PNGS])

    def fail(path, cells):
        open(path, "w").write("partial")
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "_write_csv", fail)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path / "failed", grid())
    # results.json is written first and whole; the failed CSV leaves neither a partial file nor a temp
    assert written_names(tmp_path / "failed") == ["results.json"]
    assert read_results(tmp_path / "failed") == (None, grid())


@pytest.mark.slow
def test_plots_of_an_earlier_call_do_not_outlive_their_metric(tmp_path):
    write_outputs(tmp_path, grid())
    cells = [{**c, "fd": None, "detector": None} for c in grid()]
    paths = write_outputs(tmp_path, cells)
    assert "fd.png" not in written_names(tmp_path) and [p.name for p in paths] == [
        *TABLES, "ode_rmse.png", "time_per_sample_s.png"]

"""``--sampler auto``'s tables (``tools.solvers.auto``) and ``edm bench --write-auto``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import samplers
from _support import invoke
from tools import cli
from tools.solvers import auto
from tools.solvers.auto import AutoTableError, auto_choice, auto_dir, load_auto_table, write_auto_table

pytestmark = pytest.mark.usefixtures("one_thread")

FP = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def user_dir(tmp_path, monkeypatch):
    """Every test gets its own user table folder (never ~/.cache) and no shipped tables unless it asks."""
    monkeypatch.setenv("EDM_AUTO_DIR", str(tmp_path / "auto"))
    monkeypatch.setattr(auto, "SHIPPED", tmp_path / "shipped")
    return tmp_path / "auto"


def cell(sampler, schedule, budget, fd=None, ode=None, status="ok", **extra):
    return {"sampler": sampler, "schedule": schedule, "nfe_budget": budget, "steps": budget, "nfe": budget,
            "evaluations": budget, "stochastic": False, "status": status, "num": 64, "ode_rmse": ode,
            "fd": fd, "detector": "digits" if fd is not None else None, **extra}


CELLS = [
    cell("euler", "karras", 5, fd=20.0, ode=0.05), cell("ipndm", "karras", 5, fd=9.0, ode=0.2),
    cell("ipndm_afs", "exponential", 5, fd=6.0, ode=0.3),
    cell("heun", "karras", 5, fd=1.0, status="skipped: x"),
    cell("file:/x/solver.json", "karras", 5, fd=0.5), cell("restart", "karras", 5, fd=0.7),
    cell("euler", "file:/x/tuned.json", 5, fd=0.6),
    cell("euler", "karras", 10, fd=7.0), cell("ipndm", "exponential", 10, fd=float("nan")),
    cell("dpmpp_2m", "karras", 10, fd=5.0),
    cell("heun", "karras", 20, fd=None), cell("unipc", "exponential", 20, fd=4.2),
    cell("euler_ancestral", "karras", 20, fd=4.1, stochastic=True),
]


def test_auto_dir_is_the_environment_or_the_cache(monkeypatch, tmp_path):
    assert auto_dir() == tmp_path / "auto"
    monkeypatch.delenv("EDM_AUTO_DIR")
    assert auto_dir().parts[-3:] == (".cache", "edm-samplers", "auto")


def test_the_table_keeps_the_best_registered_cell_per_budget(user_dir):
    path = write_auto_table(CELLS, model="gm", fingerprint=FP, sampler_options={"dpmpp_2m": {"eta": 0.0}},
                            conditions={"num": 64, "seeds": "0-63", "guidance": None, "unused": 1})
    assert path == user_dir / ("sha256-" + "ab" * 32 + ".json")
    table = load_auto_table(path)
    assert table["format"] == "edm-samplers/auto-v2" and table["model"] == "gm" and table["fingerprint"] == FP
    assert table["metric"] == "fd" and table["conditions"] == {"num": 64, "seeds": "0-63"}
    assert len(table["date"]) == 10
    picked = {row["nfe"]: (row["sampler"], row["schedule"], row["value"]) for row in table["rows"]}
    # skipped cells, file: samplers and schedules, restart (no fixed budget) and NaN never win; a
    # stochastic sampler may
    assert picked == {5: ("ipndm_afs", "exponential", 6.0), 10: ("dpmpp_2m", "karras", 5.0),
                      20: ("euler_ancestral", "karras", 4.1)}
    row10 = next(row for row in table["rows"] if row["nfe"] == 10)
    assert row10["options"] == {"eta": 0.0} and row10["num"] == 64 and row10["metric"] == "fd"
    assert row10["steps"] == 10 and row10["nfe_used"] == 10


def test_without_fd_the_table_ranks_by_ode_error(tmp_path):
    cells = [{**c, "fd": None} for c in CELLS]
    table = load_auto_table(write_auto_table(cells, model="gm", fingerprint=FP, path=tmp_path / "t.json"))
    assert table["metric"] == "ode_rmse"
    assert [(row["nfe"], row["sampler"], row["value"]) for row in table["rows"]] == [(5, "euler", 0.05)]


def test_cells_without_a_quality_metric_give_no_table(tmp_path):
    cells = [{**c, "fd": None, "ode_rmse": None} for c in CELLS]
    with pytest.raises(AutoTableError, match="no cell has a quality metric"):
        write_auto_table(cells, model="gm", fingerprint=FP, path=tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_a_table_grows_budget_by_budget_when_measured_alike(tmp_path):
    """A second --write-auto at other budgets keeps the first run's rows where it did not measure, and
    replaces them where it did; a table measured otherwise (another metric or conditions, or corrupt) is
    replaced whole."""
    path, alike = tmp_path / "t.json", {"num": 64, "seeds": "0-63"}
    write_auto_table(CELLS, model="gm", fingerprint=FP, path=path, conditions=alike)
    later = [cell("deis", "karras", 10, fd=2.0), cell("lms", "karras", 40, fd=3.0)]
    table = load_auto_table(write_auto_table(later, model="gm", fingerprint=FP, path=path, conditions=alike))
    picked = {row["nfe"]: (row["sampler"], row["value"]) for row in table["rows"]}
    assert picked == {5: ("ipndm_afs", 6.0), 10: ("deis", 2.0), 20: ("euler_ancestral", 4.1),
                      40: ("lms", 3.0)}
    assert [row["nfe"] for row in table["rows"]] == [5, 10, 20, 40]
    other = load_auto_table(write_auto_table(later, model="gm", fingerprint=FP, path=path,
                                             conditions={"num": 128, "seeds": "0-127"}))
    assert [row["nfe"] for row in other["rows"]] == [10, 40]
    by_ode = load_auto_table(write_auto_table([{**c, "fd": None, "ode_rmse": 0.1} for c in CELLS], model="gm",
                                              fingerprint=FP, path=path, conditions={"num": 128,
                                                                                     "seeds": "0-127"}))
    assert by_ode["metric"] == "ode_rmse" and 40 not in {row["nfe"] for row in by_ode["rows"]}
    path.write_text("{not json")
    fresh = load_auto_table(write_auto_table(later, model="gm", fingerprint=FP, path=path, conditions=alike))
    assert [row["nfe"] for row in fresh["rows"]] == [10, 40]


def test_auto_picks_what_the_table_says(user_dir):
    path = write_auto_table(CELLS, model="gm", fingerprint=FP)
    exact = auto_choice(FP, 10)
    assert (exact.sampler, exact.schedule, exact.nfe) == ("dpmpp_2m", "karras", 10)
    assert exact.source == f"table {path}" and exact.metric == "fd" and exact.value == 5.0
    below = auto_choice(FP, 19)  # no row at 19: the largest below it (10), run at 19
    assert (below.sampler, below.schedule, below.nfe, below.value) == ("dpmpp_2m", "karras", 19, 5.0)
    assert auto_choice(FP, 1000).sampler == "euler_ancestral"
    assert auto_choice(FP, 5).sampler == "ipndm_afs"
    none_below = auto_choice(FP, 4)  # the table starts at 5
    assert none_below.source == "fallback" and none_below.metric is None and none_below.value is None


def test_the_user_table_comes_before_the_shipped_one(tmp_path, monkeypatch):
    shipped = write_auto_table(CELLS, model="gm", fingerprint=FP, path=tmp_path / "shipped" / "gm.json")
    write_auto_table([cell("lms", "karras", 5, fd=3.0), cell("other", "karras", 3, fd=1.0)], model="other",
                     fingerprint="sha256:" + "cd" * 32, path=tmp_path / "shipped" / "a_other.json")
    assert auto_choice(FP, 10).source == f"table {shipped}"  # matched by fingerprint, not file name
    user = write_auto_table([cell("deis", "karras", 10, fd=3.0)], model="gm", fingerprint=FP)
    assert (auto_choice(FP, 10).sampler, auto_choice(FP, 10).source) == ("deis", f"table {user}")
    # a budget the user's table has no row for: the shipped table's measurement, before the fallback
    assert (auto_choice(FP, 5).sampler, auto_choice(FP, 5).source) == ("ipndm_afs", f"table {shipped}")
    assert auto_choice(FP, 3).source == "fallback"


def test_the_fallback_rule_runs_at_every_budget():
    picks = {nfe: auto_choice(FP, nfe) for nfe in range(1, 101)}
    for nfe, choice in picks.items():
        assert choice.source == "fallback" and choice.options == {} and choice.nfe == nfe
        assert samplers.steps_for_nfe(choice.sampler, nfe) >= 1
        assert choice.schedule in samplers.schedules.list()
    assert {(picks[n].sampler, picks[n].schedule) for n in range(1, 30)} == {("ipndm", "exponential")}
    assert {(picks[n].sampler, picks[n].schedule) for n in range(30, 101)} == {("unipc", "exponential")}


@pytest.mark.parametrize("nfe", [0, -3, 2.5, "10", True, None])
def test_the_budget_must_be_a_positive_integer(nfe):
    with pytest.raises(ValueError, match="positive integer") as e:
        auto_choice(FP, nfe)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, why", [
    ("{not json", "corrupt auto table"), ('{"format": "edm-samplers/bench-v1"}', "is not an edm-samplers"),
    ('{"format": "edm-samplers/auto-v1", "rows": []}', "no model fingerprint"),
    ('{"format": "edm-samplers/auto-v1", "fingerprint": "x", "rows": {}}', "rows are not a list"),
    ('{"format": "edm-samplers/auto-v1", "fingerprint": "x", "rows": [{"nfe": 0}]}', "not a positive"),
    ('{"format": "edm-samplers/auto-v1", "fingerprint": "x", "rows": [{"nfe": 3, "sampler": "euler"}]}',
     "no schedule"),
    ('{"format": "edm-samplers/auto-v1", "fingerprint": "x", "rows": [{"nfe": 3, "sampler": "euler", '
     '"schedule": "karras", "value": "low"}]}', "not a number"),
])
def test_a_corrupt_table_is_a_one_line_error(tmp_path, text, why):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(AutoTableError, match=why) as e:
        load_auto_table(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and isinstance(e.value, ValueError)


def test_a_corrupt_user_table_is_reported_not_skipped(user_dir):
    user_dir.mkdir(parents=True)
    (user_dir / auto.table_name(FP)).write_text("{")
    with pytest.raises(AutoTableError, match="corrupt auto table"):
        auto_choice(FP, 10)


def test_the_shipped_digits_table_is_for_the_digits_weights(monkeypatch):
    from tools.models import load_model
    from tools.solvers.file import fingerprint

    monkeypatch.setattr(auto, "SHIPPED", Path(auto.__file__).parent / "auto_tables")
    path = auto.SHIPPED / "digits.json"
    table = load_auto_table(path)
    digits = fingerprint(load_model("digits").denoiser)
    assert table["fingerprint"] == digits and table["model"] == "digits" and table["metric"] == "fd"
    for row in table["rows"]:
        choice = auto_choice(digits, row["nfe"])
        assert (choice.sampler, choice.schedule) == (row["sampler"], row["schedule"])
        assert choice.value == row["value"] and choice.nfe == row["nfe"]
        assert choice.source == f"table {path}" and samplers.steps_for_nfe(choice.sampler, row["nfe"]) >= 1
    # a bfloat16 load of the same weights has another fingerprint, which the table lists
    half = fingerprint(load_model("digits", dtype=torch.bfloat16).denoiser)
    assert half != digits and auto_choice(half, 5).source == f"table {path}"


def test_a_user_table_serves_the_other_fingerprints_it_lists(user_dir):
    half = "sha256:" + "ef" * 32
    path = write_auto_table(CELLS, model="gm", fingerprint=FP, fingerprints=[FP, half])
    assert load_auto_table(path)["fingerprints"] == [FP, half]
    (user_dir / "unreadable.json").write_text("{")  # another model's broken table is not this one's error
    choice = auto_choice(half, 10)
    assert (choice.sampler, choice.source) == ("dpmpp_2m", f"table {path}")
    assert auto_choice("sha256:" + "01" * 32, 10).source == "fallback"


def edm(*args):
    return invoke(cli.main, "bench", *map(str, args), "--device", "cpu", "--no-progress")


@pytest.mark.slow
def test_bench_writes_the_auto_table_of_the_model(tmp_path, user_dir):
    from tools.models import load_model
    from tools.solvers.file import fingerprint

    result = edm("--sampler", "euler,ipndm", "--nfe", "3,4", "--metrics", "fd", "--num", 4, "--option",
                 "euler.s_noise=1.0", "--out", tmp_path / "out", "--write-auto")
    assert result.exit_code == 0, result.output
    digits = fingerprint(load_model("digits").denoiser)
    path = user_dir / auto.table_name(digits)
    assert result.output.splitlines()[-1] == f"auto table -> {path}"
    table = load_auto_table(path)
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    for row in table["rows"]:
        best = min((c for c in cells if c["nfe_budget"] == row["nfe"]), key=lambda c: c["fd"])
        assert (row["sampler"], row["schedule"], row["value"]) == (best["sampler"], "karras", best["fd"])
        assert math.isfinite(row["value"]) and row["num"] == 4
        assert row["options"] == ({"s_noise": 1.0} if row["sampler"] == "euler" else {})
    assert [row["nfe"] for row in table["rows"]] == [3, 4] and table["conditions"]["num"] == 4
    assert table["fingerprints"][0] == digits and len(table["fingerprints"]) == 3
    assert auto_choice(digits, 4).source == f"table {path}"


@pytest.mark.parametrize("args, flag", [
    (["--metrics", "time"], "--metrics"), (["--rho", "5"], "--rho"), (["--sigma-max", "10"], "--sigma-max"),
])
def test_bench_write_auto_refuses_what_auto_cannot_rerun(tmp_path, user_dir, args, flag):
    result = edm("--sampler", "euler", "--nfe", "3", "--num", 2, *args, "--out", tmp_path / "out",
                 "--write-auto")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and lines[-1].startswith("Error: ") and flag in lines[-1]
    assert not user_dir.exists() and not (tmp_path / "out" / "results.json").exists()

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
    from tools.solvers import auto_rows
    from tools.solvers.file import fingerprint

    monkeypatch.setattr(auto, "SHIPPED", Path(auto.__file__).parent / "auto_tables")
    path = auto.SHIPPED / "digits.json"
    table = load_auto_table(path)
    digits = fingerprint(load_model("digits").denoiser)
    assert table["fingerprint"] == digits and table["model"] == "digits" and table["metric"] == "fd"
    assert table["format"] == "edm-samplers/auto-v2" and table["conditions"]["num"] == 1000
    for nfe in {row["nfe"] for row in table["rows"]}:
        # the best row measured at the budget, of those auto takes by default (not a student's)
        best = auto_rows.resolved(min((row for row in table["rows"] if row["nfe"] == nfe
                                       and auto_rows.kind_of(row) != "model"), key=lambda row: row["value"]),
                                  path.parent)
        choice = auto_choice(digits, nfe)
        assert (choice.sampler, choice.schedule) == (best["sampler"], best["schedule"])
        assert choice.value == best["value"] and choice.nfe == nfe and choice.sample_size == 1000
        assert choice.source == f"table {path}"
    # a bfloat16 load of the same weights has another fingerprint, which the table lists
    half = fingerprint(load_model("digits", dtype=torch.bfloat16).denoiser)
    assert half != digits and auto_choice(half, 5).source == f"table {path}"


def test_generate_with_auto_at_4_nfe_runs_the_shipped_fitted_solver(tmp_path, monkeypatch):
    # at 4 NFE the fitted solver is the shipped table's best (at 5, the student digits-pd4 is)
    monkeypatch.setattr(auto, "SHIPPED", Path(auto.__file__).parent / "auto_tables")
    solver = auto.SHIPPED / "digits" / "digits-4.json"
    result = generate(tmp_path / "out", "--model", "digits", "--sampler", "auto", "--nfe", 4)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "edm-generate.json").read_text())
    assert record["sampler"] == f"file:{solver}" and record["schedule"] == "fitted"
    assert record["auto"]["kind"] == "solver"
    assert record["auto"]["source"] == f"table {auto.SHIPPED / 'digits.json'}"
    fitted = json.loads(solver.read_text())
    assert record["sigmas"] == fitted["sigmas"] and record["weights"] == fitted["weights"]


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


# ----------------------------------------------------------------------------------------------
# Rows of every kind (format v2): tuned schedule files, fitted solver files, students


def v2_table(folder: Path, rows: list[dict], fingerprint: str = FP, name: str = "t.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"format": "edm-samplers/auto-v2", "model": "gm", "fingerprint": fingerprint,
                                "metric": "fd", "rows": rows}))
    return path


def row(nfe, sampler, schedule, value, **extra):
    return {"nfe": nfe, "sampler": sampler, "schedule": schedule, "options": {}, "metric": "fd",
            "value": value, "num": 1000, "sample_size": 1000, **extra}


@pytest.fixture
def shipped_files(tmp_path):
    """A fitted solver and a tuned schedule beside a shipped table (the files' contents are read where the
    pick runs, not by the lookup)."""
    from tools.schedules.file import save_schedule

    files = tmp_path / "shipped" / "gm"
    files.mkdir(parents=True)
    (files / "solver-5.json").write_text("{}")
    save_schedule(files / "ipndm-5.json", [80.0, 5.0, 1.0, 0.2, 0.01, 0.0], sampler="ipndm")
    return files


KINDS_ROWS = [row(3, "euler", "karras", 30.0),
              row(5, "ipndm", "kl_optimal", 3.3), row(5, "ipndm", "file:gm/ipndm-5.json", 2.7),
              row(5, "file:gm/solver-5.json", "fitted", 2.1),
              row(5, "euler", "karras", 1.5, model="digits-weak", steps=2),
              row(8, "deis", "kl_optimal", 2.0)]


def test_each_row_kind_is_looked_up(tmp_path, shipped_files):
    path = v2_table(tmp_path / "shipped", KINDS_ROWS)
    assert load_auto_table(path)["format"] == "edm-samplers/auto-v2"
    # a model row is taken only when the caller accepts it; then it is the best at 5 NFE
    student = auto_choice(FP, 5, accept=lambda choice: True)
    assert (student.kind, student.model, student.sampler, student.steps, student.value) == \
        ("model", "digits-weak", "euler", 2, 1.5)
    assert auto_choice(FP, 6, accept=lambda choice: True).model == "digits-weak"  # 2 NFE fit in 6
    solver = auto_choice(FP, 5)  # the default passes model rows over
    assert (solver.kind, solver.sampler, solver.schedule, solver.value) == \
        ("solver", f"file:{shipped_files / 'solver-5.json'}", "fitted", 2.1)  # relative to the table
    no_solver = auto_choice(FP, 5, accept=lambda choice: choice.kind in ("registry", "schedule"))
    assert (no_solver.kind, no_solver.sampler, no_solver.schedule) == \
        ("schedule", "ipndm", f"file:{shipped_files / 'ipndm-5.json'}")
    # at 6 NFE the solver (5 NFE only) cannot run: the next best row of 5 that runs at 6
    six = auto_choice(FP, 6)
    assert (six.kind, six.sampler, six.nfe) == ("schedule", "ipndm", 6)
    registry = auto_choice(FP, 5, accept=lambda choice: choice.kind == "registry")
    assert (registry.sampler, registry.schedule, registry.value) == ("ipndm", "kl_optimal", 3.3)
    assert auto_choice(FP, 4).sampler == "euler" and auto_choice(FP, 9).sampler == "deis"
    # nothing accepted at or below the budget: the fallback rule
    assert auto_choice(FP, 5, accept=lambda choice: False).source == "fallback"


def test_an_absolute_file_path_is_used_as_it_is(tmp_path, shipped_files, user_dir):
    solver = shipped_files / "solver-5.json"
    v2_table(user_dir, [row(5, f"file:{solver}", "fitted", 2.0)], name=auto.table_name(FP))
    assert auto_choice(FP, 5).sampler == f"file:{solver}"


def test_a_v1_table_is_still_read(user_dir):
    user_dir.mkdir(parents=True)
    path = user_dir / auto.table_name(FP)
    path.write_text(json.dumps({"format": "edm-samplers/auto-v1", "fingerprint": FP, "metric": "fd", "rows": [
        row(4, "deis", "karras", 9.0), row(8, "file:/nowhere/solver.json", "karras", 1.0)]}))
    choice = auto_choice(FP, 10)  # a v1 row naming a file never ran: the registered row below it does
    assert (choice.sampler, choice.schedule, choice.kind, choice.source) == ("deis", "karras", "registry",
                                                                            f"table {path}")


@pytest.mark.parametrize("bad, why", [
    (row(5, "ipndm", "file:", 2.0), "schedule file"),
    (row(5, "file:gm/ipndm-5.json", "file:gm/ipndm-5.json", 2.0), "must be 'fitted'"),
    (row(5, "file:gm/solver-5.json", "karras", 2.0), "must be 'fitted'"),
    (row(5, "file:gm/solver-5.json", "fitted", 2.0, nfe_used=6), "nfe_used"),
    (row(5, "euler", "karras", 2.0, model=""), "not a model name"),
    (row(5, "euler", "karras", 2.0, model="digits-weak"), "steps"),
    (row(5, "euler", "karras", 2.0, model="digits-weak", steps=0), "steps"),
    (row(5, "euler", "karras", 2.0, model="digits-weak", steps=6), "does not run within NFE 5"),
    (row(5, "file:gm/solver-5.json", "karras", 2.0, model="digits-weak", steps=2), "registered sampler"),
    (row(5, "euler", "karras", 2.0, model="digits-weak", steps=2, rho=-1), "rho is -1"),
    (row(5, "ipndm", "karras", "low"), "not a number"),
])
def test_a_corrupt_row_of_each_kind_is_a_one_line_error(tmp_path, shipped_files, bad, why):
    path = v2_table(tmp_path / "shipped", [KINDS_ROWS[1], bad])
    with pytest.raises(AutoTableError, match=why) as e:
        load_auto_table(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "row of NFE 5" in str(e.value)


@pytest.mark.parametrize("missing", [row(5, "file:gm/gone.json", "fitted", 2.0),
                                     row(5, "ipndm", "file:gm/gone.json", 2.0)])
def test_a_row_whose_file_is_missing_names_it(tmp_path, shipped_files, missing):
    path = v2_table(tmp_path / "shipped", [missing])
    with pytest.raises(AutoTableError) as e:
        auto_choice(FP, 5)  # a shipped table's error is reported, not skipped
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert str(shipped_files / "gone.json") in str(e.value) and "missing" in str(e.value)


def test_several_rows_at_one_nfe_are_written_and_kept_by_rank(tmp_path, shipped_files):
    path = auto.save_auto_table(KINDS_ROWS, model="gm", fingerprint=FP, metric="fd",
                                path=tmp_path / "shipped" / "t.json", conditions={"num": 1000})
    table = load_auto_table(path)
    assert table["rows"] == KINDS_ROWS and table["conditions"] == {"num": 1000}
    with pytest.raises(AutoTableError, match="missing"):  # a table that could not be read back: not written
        auto.save_auto_table([row(5, "file:gm/gone.json", "fitted", 2.0)], model="gm", fingerprint=FP,
                             metric="fd", path=tmp_path / "shipped" / "u.json")
    assert not (tmp_path / "shipped" / "u.json").exists()


TINY = {"in_channels": 1, "resolution": 8, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
        "attn_resolutions": []}


def tiny_checkpoint(path: Path, seed: int, num_classes: int = 3, **config) -> str:
    from edm.checkpoint import save_checkpoint
    from edm.networks import build_network

    torch.manual_seed(seed)
    kwargs = {**TINY, "num_classes": num_classes}
    net = build_network("unet", **kwargs)
    with torch.no_grad():  # a fresh UNet's output convolution is zero: make it say something
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(path, net, {"network": {"name": "unet", "kwargs": kwargs},
                                "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
                                "data": {"shape": [1, 8, 8], "num_classes": num_classes}, **config})
    return str(path)


@pytest.fixture
def teacher(tmp_path, user_dir):
    """A teacher whose record names two students (one of other classes), and its table: a registry row,
    and rows running each student, the better first, the one of other classes the best."""
    from tools.models import load_model
    from tools.solvers.file import fingerprint

    student = tiny_checkpoint(tmp_path / "student", seed=1)
    other = tiny_checkpoint(tmp_path / "other", seed=2, num_classes=5)
    unnamed = tiny_checkpoint(tmp_path / "unnamed", seed=3)
    path = tiny_checkpoint(tmp_path / "teacher", seed=0, students=["student", str(tmp_path / "other")])
    # the student runs on the range it records (a distilled student's levels are those it learned)
    rows = [row(3, "ipndm", "karras", 9.0),
            row(3, "euler", "karras", 2.0, model=student, steps=2, sigma_min=0.05, rho=5.0),
            row(3, "euler", "karras", 1.0, model=other, steps=2),
            row(3, "euler", "karras", 0.5, model=unnamed, steps=3)]
    v2_table(user_dir, rows, fingerprint(load_model(path).denoiser), name="teacher.json")
    return path, student


def generate(out: Path, *args):
    return invoke(cli.main, "generate", "--seeds", "0-3", "--outdir", out, "--device", "cpu", "--no-progress",
                  *map(str, args))


def test_a_model_row_runs_the_student_it_names(tmp_path, teacher):
    path, student = teacher
    result = generate(tmp_path / "auto", "--model", path, "--sampler", "auto", "--nfe", 3)
    assert result.exit_code == 0, result.output
    # the student of other classes and the one the record does not name are passed over
    said = [line for line in result.output.splitlines() if "runs student" in line]
    assert len(said) == 1 and said[0].startswith(f"--sampler auto at NFE 3: runs student {student} (euler")
    record = json.loads((tmp_path / "auto" / "edm-generate.json").read_text())
    assert record["model"] == student and record["auto"]["model"] == student
    assert record["auto"]["asked_model"] == path and record["auto"]["kind"] == "model"
    assert (record["sampler"], record["steps"], record["schedule_options"]) == ("euler", 2, {"rho": 5.0})
    assert record["sigmas"][-2] == pytest.approx(0.05)
    direct = generate(tmp_path / "direct", "--model", student, "--sampler", "euler", "--steps", 2,
                      "--sigma-min", 0.05, "--rho", 5)
    assert direct.exit_code == 0, direct.output
    images = sorted(p.name for p in (tmp_path / "direct").rglob("*.png"))
    assert len(images) == 4 and images == sorted(p.name for p in (tmp_path / "auto").rglob("*.png"))
    for name in images:  # the same bytes per seed as running the student itself
        assert next((tmp_path / "auto").rglob(name)).read_bytes() == next((tmp_path / "direct").rglob(name)) \
            .read_bytes()


def test_guidance_or_steering_passes_the_student_over(tmp_path, teacher):
    path, _ = teacher
    for extra in (["--guidance", 1.0], ["--threshold", "static"], ["--sigma-max", 40]):
        out = tmp_path / extra[0].strip("-")
        result = generate(out, "--model", path, "--sampler", "auto", "--nfe", 3, "--class", 1, *extra)
        assert result.exit_code == 0, result.output
        record = json.loads((out / "edm-generate.json").read_text())
        assert "runs student" not in result.output and record["model"] == path
        assert (record["sampler"], record["auto"]["kind"]) == ("ipndm", "registry")

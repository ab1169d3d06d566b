"""Rough edges of fitted solver files, schedule files and ``--sampler auto``'s tables, as a new user meets
them: each mistake is one ``Error:`` line naming the flag typed, exit 2, nothing written. Solver files are
written by hand here (the format of ``tools.solvers.file``), not fitted, to keep the tests fast."""

from __future__ import annotations

import json

import pytest

from _support import assert_usage_error, invoke
from tools.compare import cli as bench_cli
from tools.generate import cli as generate_cli
from tools.solvers import auto
from tools.solvers.auto import auto_choice, write_auto_table
from tools.solvers.file import FORMAT, fingerprints

pytestmark = pytest.mark.usefixtures("one_thread")

# five levels of the digits model's range, then 0; identity weights make the solver DDIM on them
SIGMAS = [80.0, 5.0, 1.0, 0.3, 0.004, 0.0]


def identity(count: int = len(SIGMAS) - 1) -> list[list[float]]:
    return [[float(i == j) for j in range(count)] for i in range(count)]


@pytest.fixture(scope="module")
def prints(digits_model) -> list[str]:
    return fingerprints(digits_model.denoiser)


@pytest.fixture
def solver_file(tmp_path, prints):
    """``solver_file(name, **record)``: a 5-NFE solver file for digits, ``record`` changing its keys."""

    def write(name="s.json", **changes):
        record = {"format": FORMAT, "nfe": len(SIGMAS) - 1, "sigmas": SIGMAS, "weights": identity(),
                  "afs": False, "model": "digits", "model_fingerprint": prints[0],
                  "model_fingerprints": prints, "guidance": 0.0, **changes}
        path = tmp_path / name
        path.write_text(json.dumps(record))  # NaN / Infinity as Python's json writes them
        return path

    return write


def generate(tmp_path, *args):
    return invoke(generate_cli.generate, "--seeds", 0, "--outdir", tmp_path / "out", "--device", "cpu",
                  "--no-progress", *args)


def bench(tmp_path, *args):
    return invoke(bench_cli.bench, "--metrics", "ode", "--num", 1, "--out", tmp_path / "bench", "--device",
                  "cpu", "--no-progress", *args)


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists() and not (tmp_path / "bench").exists()


# ---------------------------------------------------------------------------------------------------
# 1. The thresholding a solver was fitted with


def test_a_solver_fitted_with_dynamic_thresholding_refuses_static(tmp_path, solver_file):
    path = solver_file(steering={"threshold": "dynamic"})
    result = generate(tmp_path, "--sampler", f"file:{path}", "--threshold", "static")
    assert_usage_error(result, "'--threshold'", "fitted with --threshold dynamic", "not --threshold static")
    assert_nothing_written(tmp_path)


def test_a_solver_fitted_without_thresholding_refuses_one(tmp_path, solver_file):
    result = generate(tmp_path, "--sampler", f"file:{solver_file()}", "--threshold", "dynamic")
    assert_usage_error(result, "'--threshold'", "fitted without --threshold")
    assert_nothing_written(tmp_path)


def test_a_solver_fitted_with_a_percentile_refuses_another(tmp_path, solver_file):
    path = solver_file(steering={"threshold": "dynamic", "threshold_percentile": 0.9})
    result = generate(tmp_path, "--sampler", f"file:{path}", "--threshold", "dynamic")
    assert_usage_error(result, "'--threshold'", "--threshold-percentile 0.9", "0.995")
    assert_nothing_written(tmp_path)


def test_generate_samples_with_the_fitted_thresholding_when_none_is_given(tmp_path, solver_file):
    path = solver_file(steering={"threshold": "dynamic", "threshold_percentile": 0.9})
    result = generate(tmp_path, "--sampler", f"file:{path}")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "edm-generate.json").read_text())
    steering = record["steering"]
    assert (steering["threshold"], steering["threshold_percentile"]) == ("dynamic", 0.9)
    assert steering["x0_threshold"] == {"kind": "dynamic", "percentile": 0.9}  # what the run applied


def test_bench_refuses_a_thresholding_mismatch(tmp_path, solver_file):
    # edm bench runs every cell with one steering, and refuses a guidance mismatch alike
    path = solver_file(steering={"threshold": "dynamic"})
    result = bench(tmp_path, "--sampler", f"file:{path}", "--nfe", 5)
    assert_usage_error(result, "'--threshold'", "fitted with --threshold dynamic")
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 2. edm bench at budgets a solver cannot run at


def test_bench_refuses_a_solver_that_fits_none_of_the_budgets(tmp_path, solver_file):
    path = solver_file()
    result = bench(tmp_path, "--sampler", f"file:{path},euler", "--nfe", "3,4")
    assert_usage_error(result, "'--nfe'", "runs at 5 NFE", "not at 3 or 4", "--nfe 5")
    assert_nothing_written(tmp_path)


def test_bench_runs_a_solver_among_other_budgets(tmp_path, solver_file):
    path = solver_file()
    result = bench(tmp_path, "--sampler", f"file:{path}", "--nfe", "3,5")
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "bench" / "results.json").read_text())["cells"]
    assert {c["nfe_budget"]: c["status"] for c in cells} == {3: "skipped: fitted for 5 NFE", 5: "ok"}


# ---------------------------------------------------------------------------------------------------
# 3. The schedule flags a solver's own levels leave no room for


@pytest.mark.parametrize("flag, value", [("--sigma-min", 0.01), ("--sigma-max", 10), ("--rho", 5)])
def test_a_range_flag_with_a_solver_names_that_flag(tmp_path, solver_file, flag, value):
    result = generate(tmp_path, "--sampler", f"file:{solver_file()}", flag, value)
    line = assert_usage_error(result, f"'{flag}'", f"drop {flag}", "its own noise levels")
    assert "--schedule" not in line
    assert_nothing_written(tmp_path)


def test_bench_of_solver_files_alone_refuses_a_range_flag(tmp_path, solver_file):
    result = bench(tmp_path, "--sampler", f"file:{solver_file()}", "--nfe", 5, "--sigma-min", 0.01)
    assert_usage_error(result, "'--sigma-min'", "drop --sigma-min")
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 4. Numbers that are not finite


@pytest.mark.parametrize("key, where, bad, said", [
    ("weights", (2, 1), float("nan"), "weights[2][1] is nan"),
    ("weights", (4, 0), float("inf"), "weights[4][0] is inf"),
    ("sigmas", (1,), float("nan"), "sigmas[1] is nan"),
])
def test_a_non_finite_number_is_named_where_it_is(tmp_path, solver_file, key, where, bad, said):
    record = {"sigmas": list(SIGMAS), "weights": identity()}
    target = record[key]
    for index in where[:-1]:
        target = target[index]
    target[where[-1]] = bad
    path = solver_file(**record)
    line = assert_usage_error(generate(tmp_path, "--sampler", f"file:{path}"), "'--sampler'", said)
    assert "shape" not in line
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 5. A directory given as a file


@pytest.mark.parametrize("flag", ["--sampler", "--schedule"])
def test_a_directory_is_not_a_file(tmp_path, flag):
    folder = tmp_path / "folder"
    folder.mkdir()
    result = generate(tmp_path, flag, f"file:{folder}")
    line = assert_usage_error(result, f"'{flag}'", f"{folder} is a directory, not a file")
    assert "not found" not in line
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Messages that showed a Python list or an option without its --


def test_bench_refuses_sampler_options_for_solver_files_alone(tmp_path, solver_file):
    result = bench(tmp_path, "--sampler", f"file:{solver_file()}", "--nfe", 5, "--eta", 1)
    line = assert_usage_error(result, "takes no sampler options", "--eta")
    assert "samplers  has" not in line
    assert_nothing_written(tmp_path)


def test_bench_option_for_a_solver_file_names_the_option(tmp_path, solver_file):
    path = solver_file()
    result = bench(tmp_path, "--sampler", f"file:{path}", "--nfe", 5, "--option", f"file:{path}.eta=1")
    assert_usage_error(result, "'--sampler'", "takes no sampler options (got --eta)")
    assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 6. Auto tables measured on few images


FP = "sha256:" + "ab" * 32


@pytest.fixture
def tables(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM_AUTO_DIR", str(tmp_path / "auto"))
    monkeypatch.setattr(auto, "SHIPPED", tmp_path / "shipped")
    return tmp_path


def cell(sampler, budget, fd, num):
    return {"sampler": sampler, "schedule": "karras", "nfe_budget": budget, "steps": budget, "nfe": budget,
            "stochastic": False, "status": "ok", "num": num, "fd": fd}


def test_the_written_table_records_its_sample_size(tables):
    fd = auto.load_auto_table(write_auto_table([cell("euler", 5, 9.0, 16)], model="gm", fingerprint=FP,
                                               conditions={"num": 16}))
    assert fd["rows"][0]["sample_size"] == 16
    ode = auto.load_auto_table(write_auto_table([{**cell("euler", 5, None, 16), "ode_rmse": 0.1}], model="gm",
                                                fingerprint=FP, conditions={"num": 16, "ode_num": 4}))
    assert ode["rows"][0]["sample_size"] == 4  # the ode metric is measured on the first ode_num seeds


def test_a_table_of_few_images_does_not_override_a_better_measured_one(tables):
    shipped = write_auto_table([cell("ipndm", 5, 6.0, 512)], model="gm", fingerprint=FP,
                               path=tables / "shipped" / "gm.json", conditions={"num": 512})
    user = write_auto_table([cell("euler", 5, 120.0, 16)], model="gm", fingerprint=FP, conditions={"num": 16})
    choice = auto_choice(FP, 5)
    assert (choice.sampler, choice.source, choice.sample_size) == ("ipndm", f"table {shipped}", 512)
    assert f"{user}" in choice.note and "16 images" in choice.note and "512" in choice.note


def test_a_better_measured_user_table_wins_without_a_note(tables):
    write_auto_table([cell("ipndm", 5, 6.0, 512)], model="gm", fingerprint=FP,
                     path=tables / "shipped" / "gm.json", conditions={"num": 512})
    user = write_auto_table([cell("euler", 5, 5.0, 1024)], model="gm", fingerprint=FP,
                            conditions={"num": 1024})
    choice = auto_choice(FP, 5)
    assert (choice.sampler, choice.source, choice.note) == ("euler", f"table {user}", None)


def test_an_old_table_without_a_size_still_reads(tables):
    path = tables / "auto" / auto.table_name(FP)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": auto.FORMAT, "fingerprint": FP, "metric": "ode_rmse", "rows": [
        {"nfe": 5, "sampler": "euler", "schedule": "karras", "value": 0.1}]}))
    choice = auto_choice(FP, 5)
    assert (choice.sampler, choice.source, choice.sample_size, choice.note) == ("euler", f"table {path}",
                                                                                None, None)


def test_generate_warns_when_a_small_table_is_passed_over(tmp_path, tables, prints):
    write_auto_table([cell("ipndm", 5, 6.0, 512)], model="digits", fingerprint=prints[0],
                     path=tables / "shipped" / "digits.json", conditions={"num": 512})
    write_auto_table([cell("euler", 5, 120.0, 16)], model="digits", fingerprint=prints[0],
                     conditions={"num": 16})
    result = generate(tmp_path, "--sampler", "auto", "--nfe", 5)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "16 images" in warnings[0], result.output
    record = json.loads((tmp_path / "out" / "edm-generate.json").read_text())
    assert record["sampler"] == "ipndm"

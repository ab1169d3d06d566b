"""A folder's record of how its images were made: a rerun with other settings is refused in one line naming
what differs; --overwrite (or another folder) is the way out; the same settings resume."""

from __future__ import annotations

import json

import pytest

from _support import assert_usage_error, invoke, plan_of
from tools.common import BadInput
from tools.generate.cli import generate
from tools.generate.record import RECORD_NAME, differences

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--no-progress", "--device", "cpu", "--steps", 3, "--seeds", "0-3"]


def run(*args):
    return invoke(generate, *BASE, *args, catch_exceptions=False)


def listing(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("record") / "out"
    result = run("--outdir", out)
    assert result.exit_code == 0, result.output
    return out


def test_the_record_names_the_settings(made):
    record = json.loads((made / RECORD_NAME).read_text())
    assert record["format"] == "edm-samplers/generate-v1"
    assert {k: record[k] for k in ("model", "sampler", "steps", "schedule", "class", "guidance",
                                   "dtype")} == {
        "model": "digits", "sampler": "heun", "steps": 3, "schedule": "karras", "class": None,
        "guidance": 0.0,
        "dtype": "float32"}
    assert len(record["sigmas"]) == 4 and record["sigmas"][-1] == 0


@pytest.mark.parametrize("change, named", [
    (["--sampler", "euler"], "sampler heun -> euler"),
    (["--class", 3], "class none -> 3"),
    (["--guidance", 1], "guidance 0 -> 1"),
    (["--s-churn", 10], "options none -> {s_churn=10}"),
    (["--schedule", "exponential"], "schedule karras -> exponential"),
    (["--sigma-max", 40], "sigma levels differ"),
])
def test_a_rerun_with_other_settings_is_refused_naming_what_differs(made, change, named):
    before = listing(made)
    result = run("--outdir", made, *change)
    assert_usage_error(result, named, "--overwrite")
    assert listing(made) == before  # nothing written


def test_the_same_settings_resume_and_a_new_step_count_is_named(made):
    result = run("--outdir", made)
    assert result.exit_code == 0 and "0 images written, 4 skipped" in result.output
    result = invoke(generate, "--no-progress", "--device", "cpu", "--steps", "4", "--seeds",
                    "0-3",
                    "--outdir", str(made))
    assert result.exit_code == 2 and "steps 3 -> 4" in result.output


@pytest.mark.slow
def test_overwrite_replaces_the_images_and_the_record(tmp_path):
    out = tmp_path / "out"
    assert run("--outdir", out).exit_code == 0
    result = run("--outdir", out, "--sampler", "euler", "--overwrite")
    assert result.exit_code == 0 and "4 images written" in result.output, result.output
    assert json.loads((out / RECORD_NAME).read_text())["sampler"] == "euler"
    assert run("--outdir", out, "--sampler", "euler").exit_code == 0  # now the record says euler


def test_the_library_refuses_too(made):
    with pytest.raises(BadInput) as error:
        plan_of("digits", "0-3", made, sampler="euler", steps=3, device="cpu")
    assert error.value.param == "outdir" and "sampler heun -> euler" in str(error.value)


def test_differences_list_each_setting_once():
    old = {"sampler": "heun", "steps": 3, "sigmas": [1.0, 0.0], "options": {}}
    new = {"sampler": "heun", "steps": 4, "sigmas": [1.0, 0.5, 0.0], "options": {"eta": 1.0}}
    assert differences(old, new) == ["steps 3 -> 4", "options none -> {eta=1}"]
    assert differences(old, old) == []

"""Schedule files (tools.schedules.file) and `edm generate --schedule file:PATH`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import _support
from _support import assert_schedule
from samplers import schedules
from tools import generate as pipeline
from tools.generate import cli as generate_cli
from tools.schedules.file import FORMAT, ScheduleFileError, file_path, load_schedule, save_schedule


def karras(steps: int) -> torch.Tensor:
    return schedules.get("karras")(steps, 0.002, 80.0)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.Tensor]:
    sigmas = karras(7)
    return save_schedule(tmp_path / "tuned.json", sigmas, sampler="heun", nfe=13, error=0.5), sigmas


# ---------------------------------------------------------------------------------------------------
# Writing and reading


def test_round_trip(saved):
    path, sigmas = saved
    loaded = load_schedule(path)
    assert loaded.path == path and loaded.steps == 7
    assert loaded.sigmas.dtype == torch.float64 and torch.equal(loaded.sigmas, sigmas)
    assert loaded.metadata == {"sampler": "heun", "nfe": 13, "error": 0.5}
    record = json.loads(path.read_text())
    assert record["format"] == FORMAT and record["sigmas"] == sigmas.tolist()
    assert not list(path.parent.glob(".*.tmp"))


def test_save_takes_any_float_sequence(tmp_path):
    path = save_schedule(tmp_path / "s.json", [80.0, 1.0, 0.0])
    assert load_schedule(path).sigmas.tolist() == [80.0, 1.0, 0.0]
    path = save_schedule(tmp_path / "s32.json", torch.tensor([80.0, 0.5, 0.0], dtype=torch.float32))
    assert load_schedule(path).sigmas.tolist() == [80.0, 0.5, 0.0]


def test_exact_at_its_own_step_count(saved):
    path, sigmas = saved
    loaded = load_schedule(path)
    steps = loaded(7)
    assert torch.equal(steps, sigmas)
    steps[1] = 1.0  # a copy: the file's levels stay as read
    assert torch.equal(loaded.sigmas, sigmas)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 8, 13, 40])
def test_resampled_to_other_step_counts_keeping_the_ends(saved, n):
    path, sigmas = saved
    resampled = load_schedule(path)(n)
    assert_schedule(resampled, n)
    assert resampled[0] == sigmas[0]
    if n > 1:
        assert resampled[-2] == sigmas[-2]


def test_resampling_is_log_linear_between_the_levels(saved):
    path, sigmas = saved
    doubled = load_schedule(path)(13)  # 14 levels: every other one is a level of the file
    assert torch.allclose(doubled[:-1:2], sigmas[:-1], rtol=1e-12, atol=0)
    middle = (sigmas[:-2].log() + sigmas[1:-1].log()) / 2
    assert torch.allclose(doubled[1:-1:2].log(), middle, rtol=1e-12, atol=0)


def test_a_one_step_file(tmp_path):
    loaded = load_schedule(save_schedule(tmp_path / "one.json", [80.0, 0.0]))
    assert loaded(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="one step"):
        loaded(3)


@pytest.mark.parametrize("n", [0, -1, True, 2.0, "3"])
def test_bad_step_counts(saved, n):
    with pytest.raises(ValueError, match="positive integer"):
        load_schedule(saved[0])(n)


def test_file_path():
    assert file_path("karras") is None and file_path(None) is None
    assert file_path("file:a/b.json") == Path("a/b.json")
    assert file_path("file:~/x.json") == Path.home() / "x.json"
    with pytest.raises(ScheduleFileError, match="needs a path"):
        file_path("file:")


@pytest.mark.parametrize("sigmas, match", [
    ([80.0, 1.0], "end in 0"),
    ([1.0, 80.0, 0.0], "strictly decreasing"),
    ([80.0, math.nan, 0.0], "finite"),
    ([[80.0, 0.0]], "1-D"),
    ([80.0], "at least 2"),
])
def test_save_rejects_bad_sigmas(tmp_path, sigmas, match):
    with pytest.raises(ValueError, match=match):
        save_schedule(tmp_path / "bad.json", sigmas)
    assert not list(tmp_path.iterdir())


NOT_ONE = "is not an edm-samplers schedule file"
BAD_FILES = {
    "missing": (None, "schedule file not found"),
    "not json": ("{not json", "corrupt schedule file"),
    "binary": (b"\xff\xfe\x00garbage", "corrupt schedule file"),
    "other format": ({"format": "something-else", "sigmas": [1.0, 0.0]}, NOT_ONE),
    "a list": ([80.0, 0.0], NOT_ONE),
    "no sigmas": ({"format": FORMAT}, "bad sigmas"),
    "text sigmas": ({"format": FORMAT, "sigmas": "80, 0"}, "bad sigmas"),
    "increasing": ({"format": FORMAT, "sigmas": [1.0, 2.0, 0.0]}, "strictly decreasing"),
    "nan": ({"format": FORMAT, "sigmas": [80.0, math.nan, 0.0]}, "finite"),
    "negative": ({"format": FORMAT, "sigmas": [80.0, -1.0]}, "bad sigmas"),
    "no final 0": ({"format": FORMAT, "sigmas": [80.0, 1.0]}, "must end in 0"),
    "one level": ({"format": FORMAT, "sigmas": [0.0]}, "at least 2"),
}


def write_bad(tmp_path: Path, case: str) -> Path:
    content, _ = BAD_FILES[case]
    path = tmp_path / f"{case.replace(' ', '_')}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))  # NaN is written as JSON's common extension, NaN
    return path


@pytest.mark.parametrize("case", BAD_FILES)
def test_load_errors_are_one_line_naming_the_file(tmp_path, case):
    path = write_bad(tmp_path, case)
    with pytest.raises(ScheduleFileError, match=BAD_FILES[case][1]) as info:
        load_schedule(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


# ---------------------------------------------------------------------------------------------------
# edm generate --schedule file:PATH


def generate(*args):
    return _support.invoke(generate_cli.generate, "--no-progress", "--device", "cpu", *args)


def test_schedule_sigmas_reads_files(digits_model, saved):
    path, sigmas = saved
    exact, options = pipeline.schedule_sigmas(digits_model, f"file:{path}", 7)
    assert torch.equal(exact, sigmas) and options == {}
    assert torch.equal(pipeline.schedule_sigmas(digits_model, f"file:{path}", 4)[0], load_schedule(path)(4))
    for kwargs in (dict(rho=3.0), dict(sigma_min=0.01), dict(sigma_max=10.0)):
        with pytest.raises(pipeline.GenerateError, match="fixes its own sigmas") as info:
            pipeline.schedule_sigmas(digits_model, f"file:{path}", 7, **kwargs)
        assert info.value.param == "schedule"


@pytest.mark.slow
def test_generate_with_a_file_equals_the_registry_schedule_it_holds(tmp_path):
    path = save_schedule(tmp_path / "karras4.json", karras(4))
    common = ["--sampler", "heun", "--steps", 4, "--seeds", "0-1"]
    assert generate(*common, "--schedule", f"file:{path}", "--outdir", tmp_path / "file").exit_code == 0
    assert generate(*common, "--schedule", "karras", "--outdir", tmp_path / "karras").exit_code == 0
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "file" / name).read_bytes() == (tmp_path / "karras" / name).read_bytes()
    result = generate("--sampler", "dpmpp_2m", "--nfe", 9, "--seeds", "0", "--schedule", f"file:{path}",
                      "--outdir", tmp_path / "resampled")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "resampled" / "000000.png").is_file()


@pytest.mark.parametrize("case", ["missing", "not json", "binary", "other format", "increasing",
                                  "no final 0"])
def test_generate_rejects_bad_files(tmp_path, case):
    result = generate("--schedule", f"file:{write_bad(tmp_path, case)}", "--seeds", "0", "--outdir",
                      tmp_path / "out")
    assert_usage_error(result, BAD_FILES[case][1])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, match", [
    (["--rho", 3], "fixes its own sigmas"),
    (["--sigma-min", 0.01], "fixes its own sigmas"),
    (["--sigma-max", 10], "fixes its own sigmas"),
])
def test_generate_rejects_range_options_with_a_file(saved, tmp_path, extra, match):
    result = generate("--schedule", f"file:{saved[0]}", *extra, "--seeds", "0", "--outdir", tmp_path / "out")
    assert_usage_error(result, match)
    assert not (tmp_path / "out").exists()


def test_generate_rejects_an_empty_file_path(tmp_path):
    result = generate("--schedule", "file:", "--seeds", "0", "--outdir", tmp_path / "out")
    assert_usage_error(result, "file: needs a path")


def assert_usage_error(result, match: str) -> None:
    """Exit 2, no traceback, exactly one "Error:" line, about --schedule and containing ``match``."""
    _support.assert_usage_error(result, "'--schedule'", match)

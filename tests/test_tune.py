"""tools.schedules.tune (the schedule tuner) and the `edm tune-schedule` command."""

from __future__ import annotations

import json

import pytest
import torch

import samplers
from _support import assert_schedule, assert_usage_error, invoke
from edm.gaussian_mixture import GaussianMixture
from samplers import schedules
from tools import tune_cli
from tools.generate import cli as generate_cli
from tools.ode import ReferenceCache, rms_error
from tools.schedules import tune
from tools.schedules.file import load_schedule
from tools.schedules.tune import calibration_seeds, tunable_steps, tune_schedule

SHAPE = (3, 8, 8)
RANGE = dict(sigma_min=0.002, sigma_max=80.0)
EVALUATION_SEEDS = range(64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    # Components wider than the default (0.05..0.2): with narrow ones, the RMS over a few dozen seeds is
    # dominated by the odd seed whose trajectory sits on a component boundary, where any sampler error
    # may send it to the neighbouring component (an error ~100x the typical one). Which seeds do that
    # changes with the schedule, so such an RMS says little about the schedule.
    return GaussianMixture.random(SHAPE, k=16, seed=0, std_range=(0.15, 0.4), dtype=torch.float64)


def start_noise(seeds) -> torch.Tensor:
    """Start noise as the tuner (and edm generate) draws it."""
    return samplers.noise.latents(list(seeds), SHAPE).to(torch.float64)


@pytest.fixture(scope="module")
def evaluation(mixture):
    latents = start_noise(EVALUATION_SEEDS)
    return latents, ReferenceCache(mixture, latents)


def ode_error(denoiser, sampler, sigmas, latents, reference: ReferenceCache, **options) -> float:
    out = samplers.sample(denoiser, latents * float(sigmas[0]), sigmas, sampler, **options)
    return rms_error(out, reference(sigmas))


def tiny(mixture, sampler="dpmpp_2m", nfe=6, **kwargs):
    """A quick tune: four calibration seeds, a few dozen runs."""
    return tune_schedule(mixture, sampler, nfe, shape=SHAPE, **{**RANGE, "num": 4, "max_evals": 40, **kwargs})


# ---------------------------------------------------------------------------------------------------
# What it finds


@pytest.mark.parametrize("sampler, nfe", [("heun", 11), ("dpmpp_2m", 10)])
@pytest.mark.slow
def test_tuned_schedule_beats_the_init_on_evaluation_seeds(mixture, evaluation, sampler, nfe):
    result = tune_schedule(mixture, sampler, nfe, shape=SHAPE, **RANGE, max_evals=150)
    assert not set(result.seeds) & set(EVALUATION_SEEDS)
    assert result.error <= 0.5 * result.init_error
    init, tuned = (ode_error(mixture, sampler, s, *evaluation) for s in (result.init_sigmas, result.sigmas))
    assert tuned <= 0.7 * init, (tuned, init)


@pytest.mark.slow
def test_the_result_keeps_the_ends_and_the_step_count(mixture):
    result = tiny(mixture, "heun", 13)
    steps = samplers.steps_for_nfe("heun", 13)
    assert (result.steps, result.nfe, result.sampler, result.init) == (steps, 13, "heun", "karras")
    assert_schedule(result.sigmas, steps)
    assert result.sigmas.dtype == torch.float64
    karras = schedules.get("karras")(steps, **RANGE)
    assert torch.equal(result.init_sigmas, karras)
    assert result.sigmas[0] == karras[0] and result.sigmas[-2] == karras[-2]  # the same ODE problem
    assert not torch.equal(result.sigmas, karras)


@pytest.mark.slow
def test_errors_are_the_calibration_ode_errors(mixture):
    result = tiny(mixture)
    assert result.seeds == calibration_seeds(4) == list(range(1_000_000, 1_000_004))
    latents = start_noise(result.seeds)
    reference = ReferenceCache(mixture, latents)
    for sigmas, error in ((result.sigmas, result.error), (result.init_sigmas, result.init_error)):
        assert ode_error(mixture, "dpmpp_2m", sigmas, latents, reference) == pytest.approx(error, rel=1e-9)
    assert result.error < result.init_error and result.improvement == result.init_error / result.error


@pytest.mark.parametrize("max_evals", [1, 2, 7, 30])
@pytest.mark.slow
def test_never_worse_than_the_init_and_within_budget(mixture, monkeypatch, max_evals):
    runs = []
    sample = samplers.sample
    monkeypatch.setattr(samplers, "sample", lambda *a, **k: runs.append(1) or sample(*a, **k))
    result = tiny(mixture, "ipndm", 8, max_evals=max_evals, init="exponential")
    assert result.evaluations <= max_evals
    assert len(runs) == result.evaluations + 2  # and the two one-element probes of tunable_steps
    assert result.error <= result.init_error
    if max_evals == 1:
        assert torch.equal(result.sigmas, result.init_sigmas) and result.start == "init"


@pytest.mark.slow
def test_deterministic(mixture):
    first, second = tiny(mixture, max_evals=25), tiny(mixture, max_evals=25)
    assert torch.equal(first.sigmas, second.sigmas) and first.error == second.error


@pytest.mark.slow
def test_init_choices(mixture, tmp_path):
    custom = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.1, 0.002, 0.0], dtype=torch.float64)
    result = tiny(mixture, "dpmpp_3m", 6, init=custom, sigma_min=None, sigma_max=None)
    assert result.init == "custom" and torch.equal(result.init_sigmas, custom)
    assert result.sigmas[0] == 80.0 and result.sigmas[-2] == 0.002
    path = result.save(tmp_path / "tuned.json")
    again = tiny(mixture, "dpmpp_3m", 6, init=f"file:{path}")
    assert again.init == f"file:{path}" and torch.equal(again.init_sigmas, result.sigmas)
    assert again.error <= result.error


@pytest.mark.slow
def test_few_steps_leave_nothing_to_move(mixture):
    result = tiny(mixture, "heun", 3)  # 2 steps: sigma_max, sigma_min, 0
    assert result.steps == 2 and result.evaluations == 1
    assert torch.equal(result.sigmas, result.init_sigmas)


@pytest.mark.slow
def test_torch_threads_are_restored(mixture):
    torch.set_num_threads(2)
    try:
        tiny(mixture, max_evals=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_save_writes_a_schedule_file_with_the_metadata(mixture, tmp_path):
    result = tiny(mixture)
    path = result.save(tmp_path / "sub.json", model="gmm-k16")
    loaded = load_schedule(path)
    assert torch.equal(loaded(result.steps), result.sigmas)
    meta = loaded.metadata
    assert meta["model"] == "gmm-k16" and meta["sampler"] == "dpmpp_2m" and meta["nfe"] == 6
    assert meta["steps"] == result.steps and meta["init"] == "karras" and meta["seeds"] == "1000000-1000003"
    assert meta["error"] == result.error and meta["init_error"] == result.init_error
    assert meta["evaluations"] == result.evaluations and meta["options"] == {}


# ---------------------------------------------------------------------------------------------------
# What it refuses


@pytest.mark.parametrize("sampler, nfe, options, match", [
    ("euler_ancestral", 10, {}, "stochastic.*set eta=0"),
    ("heun", 10, {"s_churn": 1.0}, "stochastic.*set s_churn=0"),
    ("ddpm", 10, {}, "stochastic"),
    ("dpm_adaptive", 10, {}, "adaptive"),
    ("dpm_fast", 10, {}, "nothing to tune"),
    ("nope", 10, {}, "unknown sampler"),
    ("heun", 0, {}, "NFE budget"),
    ("heun", 10, {"eta": 0.0}, "no option eta"),
])
def test_untunable_samplers(sampler, nfe, options, match):
    with pytest.raises(ValueError, match=match) as info:
        tunable_steps(sampler, nfe, options)
    assert "\n" not in str(info.value)


def test_deterministic_settings_of_stochastic_samplers_are_tunable():
    assert tunable_steps("euler_ancestral", 7, {"eta": 0.0}) == 7
    assert tunable_steps("heun", 7, {"s_churn": 0.0}) == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(num=0), "num must be a positive integer"),
    (dict(seeds=[1_000_000, 1_000_000]), "distinct"),
    (dict(seeds=[-1]), "seeds"),
    (dict(max_evals=0), "max_evals must be a positive integer"),
    (dict(init="simple"), "table"),
    (dict(init="nope"), "unknown schedule"),
    (dict(init="file:/no/such/file.json"), "not found"),
    (dict(init=torch.tensor([80.0, 1.0, 0.002, 0.0], dtype=torch.float64)), "has 3 steps"),
    (dict(init=torch.tensor([80.0, 10.0, 1.0, 0.1, 0.01, 0.0], dtype=torch.float64)), "sigma_min 0.01"),
    (dict(init=torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002, 0.5], dtype=torch.float64)), "strictly decreasing"),
    (dict(device="nope"), "unknown device"),
])
def test_bad_arguments(mixture, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        tiny(mixture, "dpmpp_2m", 5, **kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# edm tune-schedule


@pytest.mark.slow
def test_cli_tunes_digits_and_generate_reads_the_file(tmp_path):
    out = tmp_path / "schedules" / "heun5.json"
    result = invoke(tune_cli.tune_schedule, "--model", "digits", "--sampler", "heun", "--nfe", 5, "--num", 2,
                    "--max-evals", 4, "--out", out, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heun NFE 5 (3 steps): calibration ODE error ")
    assert lines[0].endswith(f"saved {out}")
    schedule = load_schedule(out)
    meta = schedule.metadata
    assert (meta["model"], meta["sampler"], meta["nfe"], meta["steps"]) == ("digits", "heun", 5, 3)
    assert meta["init"] == "karras" and meta["seeds"] == "1000000-1000001" and meta["evaluations"] <= 4
    assert meta["error"] <= meta["init_error"]
    assert not list(out.parent.glob(".*.tmp"))

    images = tmp_path / "images"
    result = invoke(generate_cli.generate, "--schedule", f"file:{out}", "--sampler", "heun", "--nfe", 5,
                    "--seeds", "0-1", "--outdir", images, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in images.glob("*.png")) == ["000000.png", "000001.png"]


@pytest.mark.parametrize("args, match", [
    (["--sampler", "euler_ancestral"], "stochastic"),
    (["--sampler", "dpm_fast"], "nothing to tune"),
    (["--sampler", "dpm_adaptive"], "adaptive"),
    (["--sampler", "nope"], "unknown sampler"),
    (["--nfe", 0], "--nfe"),
    (["--model", "no/such/model.json"], "--model"),
    (["--seeds", "5-3"], "reversed seed range"),
    (["--seeds", "5-9", "--num", 5], "mutually exclusive"),
    (["--init", "nope"], "unknown schedule"),
    (["--init", "file:no/such.json"], "not found"),
    (["--device", "nope"], "--device"),
    (["--out", "."], "is a directory"),
    (["--max-evals", 0], "--max-evals"),
])
def test_cli_bad_inputs(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    base = {"--model": "digits", "--sampler": "heun", "--nfe": 5, "--out": "tuned.json"}
    given = dict(zip(args[::2], args[1::2]))
    result = invoke(tune_cli.tune_schedule, "--no-progress",
                    *[str(a) for key, value in {**base, **given}.items() for a in (key, value)])
    assert_usage_error(result, match)
    assert not (tmp_path / "tuned.json").exists()


def test_cli_help_points_to_generate():
    result = invoke(tune_cli.tune_schedule, "--help")
    assert result.exit_code == 0
    assert "--schedule file:" in result.output and "--max-evals" in result.output


# ---------------------------------------------------------------------------------------------------
# edm tune-solver's flags


@pytest.mark.parametrize("args, fragments", [
    (["--nfe", 1], ["'--nfe'", "at least 2 NFE", "got 1"]),
    (["--sampler", "heun"], ["'--sampler'", "twice at one noise level", "starts from ddim, deis"]),
    (["--sampler", "euler_ancestral"], ["'--sampler'", "stochastic", "dpmpp_2m"]),
    (["--sampler", "file:s.json"], ["'--sampler'", "registered sampler, not 'file:s.json'", "dpmpp_2m"]),
    (["--sampler", "auto"], ["'--sampler'", "not 'auto'", "leave --sampler out"]),
    (["--schedule", "nope"], ["'--schedule'", "unknown schedule 'nope'"]),
    (["--schedule", "file:s.json"], ["'--schedule'", "not a schedule file"]),
    (["--eta", 0], ["'--eta'"]),
    (["--rho", 3], ["--rho is not an option here", "--schedule"]),
    (["--steps", 3], ["--steps is not an option here", "--nfe N"]),
    (["--prompt", "a cat"], ["--prompt is not an option here", "deterministic ODE solve"]),
    (["--corrector", "langevin"], ["--corrector is not an option here", "deterministic ODE solve"]),
])
def test_tune_solver_names_the_flag_it_refuses_and_what_it_takes(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    result = invoke(tune_cli.tune_solver, "--model", "digits", "--nfe", 5, *args, "--num", 2, "--heldout", 0,
                    "--iterations", 1, "--out", "s.json", "--device", "cpu", "--no-progress")
    line = assert_usage_error(result, *fragments)
    assert "[" not in line
    assert not list(tmp_path.iterdir())


def help_section(text: str, name: str) -> str:
    """One section of a sectioned help page (``Sampling:`` up to the next section)."""
    lines = text.split(f"\n{name}:\n", 1)[1].split("\n")
    section = []
    for line in lines:
        if line and not line.startswith(" "):
            break
        section.append(line)
    return "\n".join(section)


def test_tune_solver_help_lists_only_what_it_takes():
    text = invoke(tune_cli.tune_solver, "--help").output
    sampling = " ".join(help_section(text, "Sampling").split())
    assert "file:" not in sampling and "'auto'" not in sampling and "edm bench" not in sampling
    assert "not heun" in sampling and "N >= 2" in sampling
    for flag in ("--steps", "--rho", "--eta", "--order", "--prompt", "--strength", "--init-image",
                 "--corrector", "--snr", "Sampler options:", "Text:", "Editing:"):
        assert flag not in text, flag
    for flag in ("--guidance", "--class", "--sigma-min", "--checkpoint-every", "--start-over"):
        assert flag in text, flag


@pytest.mark.parametrize("args, fragments", [
    (["--sampler", "heun", "--order", 3], ["--order", "--s-churn"]),
    (["--sampler", "heun", "--s-churn", -1], ["--s-churn", "non-negative"]),
    (["--sampler", "unipc", "--variant", "x"], ["--variant", "bh1, bh2"]),
    (["--sampler", "ipndm", "--max-order", 7], ["--max-order", "1..4"]),
    (["--sampler", "heun", "--guidance", 1, "--guidance-interval", "1,2,3"],
     ["'--guidance-interval'", "got 1,2,3"]),
])
def test_tune_schedule_errors_show_flags_and_values_as_typed(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    result = invoke(tune_cli.tune_schedule, "--model", "digits", "--nfe", 6, *args, "--num", 2,
                    "--max-evals", 1, "--out", "t.json", "--no-progress")
    line = assert_usage_error(result, *fragments)
    assert "[" not in line and "('" not in line, line  # no Python list or tuple


def test_saved_file_is_plain_json(mixture, tmp_path):
    path = tiny(mixture, max_evals=3).save(tmp_path / "t.json")
    record = json.loads(path.read_text())
    assert record["format"] == "edm-samplers/schedule-v1" and record["sigmas"][-1] == 0


def test_module_exports():
    assert tune.__all__ and all(hasattr(tune, name) for name in tune.__all__)

"""What a new user reads: no stray library warnings, error lines in the words and flags they typed, and help
pages that list only flags the command takes."""

from __future__ import annotations

import logging
import re

import click
import pytest

from _support import assert_usage_error, invoke
from tools.cli import main
from tools.generate.cli import generate

# ---------------------------------------------------------------------------------------------------
# diffusers' "should be kept in float32" warning


class _Records(logging.Handler):
    """Every record diffusers' logger emits (its own handler writes them to the stderr it bound at import,
    which click's runner does not capture)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    records = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A tiny random-weight UNet2DModel and its scheduler, saved as a diffusers pipeline folder."""
    import diffusers
    import pipelines_tiny

    path = tmp_path_factory.mktemp("unet")
    pipelines_tiny.random_unet2d(8, 2).save_pretrained(path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_end=0.005).save_pretrained(path / "scheduler")
    return path


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_diffusers_unet_loads_without_cast_warning(unet_dir, tmp_path, offline, diffusers_log, dtype):
    result = invoke(generate, "--model", f"diffusers:{unet_dir}", "--outdir", tmp_path / "out",
                    "--seeds", "0", "--steps", 2, "--dtype", dtype, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not [m for m in diffusers_log if "should be kept in float32" in m], diffusers_log
    assert (tmp_path / "out" / "000000.png").is_file()


# ---------------------------------------------------------------------------------------------------
# Error lines: values as typed, flags as typed


def usage_line(tmp_path, command: str, *args) -> str:
    """The one Error line of a refused run of ``edm COMMAND`` on the built-in digits model (exit 2,
    nothing written)."""
    out = ["--outdir", tmp_path / "out"] if command == "generate" else ["--out", tmp_path / "out"]
    budget = ["--steps", 2] if command == "generate" else ["--nfe", 3, "--metrics", "ode", "--num", 1]
    result = invoke(main, command, "--seeds" if command == "generate" else "--ode-num", "0" if
                    command == "generate" else 1, *budget, *out, *args)
    line = assert_usage_error(result)
    assert not (tmp_path / "out").exists()
    return line


PYTHON_CONTAINERS = re.compile(r"[\[({]'|'[\])}]|\(\s*'")


@pytest.mark.parametrize("command, args, typed", [
    ("generate", ["--sampler", "restart", "--restart-list", "3"], "got 3"),
    ("generate", ["--sampler", "restart", "--restart-list", "1,2,3"], "got 1,2,3"),
    ("generate", ["--sampler", "unipc", "--variant", "xx"], "one of: bh1, bh2, got xx"),
    ("generate", ["--sampler", "dpmpp_2m_sde", "--solver-type", "rk4"], "heun or midpoint, got rk4"),
    ("generate", ["--sampler", "dpmpp_sde", "--r", "0"], "--r must be in (0, 1], got 0"),
    ("bench", ["--sampler", "restart", "--option", "restart.s_noise=abc"], "got abc"),
    ("bench", ["--sampler", "unipc", "--option", "unipc.variant=[1]"], "one of: bh1, bh2"),
], ids=lambda v: " ".join(map(str, v)) if isinstance(v, list) else str(v))
def test_error_lines_show_values_as_typed(tmp_path, command, args, typed):
    line = usage_line(tmp_path, command, *args)
    assert typed in line, line
    assert not PYTHON_CONTAINERS.search(line), line


def _schedule_cases():
    from samplers import schedules

    for name in schedules.list():
        if schedules.spec(name).needs_table:  # the digits model has no sigma table: --schedule is at fault
            continue
        for flag, value in (("--sigma-min", "0"), ("--sigma-min", "-1"), ("--sigma-max", "0"),
                            ("--sigma-max", "nan"), ("--sigma-min", "100")):
            yield name, flag, value
        if "rho" in schedules.spec(name).options:
            yield name, "--rho", "0"
            yield name, "--rho", "-1"


@pytest.mark.parametrize("schedule, flag, value", list(_schedule_cases()))
def test_schedule_errors_name_the_flag(tmp_path, schedule, flag, value):
    line = usage_line(tmp_path, "generate", "--schedule", schedule, flag, value)
    assert flag in line and not bare(flag, line), line


def bare(flag: str, line: str) -> bool:
    """Whether ``line`` names ``flag``'s library parameter without the flag (sigma_min for --sigma-min)."""
    return re.search(rf"(?<![\w-]){flag[2:].replace('-', '_')}\b", line) is not None


@pytest.mark.parametrize("flag, value", [("--sigma-min", "0"), ("--sigma-max", "-1"), ("--rho", "0")])
def test_bench_schedule_errors_name_the_flag(tmp_path, flag, value):
    line = usage_line(tmp_path, "bench", "--sampler", "heun", flag, value)
    assert flag in line and "'--schedule'" not in line and not bare(flag, line), line


@pytest.mark.parametrize("command, args, flag", [
    ("generate", ["--sampler", "edm", "--s-churn", "-1"], "--s-churn"),
    ("generate", ["--sampler", "edm", "--s-noise", "-1"], "--s-noise"),
    ("generate", ["--sampler", "euler_ancestral", "--eta", "-1"], "--eta"),
    ("generate", ["--sampler", "unipc", "--order", "5"], "--order"),
    ("generate", ["--sampler", "unipc", "--variant", "xx"], "--variant"),
    ("generate", ["--sampler", "lms", "--order", "0"], "--order"),
    ("generate", ["--sampler", "ipndm", "--max-order", "7"], "--max-order"),
    ("generate", ["--sampler", "dpmpp_2m_sde", "--solver-type", "rk4"], "--solver-type"),
    ("generate", ["--sampler", "annealed_langevin", "--step-size", "-1"], "--step-size"),
    ("generate", ["--sampler", "annealed_langevin", "--steps-per-level", "0"], "--steps-per-level"),
    ("generate", ["--sampler", "heun", "--eta", "1"], "--eta"),
    ("generate", ["--sampler", "dpmpp_sde", "--r", "-1"], "--r"),
    ("generate", ["--sampler", "dpm_adaptive", "--rtol", "-1"], "--rtol"),
    ("generate", ["--sampler", "dpm_adaptive", "--rtol", "0", "--atol", "0"], "--atol"),
    ("generate", ["--sampler", "dpm_adaptive", "--h-init", "0"], "--h-init"),
    ("bench", ["--sampler", "edm", "--s-churn", "-1"], "--s-churn"),
    ("bench", ["--sampler", "restart", "--option", "restart.s_noise=-1"], "--option restart.s_noise"),
    ("bench", ["--sampler", "unipc", "--option", "unipc.order=9"], "--option unipc.order"),
], ids=lambda v: " ".join(map(str, v)) if isinstance(v, list) else str(v))
def test_sampler_option_errors_name_the_flag(tmp_path, command, args, flag):
    line = usage_line(tmp_path, command, *args)
    assert flag in line, line
    assert not re.search(r"(?<![\w.-])(s_churn|s_noise|max_order|solver_type|step_size|steps_per_level)\b",
                         line), line


# ---------------------------------------------------------------------------------------------------
# Help pages list only flags the command takes


def _help_flags(command, prefix) -> list[str]:
    result = invoke(command, *prefix, "--help")
    assert result.exit_code == 0, result.output
    return re.findall(r"(?m)^\s+(--[a-z][a-z0-9-]*)", result.output)


def _smoke_args(option) -> list[str]:
    """``option`` given once with a value of its type (callbacks and required checks are skipped)."""
    if option.is_flag:
        return [option.opts[0]]
    value = option.type.choices[0] if isinstance(option.type, click.Choice) else "1"
    return [option.opts[0], value]


def _sampling_commands():
    from tools.compare.cli import bench
    from tools.fid.cli import fid

    return {"generate": (generate, []), "fid gen": (fid, ["gen"]), "bench": (bench, [])}


@pytest.mark.parametrize("name", ["generate", "fid gen", "bench"])
def test_help_lists_only_flags_the_command_parses(name):
    command, prefix = _sampling_commands()[name]
    if prefix:
        command = command.get_command(None, prefix[0])
    by_flag = {opt: p for p in command.get_params(click.Context(command)) if isinstance(p, click.Option)
               for opt in p.opts}
    for flag in _help_flags(command, []):
        if flag in ("--help",):
            continue
        option = by_flag[flag]
        command.make_context(name, _smoke_args(option), resilient_parsing=True)


def test_bench_help_lists_no_flag_it_refuses(tmp_path):
    from tools.compare.cli import bench

    shown = set(_help_flags(bench, []))
    for flag in ("--steps", "--init-image", "--strength", "--mask", "--resample"):
        assert flag not in shown, flag
        result = invoke(bench, "--out", tmp_path / "out", flag, "1")
        assert_usage_error(result, flag)
        assert not (tmp_path / "out").exists()


def test_tune_schedule_help_lists_no_flag_it_refuses():
    from tools.tune_cli import tune_schedule

    shown = set(_help_flags(tune_schedule, []))
    for flag in ("--init-image", "--strength", "--mask", "--resample", "--corrector", "--corrector-steps",
                 "--snr", "--prompt", "--negative-prompt", "--prompts", "--width", "--height"):
        assert flag not in shown, flag


def _sampler_option_flags(command) -> dict[str, str]:
    """Sampler option (its registry name) -> the flag a command gives it."""
    from tools.options import SAMPLER_OPTION_PREFIX

    return {p.name.removeprefix(SAMPLER_OPTION_PREFIX): p.opts[0]
            for p in command.get_params(click.Context(command)) if p.name.startswith(SAMPLER_OPTION_PREFIX)}


def test_a_sampler_option_has_one_flag_in_every_command():
    """UniPC's corrector is --sampler-corrector wherever sampler options are flags, even in a command
    without the --corrector steering flag (tune-schedule once called it --corrector)."""
    from tools.compare.cli import bench
    from tools.fid.cli import fid
    from tools.tune_cli import tune_schedule

    flags = [_sampler_option_flags(c) for c in (generate, fid.get_command(None, "gen"), bench, tune_schedule)]
    assert flags[0]["corrector"] == "--sampler-corrector"
    for other in flags[1:]:
        assert other == flags[0]

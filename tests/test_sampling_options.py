"""One set of sampling options for every command that samples (generate, fid gen, bench, tune-schedule):
the same flags in every --help, every sampler option described, and the same images scored as written."""

from __future__ import annotations

import json
import re

import pytest

import _support
import samplers
from _support import assert_usage_error
from tools.compare.cli import NOT_TAKEN, bench
from tools.fid.cli import fid
from tools.generate.cli import generate
from tools.options import SAMPLING_PARAMS
from tools.tune_cli import SCHEDULE_NOT_TAKEN, tune_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH_NOT_TAKEN = {"--" + name.replace("_", "-") for name in NOT_TAKEN}
# the flags a command leaves out of its help and does not parse
NOT_TAKEN_BY = {"bench": BENCH_NOT_TAKEN,
                "tune-schedule": {"--" + name.replace("_", "-") for name in SCHEDULE_NOT_TAKEN}}

COMMANDS = {"generate": (generate, []), "fid gen": (fid, ["gen"]), "bench": (bench, []),
            "tune-schedule": (tune_schedule, [])}


def invoke(command, *args):
    return _support.invoke(command, *args, catch_exceptions=False)


def help_text(name: str) -> str:
    command, prefix = COMMANDS[name]
    result = invoke(command, *prefix, "--help")
    assert result.exit_code == 0, result.output
    return result.output


def flags(text: str) -> set[str]:
    return set(re.findall(r"(?m)^\s+(--[a-z][a-z0-9-]*)", text))


def sampling_flags() -> set[str]:
    shared = {decls[0] for _, decls, _ in SAMPLING_PARAMS.values()}
    registry = {"--" + key.replace("_",
                                   "-") for name in samplers.list() for key in samplers.get(name).options}
    return shared | registry


def test_every_sampling_command_lists_the_same_sampling_options():
    wanted = sampling_flags()
    assert {"--sampler", "--schedule", "--nfe", "--class", "--guidance", "--dtype", "--eta",
            "--s-churn"} <= wanted
    for name in COMMANDS:
        taken = wanted - NOT_TAKEN_BY.get(name, set())  # bench: equal NFE, no editing; tune-schedule: ODE
        assert taken <= flags(help_text(name)), name


def _flag_help(text: str, flag: str) -> str:
    """The help paragraph of one flag in a click help page (joined lines)."""
    match = re.search(rf"(?ms)^\s+{re.escape(flag)}( [A-Z.]+)?\s+(.*?)(?=^\s+--|\Z|^\S)", text)
    assert match, flag
    return " ".join(match.group(2).split())


def test_every_sampler_option_is_described_in_generate_help():
    from samplers.registry import OPTION_HELP
    from tools.options import SAMPLING_PARAMS

    text = help_text("generate")
    taken = {decl for _, decls, _ in SAMPLING_PARAMS.values() for decl in decls}
    for name in samplers.list():
        spec = samplers.get(name)
        for key, description in spec.option_help.items():
            flag = "--" + key.replace("_", "-")
            if flag in taken:  # e.g. UniPC's corrector beside --corrector langevin: --sampler-corrector
                flag = "--sampler-" + key.replace("_", "-")
            shown = _flag_help(text, flag)
            meaning = " ".join(OPTION_HELP.get(key, description).split())
            assert meaning and shown.startswith(meaning), (key, shown)


@pytest.mark.slow
def test_restart_list_default_is_shown_in_the_syntax_the_flag_takes(tmp_path):
    default = samplers.get("restart").options["restart_list"]
    shown = _flag_help(help_text("generate"), "--restart-list")
    assert f"Default {default} for restart" in shown
    result = invoke(generate, "--no-progress", "--device", "cpu", "--sampler", "restart", "--steps", 4,
                    "--restart-list", default, "--seeds", "0-1", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_negative_guidance_is_refused_saying_what_w_means(tmp_path, name):
    command, prefix = COMMANDS[name]
    extra = {"generate": ["--outdir", tmp_path / "o"], "fid gen": ["--num", 2, "--ref", "digits"],
             "bench": ["--out", tmp_path / "b", "--sampler", "heun", "--nfe", 5],
             "tune-schedule": ["--sampler", "heun", "--nfe", 5, "--out", tmp_path / "t.json"]}[name]
    result = invoke(command, *prefix, "--device", "cpu", "--guidance", -1, *extra)
    assert_usage_error(result, "--guidance", "w is the classifier-free guidance weight", ">= 0")
    assert not any(tmp_path.iterdir())


def test_tune_schedule_with_nothing_to_tune_says_so(tmp_path):
    result = invoke(tune_schedule, "--model", "digits", "--sampler", "heun", "--nfe", 1, "--device", "cpu",
                    "--out", tmp_path / "t.json")
    assert_usage_error(result, "nothing to tune", "NFE >= 5")
    assert "inf" not in result.output and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_fid_gen_equals_fid_calc_on_what_generate_writes(tmp_path):
    flags_ = ["--sampler", "ipndm_afs", "--schedule", "exponential", "--nfe", 5, "--class", 3, "--guidance",
              1,
              "--device", "cpu"]
    written = invoke(generate, "--no-progress", *flags_, "--seeds", "0-63", "--outdir", tmp_path / "png")
    assert written.exit_code == 0, written.output
    calc = invoke(fid, "calc", "--images", tmp_path / "png", "--ref", "digits", "--no-progress", "--json",
                  "--device", "cpu")
    gen = invoke(fid, "gen", *flags_, "--num", 64, "--ref", "digits", "--no-progress", "--json")
    assert calc.exit_code == 0 and gen.exit_code == 0, calc.output + gen.output
    a, b = json.loads(calc.output.splitlines()[-1]), json.loads(gen.output.splitlines()[-1])
    assert b["fd_digits"] == pytest.approx(a["fd_digits"], rel=0, abs=1e-10)
    assert b["num"] == a["num"] == 64 and b["nfe"] == 5 and b["class"] == 3 and b["guidance"] == 1
    seeds = invoke(fid, "gen", *flags_, "--seeds", "0-63", "--ref", "digits", "--no-progress", "--json")
    assert json.loads(seeds.output.splitlines()[-1])["fd_digits"] == b["fd_digits"]


@pytest.mark.slow
def test_bench_flags_apply_to_the_samplers_that_have_them(tmp_path):
    result = invoke(bench, "--sampler", "euler,euler_ancestral", "--nfe", 3, "--eta", 0.5, "--metrics",
                    "time",
                    "--num", 2, "--device", "cpu", "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert settings["options"] == {"euler_ancestral": {"eta": 0.5}}
    result = invoke(bench, "--sampler", "euler,heun", "--nfe", 3, "--eta", 0.5, "--out", tmp_path / "x")
    assert_usage_error(result, "none of the samplers euler, heun has option --eta")
    result = invoke(bench, "--sampler", "euler", "--steps", 3, "--out", tmp_path / "y")
    assert_usage_error(result, "--steps", "equal NFE")  # not a bench option, but typing it says why


def test_bench_errors_name_the_flags_it_has(tmp_path):
    result = invoke(bench, "--sampler", "heun,nope", "--nfe", 5, "--out", tmp_path / "o")
    assert_usage_error(result, "'--sampler'", "unknown sampler 'nope'")
    result = invoke(bench, "--sampler", "heun", "--schedule", "karras,nope", "--nfe", 5,
                    "--out", tmp_path / "o")
    assert_usage_error(result, "'--schedule'", "nope")


@pytest.mark.slow
def test_tune_schedule_tunes_with_the_class_and_guidance_it_will_be_sampled_with(tmp_path, monkeypatch):
    from tools.schedules import tune
    from tools.schedules.file import load_schedule

    seen = {}
    real = tune.tune_schedule

    def spy(denoiser, sampler, nfe, **kwargs):
        seen["guidance"] = getattr(denoiser, "w", None)
        seen["labels"] = kwargs["cond"]["class_labels"].argmax(dim=1).tolist()
        return real(denoiser, sampler, nfe, **kwargs)

    out = tmp_path / "t.json"
    monkeypatch.setattr(tune, "tune_schedule", spy)
    result = invoke(tune_schedule, "--sampler", "heun", "--nfe", 5, "--num", 2, "--max-evals", 3,
                    "--class", 3, "--guidance", 1.5, "--device", "cpu", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    assert seen == {"guidance": 1.5, "labels": [3, 3]}
    meta = load_schedule(out).metadata
    assert meta["class"] == 3 and meta["guidance"] == 1.5

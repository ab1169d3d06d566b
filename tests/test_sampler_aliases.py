"""The sampler names people type (samplers.aliases): the table both ways, and the front end resolving them:
an A1111 name runs its sampler on its schedule, a ComfyUI *_cfg_pp name is the sampler with --cfg-pp
(the same image bytes), and bad combinations are one usage line with nothing written."""

from __future__ import annotations

import json

import pytest

import _support
import samplers
from samplers import aliases
from samplers import schedules as schedule_registry
from tools.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["generate", "--no-progress", "--device", "cpu", "--model", "digits", "--seeds", "0-1", "--steps", 6]


def invoke(*args):
    return _support.invoke(main, *args)


def test_every_alias_names_a_registered_sampler_and_schedule():
    table = list(aliases.ALIASES.values())
    assert len(table) == len(aliases._TABLE)  # no two aliases the same up to case
    for alias in table:
        assert alias.sampler in samplers.list(), alias
        assert alias.schedule is None or alias.schedule in schedule_registry.list(), alias
        assert not alias.cfg_pp or samplers.get(alias.sampler).cfg_pp, alias
        if alias.name.casefold() in samplers.list():  # a registry name never means another sampler
            assert alias.sampler == alias.name.casefold(), alias


def test_every_alias_resolves_whatever_its_case():
    for alias in aliases.ALIASES.values():
        for typed in (alias.name, alias.name.upper(), alias.name.lower(), f" {alias.name} "):
            assert aliases.resolve(typed) is alias, typed
    assert aliases.resolve("no such sampler") is None and aliases.resolve(None) is None


@pytest.mark.parametrize(("typed", "sampler", "schedule", "cfg_pp"), [
    ("DPM++ 2M Karras", "dpmpp_2m", "karras", False),
    ("dpm++ 2m", "dpmpp_2m", None, False),
    ("DPM++ 3M SDE Exponential", "dpmpp_3m_sde", "exponential", False),
    ("Euler a", "euler_ancestral", None, False),
    ("DPM2 a Karras", "dpm_2_ancestral", "karras", False),
    ("euler_cfg_pp", "euler", None, True),
    ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral", None, True),
    ("gradient_estimation_cfg_pp", "gradient_estimation", None, True),
    ("DDIM CFG++", "ddim", None, True),
])
def test_known_names(typed, sampler, schedule, cfg_pp):
    alias = aliases.resolve(typed)
    assert (alias.sampler, alias.schedule, alias.cfg_pp) == (sampler, schedule, cfg_pp)


def test_every_cfg_pp_sampler_has_comfyui_s_name_but_ddim():
    comfy = {a.sampler for a in aliases.ALIASES.values() if a.cfg_pp and a.source == "ComfyUI"}
    assert comfy == set(samplers.registry.cfg_pp_samplers()) - {"ddim"}


def test_edm_samplers_lists_the_table_and_the_cfg_pp_column():
    result = invoke("samplers", "--aliases", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["alias"] for r in rows] == [a.name for a in aliases.ALIASES.values()]
    assert {"alias": "DPM++ 2M Karras", "sampler": "dpmpp_2m", "schedule": "karras", "cfg_pp": False,
            "source": "A1111"} in rows
    text = invoke("samplers", "--aliases").stdout
    assert "euler_cfg_pp" in text and "cfg++" in text.splitlines()[0]
    records = json.loads(invoke("samplers", "--json").stdout)
    assert {r["name"] for r in records if r["cfg_pp"]} == set(samplers.registry.cfg_pp_samplers())
    _support.assert_usage_error(invoke("samplers", "--aliases", "euler"), "--aliases")


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_cfg_pp_name_is_the_sampler_with_cfg_pp(tmp_path):
    runs = {"alias": ["--sampler", "euler_cfg_pp"], "flag": ["--sampler", "euler", "--cfg-pp"],
            "plain": ["--sampler", "euler"]}
    for name, args in runs.items():
        result = invoke(*BASE, "--guidance", 1, *args, "--outdir", tmp_path / name)
        assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "alias") == pngs(tmp_path / "flag") and len(pngs(tmp_path / "alias")) == 2
    assert pngs(tmp_path / "alias") != pngs(tmp_path / "plain")
    record = json.loads((tmp_path / "alias" / "edm-generate.json").read_text())
    assert record["sampler"] == "euler" and record["steering"] == {"cfg_pp": True}


def test_cfg_pp_takes_the_paper_s_lambda_below_1(tmp_path):
    """CFG++'s lambda = 1 + w in [0, 1] is w in [-1, 0]: the guided x0 interpolates between the negative
    and conditional predictions, so w = -1 steps to the unconditional x0 along the unconditional
    direction, which is plain unguided sampling of the unconditional model."""
    for name, args in {"lambda0": ["--sampler", "euler_cfg_pp", "--guidance", -1],
                       "uncond": ["--sampler", "euler", "--unconditional"],
                       "lambda06": ["--sampler", "euler_cfg_pp", "--guidance", -0.4]}.items():
        result = invoke(*BASE, *args, "--outdir", tmp_path / name)
        assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "lambda0") == pngs(tmp_path / "uncond")
    assert pngs(tmp_path / "lambda06") != pngs(tmp_path / "uncond")


def test_a1111_name_is_its_sampler_on_its_schedule(tmp_path):
    for name, args in {"alias": ["--sampler", "DPM++ 2M Karras", "--schedule", "karras"],
                       "plain": ["--sampler", "dpmpp_2m", "--schedule", "karras"],
                       "other": ["--sampler", "dpm++ 2m", "--schedule", "exponential"]}.items():
        result = invoke(*BASE, *args, "--outdir", tmp_path / name)
        assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "alias") == pngs(tmp_path / "plain")
    record = json.loads((tmp_path / "other" / "edm-generate.json").read_text())
    assert (record["sampler"], record["schedule"]) == ("dpmpp_2m", "exponential")


@pytest.mark.parametrize(("args", "flag", "says"), [
    (["--sampler", "heun", "--cfg-pp", "--guidance", 1], "--cfg-pp", "the samplers that do: ddim, dpmpp_2m"),
    (["--sampler", "euler", "--cfg-pp"], "--cfg-pp", "--guidance W != 0 (W >= -1)"),
    (["--sampler", "euler_cfg_pp", "--guidance", 0], "--cfg-pp", "--guidance W != 0 (W >= -1)"),
    (["--sampler", "euler_cfg_pp", "--guidance", -1.5], "--guidance", ">= -1 with --cfg-pp"),
    (["--sampler", "euler", "--guidance", -0.4], "--guidance", ">= 0"),
    (["--sampler", "euler", "--cfg-pp", "--guidance", 1, "--guide-model", "digits-weak"], "--cfg-pp",
     "--guide-model"),
    (["--sampler", "euler", "--cfg-pp", "--guidance", 1, "--classifier", "digits-classifier"], "--cfg-pp",
     "--classifier"),
    (["--sampler", "DPM++ 2M Karras", "--schedule", "exponential"], "--schedule", "karras"),
    (["--sampler", "DPM++ 2M Kerras"], "--sampler", "unknown sampler"),
])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, args, flag, says):
    out = tmp_path / "out"
    result = invoke(*BASE, *args, "--outdir", out)
    _support.assert_usage_error(result, f"'{flag}'", says)
    assert not out.exists()


@pytest.mark.parametrize("command", [["tune-solver", "--nfe", 4], ["tune-schedule", "--sampler", "euler",
                                                                    "--nfe", 4]])
def test_the_fits_refuse_cfg_pp(tmp_path, command):
    """A fit solves the deterministic ODE of the guided denoiser; CFG++ is no such ODE."""
    out = tmp_path / "fit.json"
    result = invoke(*command, "--guidance", 1, "--cfg-pp", "--out", out)
    _support.assert_usage_error(result, "does not take --cfg-pp")
    assert not out.exists()

"""The ``edm`` command line: help, version and the registry listings (``samplers``, ``schedules``)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import _support
import samplers
from _support import error_lines
from samplers import schedules
from tools import cli

REPO = Path(__file__).resolve().parents[1]
NARROW = {"COLUMNS": "80"}  # a narrow terminal: tables keep to cli.TABLE_WIDTH


def invoke(*args: str):
    return _support.invoke(cli.main, *args, env=NARROW)


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def strict_json(text: str):
    """Parse JSON, rejecting the non-standard Infinity/NaN literals."""
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def plain(value):
    """What an option default should look like in strict JSON: non-finite floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, tuple | list):  # e.g. restart's restart_list: JSON arrays
        return [plain(v) for v in value]
    return value


def table_rows(output: str) -> dict[str, list[str]]:
    """Table body rows keyed by their first cell (after the header and its underline)."""
    lines = output.splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}, "second line should underline the headers"
    return {line.split()[0]: line.split() for line in lines[2:]}


def evaluate_rule(rule: str, steps: int) -> int:
    """Evaluate an NFE rule such as "N", "2N-1", "3N+2" at N = steps."""
    match = re.fullmatch(r"(\d*)N([+-]\d+)?", rule)
    assert match, f"not an NFE rule: {rule!r}"
    per_step = int(match.group(1) or 1)
    return per_step * steps + int(match.group(2) or 0)


# ---------------------------------------------------------------------------------------------------
# Group


def test_help_lists_the_commands():
    output = ok("--help")
    assert "Usage:" in output
    for command in ("samplers", "schedules"):
        assert re.search(rf"^\s+{command}\s+\S", output, re.M), output
    assert ok("-h") == output


def test_version():
    try:
        expected = metadata.version("edm-samplers")
    except metadata.PackageNotFoundError:
        expected = "unknown"
    assert ok("--version").strip() == f"edm {expected}"


def test_version_falls_back_to_unknown(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    assert cli._version() == "unknown"


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "samplers" in result.stdout and "schedules" in result.stdout


# ---------------------------------------------------------------------------------------------------
# edm samplers


def test_samplers_json_matches_the_registry():
    records = strict_json(ok("samplers", "--json"))
    assert [r["name"] for r in records] == samplers.list()
    for record in records:
        spec = samplers.get(record["name"])
        assert record["order"] == spec.order
        assert record["stochastic"] is spec.stochastic
        assert record["noise"] == spec.noise
        assert record["reference"] == spec.reference  # full text, never truncated
        assert record["description"] == spec.description
        assert record["options"] == {k: plain(v) for k, v in spec.options.items()}
        if spec.adaptive:
            assert record["nfe"] == ("varies" if spec.count_nfe else "adaptive")
        else:
            for steps in (1, 2, 10, 37):
                assert evaluate_rule(record["nfe"], steps) == spec.nfe(steps), record


def test_samplers_json_writes_inf_as_a_string():
    (record,) = strict_json(ok("samplers", "heun", "--json"))
    assert samplers.get("heun").options["s_tmax"] == math.inf
    assert record["options"]["s_tmax"] == "inf"


def test_samplers_table_lists_every_sampler_with_its_nfe_rule():
    rows = table_rows(ok("samplers"))
    assert sorted(rows) == samplers.list()
    rules = {r["name"]: r["nfe"] for r in strict_json(ok("samplers", "--json"))}
    for name, cells in rows.items():
        spec = samplers.get(name)
        assert cells[1] == str(spec.order)
        assert cells[2] == rules[name]
        assert cells[3] == ("yes" if spec.stochastic else "no")
        assert cells[4] == (spec.noise or "none")
    assert rows["heun"][2] == "2N-1"
    assert rows["euler"][2] == "N"
    assert rows["dpm_adaptive"][2] == "adaptive"


def test_samplers_table_fits_and_truncates_long_references():
    output = ok("samplers")
    assert max(len(line) for line in output.splitlines()) <= cli.TABLE_WIDTH
    reference = samplers.get("dpm_adaptive").reference
    assert len(reference) > 40
    assert reference not in output
    assert reference[:20] in output and "..." in output


def test_samplers_by_name_shows_only_those_rows_in_order():
    output = ok("samplers", "heun", "euler", "heun")
    assert list(table_rows(output)) == ["heun", "euler"]
    records = strict_json(ok("samplers", "euler", "dpm_adaptive", "--json"))
    assert [r["name"] for r in records] == ["euler", "dpm_adaptive"]


@pytest.mark.parametrize("args,bad", [(["no_such_sampler"], "no_such_sampler"),
                                      (["heun", "nope", "--json"], "nope")])
def test_unknown_sampler_is_a_usage_error(args, bad):
    result = invoke("samplers", *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "-----" not in result.output  # no table printed before the error
    errors = error_lines(result)
    assert len(errors) == 1, result.output
    assert repr(bad) in errors[0]
    for name in samplers.list():
        assert name in errors[0]


# ---------------------------------------------------------------------------------------------------
# edm schedules


def test_schedules_json_matches_the_registry():
    records = strict_json(ok("schedules", "--json"))
    assert [r["name"] for r in records] == schedules.list()
    for record in records:
        spec = schedules.spec(record["name"])
        assert record["options"] == {k: plain(v) for k, v in spec.options.items()}
        assert record["needs_table"] is spec.needs_table
        assert record["range_optional"] is spec.range_optional
        assert record["description"] == spec.description
        assert record["reference"] == spec.reference


def test_schedules_table_lists_every_schedule():
    output = ok("schedules")
    assert max(len(line) for line in output.splitlines()) <= cli.TABLE_WIDTH
    rows = table_rows(output)
    assert sorted(rows) == schedules.list()
    assert "rho=7" in rows["karras"]


def test_unknown_schedule_is_a_usage_error():
    result = invoke("schedules", "karras", "no_such_schedule")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "no_such_schedule" in result.output and all(n in result.output for n in schedules.list())


# ---------------------------------------------------------------------------------------------------
# Formatting pieces


class _Spec:
    def __init__(self, per_step, last, name="s", count_nfe=None):
        self.name, self.nfe_per_step, self.last_step_nfe = name, per_step, last
        self.adaptive, self.count_nfe = per_step is None, count_nfe


@pytest.mark.parametrize("per_step,last,rule", [(1, 1, "N"), (2, 1, "2N-1"), (3, 1, "3N-2"),
                                                (2, 2, "2N"), (1, 2, "N+1"), (1, 0, "N-1"),
                                                (None, None, "adaptive")])
def test_nfe_rule(per_step, last, rule):
    assert cli.nfe_rule(_Spec(per_step, last)) == rule


def test_nfe_rule_of_a_schedule_counted_sampler():
    assert cli.nfe_rule(_Spec(None, None, count_nfe=lambda sigmas, options: 0)) == "varies"
    assert cli.nfe_rule(samplers.get("restart")) == "varies"


def test_table_shrinks_only_the_named_columns():
    rows = [["a", "x" * 50, "y" * 50], ["bb", "short", "z"]]
    text = cli._table(["name", "long", "other"], rows, shrink={"long": 10}, width=70)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 70
    assert "y" * 50 in lines[2]  # not shrinkable: kept whole
    assert lines[2].split() == ["a", "x" * 9 + "...", "y" * 50]  # 4 + 12 + 50 + 2 gaps of 2 = 70

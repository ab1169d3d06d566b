"""The ``edm`` command line: the click group, and the commands that look up what the registries offer.

Entry point ``edm = tools.cli:main`` (setup.cfg); also runs as ``python -m tools.cli``.
The commands live beside the libraries they front (``tools/generate/cli.py``, ``tools/fid/cli.py``,
``tools/compare/cli.py``, ``tools/models/cli.py``, ``tools/train_cli.py``,
``tools/train_classifier_cli.py``) and share their sampling options
(``tools/options.py``). The registries (and with them torch) are imported inside the commands, so
``edm --help`` starts without importing torch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

from .common import format_value, jsonable

DISTRIBUTION = "edm-samplers"
TABLE_WIDTH = 120  # tables shrink their long text columns to fit this many characters
ELLIPSIS = "..."


def _version() -> str:
    """The installed version of the distribution, or "unknown" when running from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------
# Formatting helpers


def _format_options(options: Mapping[str, Any]) -> str:
    """``key=value`` pairs separated by spaces; "-" when there are none."""
    return " ".join(f"{k}={format_value(v)}" for k, v in options.items()) or "-"


def _echo_json(records: list[dict[str, Any]]) -> None:
    click.echo(json.dumps(jsonable(records), indent=2, allow_nan=False))


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - len(ELLIPSIS), 0)] + ELLIPSIS


def _table_width() -> int:
    """TABLE_WIDTH, or the terminal's width where that is wider."""
    return max(TABLE_WIDTH, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, shrink: Mapping[str, int] | None = None,
           width: int | None = None, gap: int = 2) -> str:
    """Rows as left-aligned columns; the ``shrink`` columns are truncated until the table fits ``width``.

    ``shrink`` maps a column's header to the narrowest it may become. The widest shrinkable column loses
    a character at a time; the other columns keep their full width (they are short by construction:
    names, numbers, flags).
    """
    width = _table_width() if width is None else width
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    floors = {headers.index(name): max(floor, len(name)) for name, floor in (shrink or {}).items()}
    while sum(widths) + gap * (len(widths) - 1) > width:
        candidates = [i for i, floor in floors.items() if widths[i] > floor]
        if not candidates:
            break
        widths[max(candidates, key=lambda i: widths[i])] -= 1
    sep = " " * gap
    lines = [sep.join(h.ljust(w) for h, w in zip(headers, widths)),
             sep.join("-" * w for w in widths)]
    lines += [sep.join(_truncate(cell, w).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _lookup(names: Sequence[str], lookup: Callable[[str], Any], param_hint: str) -> list[Any]:
    """Registry records for ``names`` (unique, in the order given); a usage error for an unknown one.

    The registries raise ValueError with a one-line message that lists the valid names; it becomes a
    click usage error (exit code 2, no traceback).
    """
    records = []
    for name in dict.fromkeys(names):
        try:
            records.append(lookup(name))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=param_hint) from None
    return records


# ---------------------------------------------------------------------------------------------------
# Samplers


def nfe_rule(spec) -> str:
    """The sampler's denoiser evaluations for N steps as a formula in N: "N", "2N-1", ..., "adaptive",
    or "varies" for a sampler whose count depends on the schedule's levels.

    From the spec: N steps cost ``(N - 1) * nfe_per_step + last_step_nfe``.
    """
    if spec.adaptive:  # restart's count depends on where its intervals fall in the schedule
        return "varies" if spec.count_nfe is not None else "adaptive"
    per_step, last = spec.nfe_per_step, spec.last_step_nfe
    if callable(per_step) or callable(last):  # an option sets the cost: the rule at the default options
        per_step, last = spec.step_costs()
    offset = last - per_step
    if per_step == 0:
        return str(last)
    rule = "N" if per_step == 1 else f"{per_step}N"
    if offset:
        rule += f"{offset:+d}"
    return rule


def sampler_record(spec) -> dict[str, Any]:
    """Everything the registry knows about a sampler, as plain data (the ``--json`` entry)."""
    return {
        "name": spec.name,
        "order": spec.order,
        "nfe": nfe_rule(spec),
        "nfe_per_step": spec.nfe_per_step,
        "last_step_nfe": spec.last_step_nfe,
        "adaptive": spec.adaptive,
        "stochastic": spec.stochastic,
        "noise": spec.noise,
        "cfg_pp": spec.cfg_pp,
        "options": dict(spec.options),
        "reference": spec.reference,
        "description": spec.description,
    }


def samplers_table(specs) -> str:
    headers = ["name", "order", "NFE", "stochastic", "noise", "cfg++", "options", "reference"]
    rows = [[s.name, str(s.order), nfe_rule(s), _yes_no(s.stochastic), s.noise or "none", _yes_no(s.cfg_pp),
             _format_options(s.options), s.reference] for s in specs]
    return _table(headers, rows, shrink={"options": 24, "reference": 20})


def alias_record(alias) -> dict[str, Any]:
    """A sampler alias (``samplers.aliases.Alias``) as plain data (the ``--aliases --json`` entry)."""
    return {"alias": alias.name, "sampler": alias.sampler, "schedule": alias.schedule, "cfg_pp": alias.cfg_pp,
            "source": alias.source}


def aliases_table(aliases) -> str:
    headers = ["alias", "sampler", "schedule", "cfg++", "source"]
    rows = [[a.name, a.sampler, a.schedule or "default", _yes_no(a.cfg_pp), a.source] for a in aliases]
    return _table(headers, rows)


# ---------------------------------------------------------------------------------------------------
# Schedules


def schedule_record(spec) -> dict[str, Any]:
    """Everything the registry knows about a schedule, as plain data (the ``--json`` entry)."""
    return {
        "name": spec.name,
        "options": dict(spec.options),
        "needs_table": spec.needs_table,
        "range_optional": spec.range_optional,
        "description": spec.description,
        "reference": spec.reference,
    }


def schedules_table(specs) -> str:
    headers = ["name", "options", "table", "range", "description", "reference"]
    rows = [[s.name, _format_options(s.options), _yes_no(s.needs_table),
             "optional" if s.range_optional else "required", s.description, s.reference] for s in specs]
    return _table(headers, rows, shrink={"options": 16, "description": 24, "reference": 20})


# ---------------------------------------------------------------------------------------------------
# Commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": TABLE_WIDTH})
@click.version_option(_version(), "-V", "--version", prog_name="edm", message="%(prog)s %(version)s")
def main() -> None:
    """Sample diffusion models the EDM way (Karras et al. 2022).

    A trained network becomes a denoiser D(x; sigma). A schedule picks the noise levels sigma it is
    evaluated at, from sigma_max down to 0, and a sampler walks down them. Each denoiser call is one
    function evaluation (NFE), the cost samplers are compared at.

    Start with `edm samplers` and `edm schedules` to see what is available. `edm COMMAND --help`
    explains each command.
    """


@main.command("samplers")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (full text, all fields) instead.")
@click.option("--aliases", "aliases", is_flag=True,
              help="List the sampler names of A1111/Forge and ComfyUI that --sampler also takes, with the "
                   "sampler, schedule and CFG++ each means.")
def samplers_command(names: tuple[str, ...], as_json: bool, aliases: bool) -> None:
    """List the registered samplers, or only those NAMEd.

    \b
    Columns:
      order       order of accuracy of the ODE solver
      NFE         denoiser evaluations for N steps ("2N-1": the last step, onto
                  sigma = 0, takes one call); "adaptive": chosen while it runs;
                  "varies": counted on the schedule it runs (restart)
      stochastic  whether it injects fresh noise by default
      noise       kind of noise it can draw: iid normals, increments of one
                  Brownian path, or none
      cfg++       whether it takes --cfg-pp (CFG++ guidance)
      options     the options it accepts, with their defaults
    """
    import samplers

    if aliases:
        from samplers.aliases import ALIASES

        if names:
            raise click.UsageError("--aliases lists the whole table: give no NAME")
        table = list(ALIASES.values())
        _echo_json([alias_record(a) for a in table]) if as_json else click.echo(aliases_table(table))
        return

    specs = _lookup(names or samplers.list(), samplers.get, "NAME")
    if as_json:
        _echo_json([sampler_record(s) for s in specs])
    else:
        click.echo(samplers_table(specs))


@main.command("schedules")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (full text, all fields) instead.")
def schedules_command(names: tuple[str, ...], as_json: bool) -> None:
    """List the registered sigma schedules, or only those NAMEd.

    \b
    Columns:
      options  the options it accepts, with their defaults
      table    "yes": picks levels from a discrete-time model's sigma table
               (passed as sigmas=)
      range    whether sigma_min and sigma_max are required or optional

    Besides these, --schedule file:PATH runs a schedule written by `edm tune-schedule`, and
    --schedule diffusers (diffusers:DIR models) the timesteps of the sampler's diffusers counterpart
    built from the model's own scheduler config.
    """
    from samplers import schedules

    specs = _lookup(names or schedules.list(), schedules.spec, "NAME")
    if as_json:
        _echo_json([schedule_record(s) for s in specs])
    else:
        click.echo(schedules_table(specs))


def _register_commands() -> None:
    # Each command lives beside the library it fronts; importing them is cheap (torch loads when one runs).
    from .compare.cli import bench
    from .distill_cli import distill
    from .fid.cli import fid
    from .generate.cli import generate
    from .models.cli import info
    from .train_classifier_cli import train_classifier
    from .train_cli import train
    from .tune_cli import tune_schedule, tune_solver

    for command in (bench, distill, fid, generate, info, train, train_classifier, tune_schedule, tune_solver):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()

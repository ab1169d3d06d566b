"""The ``edm generate`` and ``edm info`` commands (click command objects; ``tools.cli`` registers them).

Also runs on its own, e.g. under torchrun:
``torchrun --standalone --nproc_per_node 2 -m tools.generate_cli generate --outdir out``.
torch and the registries are imported when a command runs (or its help is shown), so importing this
module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")

# What each sampler option means, for --help (options not listed here still get a flag).
OPTION_HELP = {
    "eta": "Noise scale of ancestral/SDE steps: 0 is deterministic (the ODE), 1 the full reverse SDE.",
    "s_noise": "Scale of the fresh noise (EDM's S_noise; slightly above 1 offsets detail loss).",
    "s_churn": "EDM churn: noise added back per step (EDM's S_churn; 0 is deterministic).",
    "s_tmin": "Churn only at sigma >= this (EDM's S_tmin).",
    "s_tmax": "Churn only at sigma <= this (EDM's S_tmax).",
    "r": "Where the intermediate evaluation sits, as a fraction of the step in log sigma.",
    "order": "Order of the solver (lms: history length; dpm_adaptive: 2 or 3).",
    "solver_type": "Second-order correction of dpmpp_2m_sde: midpoint or heun.",
    "rtol": "Relative error tolerance of the adaptive step-size control.",
    "atol": "Absolute error tolerance of the adaptive step-size control.",
    "h_init": "Initial step size (in log sigma) of the adaptive solver.",
    "pcoeff": "Proportional coefficient of the PID step-size controller.",
    "icoeff": "Integral coefficient of the PID step-size controller.",
    "dcoeff": "Derivative coefficient of the PID step-size controller.",
    "accept_safety": "Accept an adaptive step when its scaled error is at most this.",
}

# GenerateError.param -> the flag named in the error message.
PARAM_FLAGS = {"model": "--model", "seeds": "--seeds", "sampler": "--sampler", "schedule": "--schedule",
               "steps": "--steps", "nfe": "--nfe", "batch": "--batch", "device": "--device",
               "dtype": "--dtype", "guidance": "--guidance", "class_label": "--class", "outdir": "--outdir",
               "grid": "--grid", "rho": "--rho"}

SAMPLER_OPTION_PREFIX = "sampler_option_"
SECTIONS = ("Model", "Sampling", "Sampler options", "Seeds and classes", "Output", "Device", "Other")


# ---------------------------------------------------------------------------------------------------
# Options in sections, and one flag per sampler option of the registry


class SectionOption(click.Option):
    """A click option that belongs to a section of the help page."""

    def __init__(self, *args, section: str = "Other", **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


def option(section: str, *decls: str, **attrs):
    return click.option(*decls, cls=SectionOption, section=section, **attrs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _format_default(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option_type(defaults: list[Any]) -> click.ParamType:
    """The click type of an option from its defaults across samplers (INT only if every default is)."""
    kinds = {type(v) for v in defaults}
    if kinds == {bool}:
        return click.BOOL
    if kinds <= {int}:
        return click.INT
    if kinds <= {int, float}:
        return click.FLOAT
    return click.STRING


def sampler_option_params(reserved: set[str]) -> list[click.Option]:
    """One ``--flag`` per option name in the sampler registry, defaulting to None ("not given").

    The help lists which samplers take it and their defaults. A name whose flag would clash with one of
    ``reserved`` becomes ``--sampler-NAME``.
    """
    import samplers

    by_option: dict[str, dict[str, Any]] = {}
    for name in samplers.list():
        for key, default in samplers.get(name).options.items():
            by_option.setdefault(key, {})[name] = default
    params = []
    for key, defaults in by_option.items():
        flag = _flag(key)
        if flag in reserved:
            flag = _flag(f"sampler_{key}")
        groups: dict[str, list[str]] = {}
        for sampler, default in defaults.items():
            groups.setdefault(_format_default(default), []).append(sampler)
        where = "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())
        text = f"{OPTION_HELP.get(key, '')} Default {where}.".strip()
        params.append(SectionOption([flag, SAMPLER_OPTION_PREFIX + key], default=None, help=text,
                                    type=_option_type(list(defaults.values())), section="Sampler options",
                                    metavar="VALUE"))
    return params


class SectionedCommand(click.Command):
    """A command whose options are listed in sections; ``sampler_options=True`` adds the registry's."""

    def __init__(self, *args, sampler_options: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending_sampler_options = sampler_options

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._pending_sampler_options:  # on first use: importing the registry imports torch
            self._pending_sampler_options = False
            reserved = {flag for p in self.params for flag in (*p.opts, *p.secondary_opts)}
            self.params.extend(sampler_option_params(reserved))
        return super().get_params(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {name: [] for name in SECTIONS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):
                groups.setdefault(getattr(param, "section", "Other"), []).append(record)
        for name, records in groups.items():
            if records:
                with formatter.section(name):
                    formatter.write_dl(records)


# ---------------------------------------------------------------------------------------------------
# edm generate


def _parse_seeds(ctx, param, value):
    from .seeds import parse_seeds

    try:
        return parse_seeds(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _coerce(value: Any, default: Any) -> Any:
    """A flag's value in the type of the chosen sampler's default (``--order 3.0`` -> 3 for an int)."""
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        if value.is_integer():
            return int(value)
    return value


def _sampler_options(sampler: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The given sampler-option flags as keyword options; a usage error for one the sampler lacks."""
    import samplers

    try:
        spec = samplers.get(sampler)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--sampler'") from None
    unknown = [key for key in given if key not in spec.options]
    if unknown:
        valid = ", ".join(_flag(k) for k in spec.options) or "none"
        raise click.UsageError(f"sampler {sampler!r} has no option {', '.join(_flag(k) for k in unknown)}; "
                               f"its options: {valid} (see `edm samplers {sampler}`)")
    return {key: _coerce(value, spec.options[key]) for key, value in given.items()}


def _usage_error(error) -> click.UsageError:
    flag = PARAM_FLAGS.get(error.param)
    if flag:
        return click.BadParameter(str(error), param_hint=f"'{flag}'")
    return click.UsageError(str(error))


@click.command("generate", cls=SectionedCommand, sampler_options=True, context_settings=CONTEXT)
@option("Model", "--model", "model", default="digits", show_default=True, metavar="SPEC",
        help="The model: 'digits' (built in), a checkpoint NAME[.json|.safetensors], 'diffusers:DIR' "
             "(a saved UNet2DModel and scheduler), or an NVlabs network .pkl (needs --trust-pickle).")
@option("Model", "--trust-pickle", is_flag=True,
        help="Allow loading a pickle. Pickles run code when loaded: only for files you trust.")
@option("Sampling", "--sampler", default="heun", show_default=True, metavar="NAME",
        help="The sampler (`edm samplers` lists them with their options).")
@option("Sampling", "--steps", type=click.IntRange(min=1), default=None, metavar="N",
        help="Number of steps (noise levels before the final 0).  [default: 18, as EDM]")
@option("Sampling", "--nfe", type=click.IntRange(min=1), default=None, metavar="N",
        help="Instead of --steps: a budget of denoiser evaluations per image; takes the most steps "
             "that fit (e.g. heun: 35 NFE = 18 steps).")
@option("Sampling", "--schedule", default="karras", show_default=True, metavar="NAME",
        help="The sigma schedule (`edm schedules` lists them), or file:PATH for a schedule file "
             "written by `edm tune-schedule`.")
@option("Sampling", "--sigma-min", type=float, default=None, metavar="SIGMA",
        help="Lowest nonzero noise level.  [default: the model's]")
@option("Sampling", "--sigma-max", type=float, default=None, metavar="SIGMA",
        help="Highest noise level, where sampling starts.  [default: the model's]")
@option("Sampling", "--rho", type=float, default=None, metavar="RHO",
        help="Schedule exponent of karras (default 7) and polyexponential (default 1).")
@option("Seeds and classes", "--seeds", default="0-63", show_default=True, callback=_parse_seeds,
        metavar="LIST", help="Seeds, one image each: ranges and commas, e.g. 0-63,100.")
@option("Seeds and classes", "--class", "class_label", type=click.IntRange(min=0), default=None, metavar="C",
        help="Class of every image (class-conditional models).  [default: drawn from each seed]")
@option("Seeds and classes", "--guidance", type=float, default=0.0, show_default=True, metavar="W",
        help="Classifier-free guidance weight w: D + w (D - D_uncond); 0 is none (diffusers' "
             "guidance_scale is 1 + w). Class-conditional models only.")
@option("Output", "--outdir", required=True, type=click.Path(file_okay=False), metavar="DIR",
        help="Where the images go: DIR/000042.png for seed 42 (created if missing).")
@option("Output", "--subdirs", is_flag=True, help="One subfolder per 1000 seeds: DIR/001000/001042.png.")
@option("Output", "--grid", type=click.Path(dir_okay=False), default=None, metavar="PATH",
        help="Also tile all the images, in --seeds order, into one near-square PNG at PATH.")
@option("Output", "--overwrite", is_flag=True,
        help="Re-create images that already exist (by default they are skipped: reruns resume).")
@option("Output", "--batch", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
        help="Images per batch: changes speed and memory, not the images.")
@option("Output", "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@option("Device", "--device", default=None, metavar="DEVICE",
        help="cpu, cuda or cuda:N.  [default: cuda if available, else cpu]")
@option("Device", "--dtype", type=click.Choice(DTYPE_NAMES), default="float32", show_default=True,
        help="Precision of the model (the sampler keeps float32, float64 for float64).")
def generate_command(model, trust_pickle, sampler, steps, nfe, schedule, sigma_min, sigma_max, rho, seeds,
                     class_label, guidance, outdir, subdirs, grid, overwrite, batch, progress, device, dtype,
                     **sampler_flags):
    """Write one PNG per seed, sampled from a diffusion model.

    Each image depends on its seed alone: the same seed gives the same image whatever --batch, its
    place in the batch or the number of processes. Images are named by seed (DIR/000042.png). Existing
    images are skipped, so a rerun of an interrupted command finishes it; --overwrite redoes them.
    Every argument is checked before anything is written.

    \b
    Examples:
      edm generate --outdir out                         64 digits, heun, 18 steps
      edm generate --outdir out --seeds 0-9 --class 3 --grid grid.png
      edm generate --outdir out --sampler dpmpp_2m_sde --nfe 20 --eta 0.5
      edm generate --outdir out --sampler euler_ancestral --guidance 1.5
      edm generate --outdir out --model runs/ckpt.json --sampler edm --s-churn 40
      torchrun --standalone --nproc_per_node 4 -m tools.cli generate \\
          --outdir out --seeds 0-49999 --subdirs        one share of the seeds per process

    `edm samplers` and `edm schedules` list what --sampler and --schedule accept, with each
    sampler's options; `edm info MODEL` describes a model.
    """
    from . import generate as pipeline

    given = {key[len(SAMPLER_OPTION_PREFIX):]: value for key, value in sampler_flags.items()
             if value is not None}
    options = _sampler_options(sampler, given)
    if steps is not None and nfe is not None:
        raise click.UsageError("--steps and --nfe are mutually exclusive: give one")
    try:
        plan = pipeline.prepare(model, seeds, outdir, sampler=sampler, schedule=schedule, steps=steps,
                                nfe=nfe, options=options, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                                batch=batch, class_label=class_label, guidance=guidance, subdirs=subdirs,
                                grid=grid, overwrite=overwrite, device=device, dtype=dtype, progress=progress,
                                trust_pickle=trust_pickle)
    except pipeline.GenerateError as e:
        raise _usage_error(e) from None
    if progress and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"Generating {plan.describe()}", err=True)
    import torch

    try:
        summary = pipeline.run(plan)
    except torch.OutOfMemoryError:
        raise click.ClickException(f"out of memory on {plan.device} with --batch {plan.batch}: "
                                   "try a smaller --batch") from None
    except OSError as e:
        raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None
    if summary.rank == 0:
        click.echo(summary.line())


# ---------------------------------------------------------------------------------------------------
# edm info


def _jsonable(value: Any) -> Any:
    import torch

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist()) if value.numel() <= 16 else f"tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return str(value)


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_compact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parameters(loaded) -> int | None:
    count = loaded.info.get("parameters")
    if isinstance(count, int) and count > 0:
        return count
    try:
        return sum(p.numel() for p in loaded.denoiser.parameters()) or None
    except (AttributeError, TypeError):
        return None


def model_record(spec: str, loaded) -> dict[str, Any]:
    """What ``edm info --json`` prints: the common fields, then everything the loader recorded."""
    info = dict(loaded.info)
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    sigmas = loaded.sigmas
    return {
        "model": spec,
        "kind": loaded.kind,
        "source": loaded.source,
        "shape": list(loaded.shape),
        "num_classes": loaded.num_classes,
        "sigma_min": loaded.sigma_min,
        "sigma_max": loaded.sigma_max,
        "sigma_table": None if sigmas is None else len(sigmas),
        "precond": info.get("scheme") or info.get("precond"),
        "parameters": _parameters(loaded),
        "command": config.get("command") or info.get("command"),
        "info": info,
    }


def model_block(record: Mapping[str, Any]) -> str:
    """The readable ``edm info`` block."""
    info = record["info"]
    classes = record["num_classes"]
    channels, height, width = record["shape"]
    rows = [
        ("model", record["model"]),
        ("kind", record["kind"]),
        ("source", record["source"]),
    ]
    if info.get("files"):
        rows.append(("files", ", ".join(str(f) for f in info["files"])))
    rows += [
        ("image shape", f"{channels} x {height} x {width} (channels x height x width)"),
        ("classes", f"{classes} (class-conditional: --class 0..{classes - 1}, --guidance)" if classes
         else "none (unconditional)"),
        ("sigma range", f"{record['sigma_min']:g} .. {record['sigma_max']:g}"),
        ("sigma table", f"{record['sigma_table']} discrete levels (table schedules: simple, normal, ...)"
         if record["sigma_table"] else "none (continuous sigma)"),
    ]
    if record["precond"] is not None:
        rows.append(("preconditioning", _compact(record["precond"])))
    if isinstance(info.get("network"), Mapping):
        network = info["network"]
        rows.append(("network", f"{network.get('name', '?')} {_compact(network.get('kwargs', {}))}"))
    if record["parameters"]:
        rows.append(("parameters", f"{record['parameters']:,}"))
    for key in ("prediction", "num_train_timesteps", "layout", "class", "sigma_data", "use_fp16", "note"):
        if key in info:
            rows.append((key.replace("_", " "), _compact(info[key])))
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    extras = {k: v for k, v in config.items() if k not in ("format", "network", "precond", "data", "command")}
    rows.append(("training command", record["command"] or "not recorded"))
    for key, value in extras.items():
        rows.append((key.replace("_", " "), _compact(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command("info", context_settings=CONTEXT)
@click.argument("model", default="digits", metavar="[MODEL]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (all recorded fields) instead.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a pickle (runs code when loaded).")
def info_command(model: str, as_json: bool, trust_pickle: bool) -> None:
    """Describe a model: kind, source, image shape, classes, sigma range, preconditioning, size.

    MODEL is 'digits' (the built-in model, the default), a checkpoint NAME[.json|.safetensors],
    'diffusers:DIR' or an NVlabs network .pkl (with --trust-pickle).

    \b
    Examples:
      edm info
      edm info runs/ckpt.json --json
    """
    from .models import ModelError, load_model

    try:
        loaded = load_model(model, device="cpu", trust_pickle=trust_pickle)
    except ModelError as e:
        raise click.BadParameter(str(e), param_hint="'MODEL'") from None
    record = model_record(model, loaded)
    if as_json:
        click.echo(json.dumps(_jsonable(record), indent=2, allow_nan=False))
    else:
        click.echo(model_block(record))


@click.group(context_settings=CONTEXT)
def main() -> None:
    """`edm generate` and `edm info` on their own (for torchrun: -m tools.generate_cli generate ...)."""


main.add_command(generate_command)
main.add_command(info_command)

# The names the lead registers in tools.cli.
generate = generate_command
info = info_command

if __name__ == "__main__":
    main()

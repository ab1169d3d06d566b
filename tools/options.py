"""The command line's one set of sampling options, declared once and shared by every command that samples
(``edm generate``, ``edm fid gen``, ``edm bench``, ``edm tune-schedule``): same names, same checks, same
help text. Also the pieces every command uses: help sections, one flag per sampler option of the registry,
and the translation of library errors into one-line usage errors.

Nothing here imports torch at module level; the registry (and torch) is imported when a command's options
are listed or it runs.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .common import CONTEXT, BadInput, flagged, one_line
from .request import STAGE_FIELDS
from .steering import Steering
from .steering import flags as steering_flags

__all__ = ["CONTEXT", "DETECTORS", "DTYPE_NAMES", "SAMPLING_PARAMS", "SectionedCommand", "cli_errors",
           "command", "detector_option", "detector_weights_option", "flag_of", "one_of", "one_sampler",
           "RECORDED_DEFAULTS", "option", "option_value", "parse_list", "progress_option", "prompting",
           "refuse_sampler_flags", "report_ignored", "sampler_options",
           "sampling_options", "seeds_option", "steering", "usage_error", "channel_mult_value",
           "sigma_data_value", "training_data_value"]

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
SAMPLER_OPTION_PREFIX = "sampler_option_"
SECTIONS = ("Model", "Sampling", "Sampler options", "Seeds and classes", "Text", "Super-resolution",
            "Super-resolution stage", "Guidance", "Editing", "Reference",
            "Output", "Device", "Other")
# BadInput.param -> flag, where the flag is not simply --param-name (None: the message names the option)
_FLAGS = {"class_label": "--class", "options": None, "cond": "--model", "samplers": "--sampler",
          "schedules": "--schedule"}


# ---------------------------------------------------------------------------------------------------
# Errors


def flag_of(param: str | None) -> str | None:
    """The flag that gives a library argument: ``class_label`` -> ``--class``, ``ode_num`` -> ``--ode-num``.
    """
    if not param:
        return None
    return _FLAGS[param] if param in _FLAGS else "--" + param.replace("_", "-")


def typed_flag(name: str) -> str | None:
    """The flag of the running command that gives library parameter ``name`` (``sigma_min`` ->
    ``--sigma-min``; a sampler option's, ``corrector`` -> ``--sampler-corrector``), or None outside a
    command or where it has no such flag."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    for param in ctx.command.get_params(ctx):
        if isinstance(param, click.Option) and param.name in (name, SAMPLER_OPTION_PREFIX + name):
            return next((opt for opt in param.opts if opt.startswith("--")), None)
    return None


def usage_error(error: BaseException, flag: str | None = None,
                typed: Mapping[str, str] | None = None) -> click.UsageError:
    """A library error as a click usage error (exit 2, one line) naming ``flag`` or the error's own param.

    The library parameter names the error declares (``BadInput.terms``) become the flags that give them
    (``typed`` first: how the user gave a name some other way, e.g. ``--option restart.s_noise``); a
    message that then names its flags needs no ``Invalid value for`` hint."""
    terms = getattr(error, "terms", ())
    flags = {term: (typed or {}).get(term) or typed_flag(term) for term in terms}
    message = one_line(error)
    named = flagged(message, {term: given for term, given in flags.items() if given})
    if named != message:
        return click.UsageError(named)
    flag = flag or flag_of(getattr(error, "param", None))
    if flag:
        return click.BadParameter(message, param_hint=f"'{flag}'")
    return click.UsageError(message)


@contextlib.contextmanager
def cli_errors(device=None, batch: int | None = None,
               typed: Mapping[str, str] | None = None) -> Iterator[None]:
    """Bad input -> usage error (exit 2; ``typed``: see :func:`usage_error`); out of memory and
    file-system errors -> one line (exit 1)."""
    try:
        yield
    except BadInput as e:
        raise usage_error(e, typed=typed) from None
    except OSError as e:
        message = f"{e.strerror or e}: {e.filename}" if e.filename else one_line(e)
        raise click.ClickException(message) from None
    except RuntimeError as e:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            where = f" on {device}" if device is not None else ""
            raise click.ClickException(f"out of memory{where} with --batch {batch}: try a smaller --batch") \
                from None
        raise


# ---------------------------------------------------------------------------------------------------
# Help in sections; one flag per sampler option of the registry


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


def sampler_option_params(reserved: set[str], stage: str | None = None) -> list[click.Option]:
    """One ``--flag`` per option name in the sampler registry, defaulting to None ("not given").

    The help is the registry's description of the option, then which samplers take it and their defaults.
    A name whose flag would clash with one of ``reserved`` becomes ``--sampler-NAME``. ``stage``: the
    flags of a cascade's stage instead (``"sr"``: ``--sr-eta``, parameter ``sr_sampler_option_eta``).
    """
    import samplers
    from samplers.registry import OPTION_HELP

    by_option: dict[str, dict[str, Any]] = {}
    described: dict[str, str] = {}
    for name in samplers.list():
        spec = samplers.get(name)
        for key, default in spec.options.items():
            by_option.setdefault(key, {})[name] = default
            # the shared meaning where there is one (a sampler's own wording is in `edm samplers NAME`)
            described.setdefault(key, OPTION_HELP.get(key) or spec.option_help[key])
    params = []
    for key, defaults in by_option.items():
        flag = _flag(key)
        if flag in reserved:
            flag = _flag(f"sampler_{key}")
        groups: dict[str, list[str]] = {}
        for sampler, default in defaults.items():
            groups.setdefault(_format_default(default), []).append(sampler)
        where = "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())
        name, help_text, section = SAMPLER_OPTION_PREFIX + key, f"{described[key]} Default {where}.", \
            "Sampler options"
        if stage is not None:
            flag, name = stage_flag(flag, stage), f"{stage}_{name}"
            help_text, section = f"{STAGE_HELP} {help_text}", STAGE_SECTION
        params.append(SectionOption([flag, name], default=None, help=help_text,
                                    type=_option_type(list(defaults.values())), section=section,
                                    metavar="VALUE"))
    return params


class SectionedCommand(click.Command):
    """A command whose options are listed in sections; ``sampler_options=True`` adds the registry's.
    ``not_taken``: flag -> why, for flags other commands have and this one does not (neither shown nor
    parsed): typing one gets the why instead of click's guess at a similar flag."""

    def __init__(self, *args, sampler_options: bool = False, not_taken: Mapping[str, str] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._pending_sampler_options = sampler_options
        self.not_taken = dict(not_taken or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            why = self.not_taken.get(e.option_name)
            if why:
                raise click.UsageError(f"{e.option_name} is not an option here: {why}", ctx) from None
            raise

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._pending_sampler_options:  # on first use: importing the registry imports torch
            self._pending_sampler_options = False
            # every sampling flag, taken here or not: a sampler option keeps one flag in every command
            reserved = {flag for p in self.params for flag in (*p.opts, *p.secondary_opts)}
            reserved |= {flag for _, decls, _ in SAMPLING_PARAMS.values() for flag in decls}
            stages = [p.name.removesuffix("_model") for p in self.params if p.name in STAGE_MODELS]
            self.params.extend(sampler_option_params(reserved))
            for stage in stages:  # a cascade's stage: its own copy of every sampler option
                self.params.extend(sampler_option_params(reserved, stage))
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


def command(name: str, sampler_options: bool = True, **attrs) -> Callable:
    """A click command with sectioned help and (``sampler_options``) the registry's sampler-option flags."""
    return click.command(name, cls=SectionedCommand, sampler_options=sampler_options,
                         context_settings=CONTEXT, **attrs)


# ---------------------------------------------------------------------------------------------------
# Values


def parse_list(value, what: str, param: str | None = None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (stripped, without repeats); BadInput when empty."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
    if not names:
        raise BadInput(f"no {what} given", param)
    return names


def one_of(values: Sequence[str], what: str, param: str, command: str) -> str:
    """The single value of a list option (``edm bench`` takes lists; the other commands one value)."""
    if len(values) != 1:
        raise BadInput(f"give one {what} ({command} samples one; `edm bench` compares several)", param)
    return values[0]


def _budgets(ctx, param, value):
    if value is None:
        return None
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise click.BadParameter(f"expected a positive integer (or for edm bench a list such as 5,10,20), "
                                 f"got {value!r}", ctx=ctx, param=param)
    return sorted({int(item) for item in items})


def _seeds(ctx, param, value):
    if value is None:
        return None
    from .seeds import parse_seeds

    try:
        return parse_seeds(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def seeds_option(default: str | None, help_text: str):
    """``--seeds`` in NVlabs' syntax (``0-63,100``), parsed into a list of ints."""
    return option("Seeds and classes", "--seeds", default=default, show_default=default is not None,
                  callback=_seeds, metavar="LIST", help=help_text)


def _coerce(value: Any, default: Any) -> Any:
    """A flag's value in the type of the sampler's default (``--order 3.0`` -> 3 for an int option)."""
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        if value.is_integer():
            return int(value)
    return value


def sampler_options(names: Sequence[str], flags: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The given sampler-option flags as keyword options per sampler.

    With one sampler every given option must be one of its own; with several (``edm bench``) each goes to
    the samplers that have it and must belong to at least one. Usage errors otherwise.
    """
    import samplers

    given = {key[len(SAMPLER_OPTION_PREFIX):]: value for key, value in flags.items()
             if key.startswith(SAMPLER_OPTION_PREFIX) and value is not None}
    specs = []
    for name in names:
        try:
            specs.append(samplers.get(name))
        except ValueError as e:
            raise click.BadParameter(one_line(e), param_hint="'--sampler'") from None
    if len(specs) == 1:
        try:
            samplers.check_options(specs[0], given)
        except ValueError as e:
            error = BadInput(f"{one_line(e)} (see `edm samplers {specs[0].name}`)",
                             terms=(*given, *specs[0].options))
            raise usage_error(error) from None
    unknown = [key for key in given if not any(key in spec.options for spec in specs)]
    if unknown:
        raise click.UsageError(f"none of the samplers {', '.join(names)} has option "
                               f"{', '.join(_flag(k) for k in unknown)}")
    return {spec.name: {key: _coerce(value, spec.options[key]) for key, value in given.items()
                        if key in spec.options} for spec in specs}


def refuse_sampler_flags(flags: Mapping[str, Any], what: str) -> None:
    """A usage error naming the sampler-option flags given (``--eta``), which ``what`` does not take."""
    given = [_flag(key[len(SAMPLER_OPTION_PREFIX):]) for key, value in flags.items()
             if key.startswith(SAMPLER_OPTION_PREFIX) and value is not None]
    if given:
        raise click.UsageError(f"{what} takes no sampler options (got {', '.join(given)})")


def one_sampler(sampler: str, steps, nfe, flags: Mapping[str, Any], command: str,
                schedule_param: str = "schedule") -> tuple[int | None, dict]:
    """For a command that samples one way: ``(nfe, options)`` from ``--steps``/``--nfe`` (at most one, one
    budget) and the sampler-option flags (each one the sampler has); usage errors otherwise.
    ``schedule_param``: the parameter of the schedule flag that goes with this sampler (a stage's own)."""
    if steps is not None and nfe is not None:
        raise click.UsageError("--steps and --nfe are mutually exclusive: give one")
    try:
        nfe = None if nfe is None else one_of(nfe, "NFE budget", "nfe", command)
    except BadInput as e:
        raise usage_error(e) from None
    if sampler is None:  # the model's recorded sampler: its options are checked once the model is loaded
        return nfe, {key[len(SAMPLER_OPTION_PREFIX):]: value for key, value in flags.items()
                     if key.startswith(SAMPLER_OPTION_PREFIX) and value is not None}
    from tools.solvers.use import special_sampler

    kind = special_sampler(sampler)
    if kind is None:
        return nfe, sampler_options([sampler], flags)[sampler]
    what = "a fitted solver (--sampler file:PATH)" if kind == "file" else "--sampler auto"
    refuse_sampler_flags(flags, what)
    if _typed(schedule_param):
        raise click.BadParameter(f"{what} picks its own noise levels: drop --schedule",
                                 param_hint="'--schedule'")
    return nfe, {}


def _typed(param: str) -> bool:
    """The flag of the current command's parameter ``param`` was given on the command line (not defaulted)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and param in ctx.params and (
        ctx.get_parameter_source(param) is not click.core.ParameterSource.DEFAULT)


def sampler_alias(sampler: str | None, schedule: str | None,
                  schedule_param: str = "schedule") -> tuple[str | None, str | None, bool]:
    """``(sampler, schedule, cfg_pp)`` that a sampler name typed as elsewhere means (``samplers.aliases``:
    "DPM++ 2M Karras" is dpmpp_2m on karras, "euler_cfg_pp" euler with CFG++); other names unchanged. A
    usage error when the alias names a schedule and ``--schedule`` names another."""
    if sampler is None:
        return sampler, schedule, False
    from samplers.aliases import resolve

    alias = resolve(sampler)
    if alias is None:
        return sampler, schedule, False
    if alias.schedule is not None:
        if schedule is not None and schedule != alias.schedule and _typed(schedule_param):
            raise click.BadParameter(f"--sampler {sampler!r} samples on the {alias.schedule} schedule, not "
                                     f"{schedule}: drop --schedule or name the sampler without the schedule",
                                     param_hint="'--schedule'")
        schedule = alias.schedule
    return alias.sampler, schedule, alias.cfg_pp


def option_value(text: str):
    """A number, bool or list as JSON writes it (``inf``/``nan`` as floats), else the text itself."""
    for parse in (json.loads, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------------------------------------------
# The sampling options

MODEL_HELP = ("The model: 'digits' (built in), a checkpoint NAME[.json|.safetensors], 'diffusers:DIR' (a "
              "saved UNet2DModel and scheduler, or a Stable Diffusion 1.x/2.x, SDXL, SD3, PixArt or DiT "
              "pipeline), or an "
              "NVlabs network .pkl (needs --trust-pickle).")


def _steering_attrs(flag) -> dict[str, Any]:
    """The click attributes of a steering kind's flag (``tools.steering.Flag``, plain data)."""
    attrs: dict[str, Any] = {}
    if flag.type is bool:
        attrs["is_flag"] = True
    elif flag.choices:
        attrs["type"] = click.Choice(flag.choices)
    elif flag.type is Path:
        attrs["type"] = click.Path()
    elif flag.type is int and flag.min is not None:
        attrs["type"] = click.IntRange(min=flag.min)
    elif flag.type in (int, float):
        attrs["type"] = flag.type
    if flag.metavar:
        attrs["metavar"] = flag.metavar
    return {**attrs, "help": flag.help}


def _steering_params() -> dict[str, tuple[str, tuple[str, ...], dict[str, Any]]]:
    """The flags of the registered steering kinds (``tools.steering.registry``), as SAMPLING_PARAMS entries,
    in registration order."""
    return {name: (flag.section, (flag.flag,), _steering_attrs(flag))
            for name, flag in steering_flags().items()}


#: every sampling option: (section, declarations, attributes except the default)
SAMPLING_PARAMS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "model": ("Model", ("--model",), dict(metavar="SPEC", help=MODEL_HELP)),
    "trust_pickle": ("Model", ("--trust-pickle",), dict(
        is_flag=True,
        help="Allow loading a pickle. Pickles run code when loaded: only for files you trust.")),
    "sampler": ("Sampling", ("--sampler",), dict(
        metavar="NAME", help="The sampler (`edm samplers` lists them with their options), file:PATH for a "
                             "solver fitted by `edm tune-solver`, or 'auto' with --nfe (the best "
                             "registered sampler and schedule for the budget, from the model's `edm bench "
                             "--write-auto` table); `edm bench` takes a comma-separated list or 'all'.")),
    "steps": ("Sampling", ("--steps",), dict(
        type=click.IntRange(min=1), metavar="N",
        help="Number of steps (noise levels before the final 0).  [default: 18, as EDM; edm bench compares "
             "at "
             "equal NFE: give --nfe]")),
    "nfe": ("Sampling", ("--nfe",), dict(
        callback=_budgets, metavar="N",
        help="Instead of --steps: a budget of denoiser evaluations per image; takes the most steps that fit "
             "(e.g. heun: 35 NFE = 18 steps).")),
    "schedule": ("Sampling", ("--schedule",), dict(
        metavar="NAME", help="The sigma schedule (`edm schedules` lists them), file:PATH for a schedule file "
                             "written by `edm tune-schedule`, or 'diffusers' for a diffusers model: the "
                             "timesteps of the sampler's diffusers counterpart built from the model's "
                             "scheduler config; `edm bench` takes a comma-separated list.")),
    "sigma_min": ("Sampling", ("--sigma-min",), dict(
        type=float, metavar="SIGMA", help="Lowest nonzero noise level.  [default: the model's]")),
    "sigma_max": ("Sampling", ("--sigma-max",), dict(
        type=float, metavar="SIGMA", help="Highest noise level, where sampling starts.  [default: the "
                                          "model's]")),
    "rho": ("Sampling", ("--rho",), dict(
        type=float, metavar="RHO", help="Schedule exponent of karras (default 7) and polyexponential "
                                        "(default 1).")),
    "class_label": ("Seeds and classes", ("--class", "class_label"), dict(
        type=click.IntRange(min=0), metavar="C",
        help="Class of every image (class-conditional models).  [default: drawn from each seed]")),
    "prompt": ("Text", ("--prompt",), dict(
        metavar="TEXT", help="Text-to-image models: the prompt of every image.")),
    "negative_prompt": ("Text", ("--negative-prompt",), dict(
        metavar="TEXT", help="The negative condition of classifier-free guidance (diffusers' "
                             "negative_prompt).  [default: the pipeline's: the empty prompt, or zeros for "
                             "SDXL]")),
    "prompts": ("Text", ("--prompts",), dict(
        type=click.Path(dir_okay=False), metavar="FILE",
        help="Instead of --prompt: one prompt per line; the k-th seed of --seeds gets line k (cycling).")),
    "width": ("Text", ("--width",), dict(
        type=click.IntRange(min=1), metavar="PX",
        help="Image width of a text-to-image model (a multiple of its VAE's factor).  [default: the "
             "model's]")),
    "height": ("Text", ("--height",), dict(
        type=click.IntRange(min=1), metavar="PX",
        help="Image height of a text-to-image model.  [default: the model's]")),
    "low_res": ("Super-resolution", ("--low-res",), dict(
        type=click.Path(), metavar="PATH",
        help="A super-resolution model's low-resolution input: one PNG for every seed, or a folder of "
             "NNNNNN.png per seed as `edm generate` writes them; the size and channels `edm info MODEL` "
             "names.")),
    "noise_aug": ("Super-resolution", ("--noise-aug",), dict(
        type=float, metavar="SIGMA",
        help="Our super-resolution checkpoints: the sigma the low-resolution input is noised to "
             "(conditioning augmentation; noise from each seed).  [default: the model's recorded best, "
             "else 0]")),
    "noise_level": ("Super-resolution", ("--noise-level",), dict(
        type=float, metavar="N",
        help="Diffusers' x4 upscaler: its noise_level of the low-resolution input.  [default: the "
             "pipeline's]")),
    "guidance": ("Guidance", ("--guidance",), dict(
        type=float, metavar="W",
        help="Guidance weight w >= 0: classifier-free D + w (D - D_neg), or with --guide-model autoguidance "
             "D + w (D - D_weak); 0 is none (diffusers' guidance_scale and EDM2's guidance are 1 + w, so "
             "guidance_scale 7.5 is --guidance 6.5).  [default: a text model's pipeline default, else 0]")),
    **_steering_params(),
    "device": ("Device", ("--device",), dict(
        metavar="DEVICE", help="cpu, cuda or cuda:N.  [default: cuda if available, else cpu]")),
    "dtype": ("Device", ("--dtype",), dict(
        type=click.Choice(DTYPE_NAMES),
        help="Precision of the model (the sampler keeps float32, float64 for float64).  [default: float32; "
             "tune-schedule and bench's ode metric: float64]")),
}

_DEFAULTS = {"model": "digits", "trust_pickle": False, "sampler": "heun", "schedule": "karras"}

#: ``sampling_options(**RECORDED_DEFAULTS)``: a command whose sampler, steps and schedule default to the
#: model's recorded ones (a distilled student's; ``tools.generate.sampling.with_recorded``)
RECORDED_DEFAULTS: dict[str, Any] = {
    "sampler": None, "schedule": None,
    "helps": {"sampler": SAMPLING_PARAMS["sampler"][2]["help"] + "  [default: the sampler the model records "
                         "(a distilled student's, with its steps and options), else heun]",
              "schedule": SAMPLING_PARAMS["schedule"][2]["help"] + "  [default: the schedule (and sigma "
                          "range) the model records, else karras]"}}


def sampling_options(*, exclude: Sequence[str] = (), only: Sequence[str] | None = None,
                     helps: Mapping[str, str] | None = None, **defaults: Any) -> Callable:
    """Decorate a command with every sampling option (SAMPLING_PARAMS) but those it does not take, in one
    order, with ``defaults`` overriding the usual ones (e.g. ``sampler="all"`` for ``edm bench``; ``None``
    makes one required). A command that takes fewer names them: ``exclude`` (all but these) or ``only``
    (just these); neither listed in its help nor accepted. ``helps``: help texts of its own, where it takes
    less than the shared text offers."""
    values = {**_DEFAULTS, **defaults}

    def decorate(fn):
        for name, (section, decls, attrs) in reversed(SAMPLING_PARAMS.items()):
            if name in exclude or (only is not None and name not in only):
                continue
            default = values.get(name)
            extra = {"show_default": True} if default not in (None, False) else {}
            attrs = {**attrs, **({"help": helps[name]} if helps and name in helps else {})}
            fn = option(section, *decls, default=default, **extra, **attrs)(fn)
        return fn

    return decorate


#: the flags that build a tools.steering.Steering (they reach a command in its **flags): the registered
#: steering kinds' when the command line was built
STEERING_FLAGS = tuple(steering_flags())


def steering(flags: dict[str, Any], command: str | None = None, refused: Sequence[str] = ()):
    """Pop the steering flags (every registered kind's) out of a command's ``flags`` into a
    ``tools.steering.Steering`` (None when none is given). ``refused``: flags ``command`` does not take (a
    usage error names them)."""
    given = {key: flags.pop(key) for key in steering_flags() if key in flags}
    given = {key: value for key, value in given.items() if value is not None and value is not False}
    bad = [key for key in refused if key in given]
    if bad:
        names = ", ".join(_flag(key) for key in bad)
        raise click.UsageError(f"{command} does not take {names}")
    if not given:
        return None
    return Steering(**given)


#: the flags that build a tools.request.Prompting
PROMPT_FLAGS = ("prompt", "negative_prompt", "prompts", "width", "height")


def prompting(flags: dict[str, Any], command: str | None = None, refused: bool = False):
    """Pop the text flags out of a command's ``flags`` into a ``tools.request.Prompting`` (None when
    none is given); ``refused``: ``command`` takes none of them (a usage error names them)."""
    given = {key: flags.pop(key) for key in PROMPT_FLAGS if key in flags}
    given = {key: value for key, value in given.items() if value is not None}
    if given and refused:
        raise click.UsageError(f"{command} does not take {', '.join(_flag(key) for key in given)}")
    if not given:
        return None
    from .request import Prompting

    return Prompting(**given)


#: the flags that are fields of a tools.request.SamplingRequest as they are, whatever the command samples
REQUEST_FLAGS = ("model", "trust_pickle", "sigma_min", "sigma_max", "rho", "class_label", "guidance",
                 "low_res", "noise_aug", "noise_level", "device")


def model_request(flags: dict[str, Any], command: str, dtype: str = "float32", *,
                  refused: Sequence[str] = (), text_refused: bool = False, why: str = ""):
    """Pop what a command samples *with* out of ``flags`` into a ``tools.request.SamplingRequest``: the
    model, range, class, guidance, steering, text, device and dtype (``dtype``: the command's default), not
    the sampler, schedule or budget. ``refused`` / ``text_refused``: steering / text flags ``command`` does
    not take (usage errors; ``why`` follows the command's name in the steering one)."""
    from .request import SamplingRequest

    text = prompting(flags, command, text_refused)
    steer = steering(flags, f"{command} ({why})" if why else command, refused)
    fields = {key: flags.pop(key, None) for key in REQUEST_FLAGS}  # a flag a command lacks: not given
    return SamplingRequest(**fields, dtype=flags.pop("dtype", None) or dtype, steering=steer, prompting=text)


def sampling_request(flags: dict[str, Any], command: str, dtype: str = "float32", *,
                     refused: Sequence[str] = (), text_refused: bool = False):
    """Pop every sampling option out of a command's ``flags`` into the ``tools.request.SamplingRequest`` the
    command runs, built once here (see :func:`model_request`; the sampler, its options, the schedule and
    the steps or NFE budget too; a sampler alias resolved, :func:`sampler_alias`). Usage errors (one line,
    exit 2) for what the flags alone tell."""
    request = model_request(flags, command, dtype, refused=refused, text_refused=text_refused)
    sampler, schedule, steps, nfe = (flags.pop(key) for key in ("sampler", "schedule", "steps", "nfe"))
    sampler, schedule, cfg_pp = sampler_alias(sampler, schedule)
    nfe, options = one_sampler(sampler, steps, nfe, flags, command)
    for key in [key for key in flags if key.startswith(SAMPLER_OPTION_PREFIX)]:
        flags.pop(key)
    if cfg_pp:  # a *_cfg_pp name is the sampler with --cfg-pp
        request = request.replace(steering=(request.steering or Steering()).replace(cfg_pp=True))
    return request.replace(sampler=sampler, schedule=schedule, steps=steps, nfe=nfe, options=options)


# ---------------------------------------------------------------------------------------------------
# A cascade's super-resolution stage (edm generate --sr-model, edm fid gen --sr-model)

STAGE_SECTION = "Super-resolution stage"
STAGE_HELP = "[--sr-model stage]"
#: the sampling flags a cascade's stage has a copy of (``--sr-steps``); the sampler-option flags too
STAGE_FLAGS = STAGE_FIELDS
#: the stages a command may have, by the parameter of their model (``sr_model``: ``--sr-model``)
STAGE_MODELS = ("sr_model",)
def stage_flag(flag: str, stage: str) -> str:
    """``--steps`` of stage ``sr``: ``--sr-steps``."""
    return f"--{stage}-{flag.removeprefix('--')}"


def _stage_help(text: str) -> str:
    # the stage's defaults are its own model's (and heun, karras, 18 steps), not the base flags' values
    return f"{STAGE_HELP} {text}"


def sr_stage_options(fn: Callable) -> Callable:
    """Decorate a command with ``--sr-model`` and the stage's copy of each of :data:`STAGE_FLAGS`
    (``--sr-sampler``, ``--sr-steps``, ...; declared from SAMPLING_PARAMS, so they take what the base flags
    take), all defaulting to None: the stage's own defaults. The sampler-option flags (``--sr-eta``) are
    added with the registry's (:class:`SectionedCommand`)."""
    for name in reversed(STAGE_FLAGS):
        _, decls, attrs = SAMPLING_PARAMS[name]
        flags = [stage_flag(decl, "sr") for decl in decls if decl.startswith("--")]
        fn = option(STAGE_SECTION, *flags, f"sr_{name}", default=None,
                    **{**attrs, "help": _stage_help(attrs["help"])})(fn)
    return option(STAGE_SECTION, "--sr-model", default=None, metavar="SPEC",
                  help="A cascade: sample --model, then this super-resolution model on each seed's image "
                       "(as written, the base stage's PNGs in OUTDIR/base/); its low-resolution input "
                       "must be the base model's image size. --noise-aug / --noise-level apply to it; the "
                       "--sr-* flags set its sampling (default: its own recorded one, else heun, karras, "
                       "18 steps). Its randomness comes from seed stream_seed(seed, STAGE_STREAM).")(fn)


def _stage_usage(error: click.UsageError, stage: str) -> click.UsageError:
    """A usage error of a stage's flags, its flags named as typed (``--steps`` -> ``--sr-steps``)."""
    message = re.sub(r"(?<![\w-])--(?=[a-z])", f"--{stage}-", error.format_message())
    return click.UsageError(message)


def sr_stage_request(flags: dict[str, Any], base, command: str):
    """Pop the ``--sr-*`` flags out of a command's ``flags``: ``(base, sr)``, the base stage's request and
    the super-resolution stage's (None without ``--sr-model``). The stage samples with its own flags (unset:
    its defaults) and takes the base request's device, dtype, pickle trust and low-resolution level flags
    (``--noise-aug`` / ``--noise-level``, which leave the base request); classes, guidance steering and text
    stay with the base. Usage errors for stage flags without ``--sr-model`` or with ``--low-res``."""
    prefix = "sr_"
    stage = {key[len(prefix):]: flags.pop(key) for key in list(flags) if key.startswith(prefix)}
    model = stage.pop("model", None)
    if model is None:
        given = [key for key, value in stage.items() if value is not None]
        if given:
            raise click.UsageError(f"{_stage_flag_of(given[0])} sets the --sr-model stage: give --sr-model")
        return base, None
    if base.low_res is not None:
        raise click.UsageError("--low-res and --sr-model exclude each other: the --sr-model stage's input is "
                               "the base model's images")
    sampler, schedule = stage.pop("sampler"), stage.pop("schedule")  # None: the stage model's recorded ones
    steps = stage.pop("steps")
    try:
        sampler, schedule, cfg_pp = sampler_alias(sampler, schedule, "sr_schedule")
        if cfg_pp:
            raise click.BadParameter("the --sr-model stage is not guided: CFG++ does not apply",
                                     param_hint="'--sampler'")
        nfe, options = one_sampler(sampler, steps, stage.pop("nfe"), stage, command, "sr_schedule")
    except click.UsageError as e:
        raise _stage_usage(e, "sr") from None
    ranges = {key: stage.get(key) for key in ("sigma_min", "sigma_max", "rho", "guidance")}
    sr = base.replace(model=model, sampler=sampler, schedule=schedule, steps=steps, nfe=nfe, options=options,
                      class_label=None, steering=None, prompting=None, **ranges)
    return base.replace(noise_aug=None, noise_level=None), sr


def _stage_flag_of(key: str) -> str:
    if key.startswith(SAMPLER_OPTION_PREFIX):
        return f"--sr-{key[len(SAMPLER_OPTION_PREFIX):].replace('_', '-')}"
    return f"--sr-{key.replace('_', '-')}"


def report_ignored(model, prompts=None, auto=None, notes=()) -> None:
    """One warning line naming each setting of the model's files that the loader does not honour, one for
    prompts the text encoders truncate (``prompts``: a ``tools.generate.prompts.Prompts``) and one for an
    auto table ``--sampler auto`` passed over (``auto``: the record of its pick, with its ``note``), and one
    per note of the checked steering (``notes``: ``CheckedSteering.notes``); before them, the line saying
    that auto runs a student in place of the model asked for (its ``runs``)."""
    if auto and auto.get("runs"):
        click.echo(auto["runs"], err=True)
    if auto and auto.get("note"):
        click.echo(f"warning: {auto['note']}", err=True)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    ignored = getattr(model, "ignored", None) or []
    if ignored:
        click.echo(f"warning: not honoured: {'; '.join(ignored)}", err=True)
    cut = prompts.truncated() if prompts is not None else []
    if cut:
        shown = "; ".join(repr(text[:60] + ("..." if len(text) > 60 else "")) for text in cut[:3])
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        click.echo(f"warning: {len(cut)} prompt(s) longer than the text encoder takes are truncated, as "
                   f"diffusers does: {shown}{more}", err=True)



# ---------------------------------------------------------------------------------------------------
# Options of the commands that score images (edm fid, edm bench)

DETECTORS = ("digits", "inception")  # as tools.fid.scoring.DETECTORS (not imported here: it needs torch)

detector_option = option("Reference", "--detector", type=click.Choice(DETECTORS), default=None,
                         help="Feature network.  [default: the reference's; else digits for 1x8x8 images, "
                              "else inception]")
detector_weights_option = option("Reference", "--detector-weights", type=click.Path(), default=None,
                                 metavar="PATH", help="Read the detector's weights from PATH.")
progress_option = option("Other", "--progress/--no-progress", default=True, show_default=True,
                         help="Progress bars on stderr.")


# ---------------------------------------------------------------------------------------------------
# Values of the training commands (edm train, edm train-classifier)


def channel_mult_value(ctx, param, value):
    """``--channel-mult 1,2,2`` -> ``[1, 2, 2]`` (positive integers); None stays None."""
    if value is None:
        return None
    try:
        mult = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        mult = []
    if not mult or min(mult) < 1:
        raise click.BadParameter(f"expected comma-separated positive integers such as 1,2,2; got {value!r}")
    return mult


def sigma_data_value(ctx, param, value):
    """``--sigma-data``: a positive number, or ``auto`` (measured on the data)."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a positive number or 'auto', got {value!r}") from None
    if not number > 0:
        raise click.BadParameter(f"expected a positive number or 'auto', got {value!r}")
    return number


def training_data_value(ctx, param, value):
    """``--data``: ``digits`` or a path that exists (its format is checked when it is read)."""
    from pathlib import Path

    if value != "digits" and not Path(value).exists():
        raise click.BadParameter(f"{value!r} is neither 'digits' nor an existing folder or .npz/.npy file")
    return value


def optimizer_flags(*, batch: int, lr: float, warmup: int):
    """``--batch``, ``--lr``, ``--warmup``, ``--ema`` and ``--seed``, the flags of a training run that
    ``edm train`` and ``edm distill`` share (in that order), with the command's own defaults."""
    flags = (
        click.option("--batch", type=click.IntRange(min=1), default=batch, show_default=True,
                     help="Batch size."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=lr, show_default=True,
                     help="Adam learning rate."),
        click.option("--warmup", type=click.IntRange(min=0), default=warmup, show_default=True,
                     help="Linear learning-rate warm-up, in steps."),
        click.option("--ema", type=click.FloatRange(min=0, min_open=True), default=50.0, show_default=True,
                     help="EMA half-life in kimg (ramped up over the first images seen, as NVlabs)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed."),
    )

    def decorate(fn):
        for flag in reversed(flags):
            fn = flag(fn)
        return fn

    return decorate

"""``edm distill``: distil an EDM teacher into a few-step student, by progressive distillation (rounds that
halve the steps) or consistency distillation (:mod:`edm.distill`, :mod:`edm.distill_run`).

Each run is an ``edm train`` run underneath (checkpoints, EMA, resume, torchrun data parallelism), so the
students are checkpoints: ``edm generate --model OUT/student-2`` samples with the sampler, steps and
schedule the student records. The command recorded in every student is the canonical ``edm distill``
line with every option spelled out.
"""

from __future__ import annotations

from pathlib import Path

import click

from tools.common import BadInput, one_line, spelled_out
from tools.options import optimizer_flags, usage_error

__all__ = ["distill", "resolve_teacher", "METHOD_FLAGS"]

#: the flags of each --method; a flag only the other method takes is refused, not silently ignored
METHOD_FLAGS = {"progressive": ("steps", "end_steps"),
                "consistency": ("bins", "bins_end", "distance", "levels", "weighting", "target_ema",
                                "sample_sigmas")}
#: flag -> the objective parameter it gives
_OBJECTIVE_PARAMS = {"bins": "bins", "bins_end": "bins_end", "distance": "distance", "levels": "levels",
                     "weighting": "weighting", "target_ema": "target_ema", "sample_sigmas": "sample_sigmas",
                     "sigma_min": "sigma_min", "sigma_max": "sigma_max", "rho": "rho"}


def resolve_teacher(spec: str) -> Path:
    """The checkpoint stem of ``--teacher``: a built-in model's name or a checkpoint of this library
    (``NAME``, ``NAME.json``, ``NAME.safetensors`` or a run directory); BadInput (one line) for anything
    else, diffusers pipelines and NVlabs pickles included (their denoisers are not EDM checkpoints)."""
    from tools.models.checkpoint import BUILTIN, builtin_path

    if spec in BUILTIN:
        return builtin_path(spec)
    if spec.startswith("diffusers:") or spec.endswith(".pkl"):
        raise BadInput(f"teacher {spec} is not an EDM checkpoint of this library: distillation needs EDM's "
                       "preconditioning and training data", "teacher")
    path = Path(spec)
    if path.is_dir() and (path / "network.json").is_file():
        path = path / "network"
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".safetensors").is_file():
        raise BadInput(f"teacher {spec}: no checkpoint NAME.json + NAME.safetensors there (or a built-in "
                       f"name: {', '.join(sorted(BUILTIN))})", "teacher")
    return stem


def _float_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    return values


def _guidance_range(ctx, param, value):
    values = _float_list(ctx, param, value)
    if values is not None and (len(values) != 2 or not 0 <= values[0] <= values[1]):
        raise click.BadParameter(f"expected LO,HI with 0 <= LO <= HI, got {value!r}")
    return values


def _sample_sigmas(ctx, param, value):
    values = _float_list(ctx, param, value)
    if values is not None and (not values or any(b >= a for a, b in zip(values, values[1:]))
                               or values[-1] <= 0):
        raise click.BadParameter(f"expected decreasing positive levels, got {value!r}")
    return values


@click.command("distill")
@click.option("--teacher", required=True, help="The teacher: a built-in model (e.g. digits) or an EDM "
                                               "checkpoint of this library.")
@click.option("--method", type=click.Choice(list(METHOD_FLAGS)), required=True,
              help="progressive (rounds halving the steps) or consistency distillation.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output folder: progressive writes OUT/student-N per round, consistency writes OUT.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="progressive: the first student's steps, a power of 2 (its teacher runs twice as many) "
                   "[default: 8].")
@click.option("--end-steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="progressive: the last student's steps, a power of 2.")
@click.option("--train-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training steps of each run (each progressive round).")
@click.option("--teacher-sampler", default="heun", show_default=True,
              help="The teacher's deterministic sampler: heun, euler or ddim (later progressive rounds: "
                   "euler, the steps the previous student was trained for).")
@click.option("--guidance-range", default=None, callback=_guidance_range,
              help="LO,HI: a guided student that takes the classifier-free guidance weight w as an input, "
                   "trained on w uniform in [LO, HI] (the teacher guided at w).")
@click.option("--sigma-min", type=click.FloatRange(min=0, min_open=True), default=0.002, show_default=True,
              help="Lowest level of the students' curve (consistency: the boundary level).")
@click.option("--sigma-max", type=click.FloatRange(min=0, min_open=True), default=80.0, show_default=True,
              help="Highest level, where sampling starts.")
@click.option("--rho", type=click.FloatRange(min=0, min_open=True), default=7.0, show_default=True,
              help="Karras et al.'s rho of the levels.")
@click.option("--bins", type=click.IntRange(min=2), default=18, show_default=True,
              help="consistency: levels of the discretisation (K; the first of the curriculum).")
@click.option("--bins-end", type=click.IntRange(min=2), default=None,
              help="consistency: double K in equal stages up to this (the improved recipe's curriculum) "
                   "[default: --bins, no curriculum].")
@click.option("--distance", type=click.Choice(["l2", "pseudo-huber"]), default="l2", show_default=True,
              help="consistency: the distance between student and target.")
@click.option("--levels", type=click.Choice(["uniform", "lognormal"]), default="uniform", show_default=True,
              help="consistency: how the pair of adjacent levels is drawn.")
@click.option("--weighting", type=click.Choice(["uniform", "ict"]), default="uniform", show_default=True,
              help="consistency: loss weight per pair: 1, or 1 / (t_{n+1} - t_n) (improved recipe).")
@click.option("--target-ema", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0,
              show_default=True, help="consistency: EMA decay of the target network (0: the student itself).")
@click.option("--sample-sigmas", default=None, callback=_sample_sigmas,
              help="consistency: the levels the student records for sampling, decreasing (e.g. 80,0.8 for "
                   "two steps) [default: --sigma-max, one step].")
@optimizer_flags(batch=64, lr=2e-4, warmup=0)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Also write checkpoints every this many steps (always at the end of a run).")
@click.option("--resume", is_flag=True, default=False,
              help="Continue the runs in --out: finished rounds are kept, an interrupted one resumes.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's choice].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def distill(**params):
    """Distil --teacher into a few-step student in --out.

    Bad options, a teacher that is not an EDM checkpoint, a stochastic teacher sampler or step counts that
    are not powers of 2 exit with status 2 before anything is written; an --out that cannot be written
    exits with status 1.
    """
    import torch

    from edm.distill_run import distill as run_distillation
    from tools.device import resolve_device
    from tools.ranks import Ranks

    ctx = click.get_current_context()
    for name, flags in METHOD_FLAGS.items():
        for flag in flags:
            given = ctx.get_parameter_source(flag) is not click.core.ParameterSource.DEFAULT
            if given and name != params["method"]:
                raise click.UsageError(f"--{flag.replace('_', '-')} belongs to --method {name}")
    try:
        device = resolve_device(params["device"])
        teacher = resolve_teacher(params["teacher"])
    except BadInput as e:
        raise usage_error(e) from None
    if params["threads"] is not None:
        torch.set_num_threads(params["threads"])
    recorded = {k: v for k, v in params.items() if k not in ("progress", "resume")}
    recorded.update(dict.fromkeys(f for name, flags in METHOD_FLAGS.items() if name != params["method"]
                                  for f in flags))
    options = {param: params[flag] for flag, param in _OBJECTIVE_PARAMS.items()
               if flag not in recorded or recorded[flag] is not None}
    options = {k: v for k, v in options.items() if v is not None}
    if params["method"] == "progressive":
        options = {k: v for k, v in options.items() if k in ("sigma_min", "sigma_max", "rho")}
    ranks = Ranks().start(device)
    try:
        with ranks:
            results = run_distillation(
                str(teacher), params["out"], method=params["method"], steps=params["steps"],
                end_steps=params["end_steps"], train_steps=params["train_steps"],
                teacher_sampler=params["teacher_sampler"], guidance=params["guidance_range"],
                resume=params["resume"], command=spelled_out(("edm", "distill"), recorded),
                method_options=options, batch=params["batch"], lr=params["lr"], warmup=params["warmup"],
                ema_halflife_kimg=params["ema"], seed=params["seed"],
                checkpoint_every=params["checkpoint_every"], device=device, progress=params["progress"])
    except ValueError as e:
        raise usage_error(BadInput(one_line(e))) from None
    except OSError as e:
        raise click.ClickException(one_line(e)) from None
    if ranks.rank != 0:
        return
    for result in results:
        click.echo(f"trained {result.step} steps in {result.seconds:.1f} s, loss {result.loss:.4f}; "
                   f"student {result.checkpoint}.json")


if __name__ == "__main__":  # pragma: no cover
    distill()

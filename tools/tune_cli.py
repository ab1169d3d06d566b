"""The ``edm tune-schedule`` command (a click command object; ``tools.cli`` registers it).

Tunes a deterministic sampler's sigma schedule for a model and an NFE budget on a calibration batch
(``tools.bench.tune``) and saves it as a schedule file for ``edm generate --schedule file:PATH``.
torch is imported when the command runs, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .generate_cli import CONTEXT, _parse_seeds


def _bad(error, flag: str | None = None) -> click.UsageError:
    """A usage error (exit 2) with the first line of ``error``, naming ``flag`` when given."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return click.BadParameter(message, param_hint=f"'{flag}'") if flag else click.UsageError(message)


def _check_out(out: Path) -> None:
    """Fail before any work when ``out`` cannot be written."""
    from .generate import GenerateError, check_writable_dir

    if out.is_dir():
        raise _bad(f"{out} is a directory: give a file name such as tuned.json", "--out")
    try:
        check_writable_dir(out.parent, "out")
    except GenerateError as e:
        raise _bad(e, "--out") from None


def _optional_seeds(ctx, param, value):
    return None if value is None else _parse_seeds(ctx, param, value)


def _calibration_seeds(ctx: click.Context, seeds, num: int) -> list[int]:
    from .bench.tune import calibration_seeds

    if seeds is None:
        return calibration_seeds(num)
    if ctx.get_parameter_source("num") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--seeds and --num are mutually exclusive: give one")
    return seeds


@click.command("tune-schedule", context_settings=CONTEXT)
@click.option("--model", required=True, metavar="SPEC",
              help="The model: 'digits' (built in), a checkpoint NAME[.json|.safetensors], 'diffusers:DIR' "
                   "or an NVlabs network .pkl (needs --trust-pickle). It runs in float64.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a pickle. Pickles run code when loaded: only for files you trust.")
@click.option("--sampler", required=True, metavar="NAME",
              help="A deterministic sampler (`edm samplers`: stochastic = no) with its default options.")
@click.option("--nfe", required=True, type=click.IntRange(min=1), metavar="N",
              help="The budget of denoiser evaluations per image; the sampler takes the most steps that fit.")
@click.option("--num", type=click.IntRange(min=1), default=16, show_default=True, metavar="N",
              help="Calibration images: seeds 1000000 to 1000000+N-1, apart from the usual evaluation seeds.")
@click.option("--seeds", default=None, callback=_optional_seeds, metavar="LIST",
              help="Calibration seeds instead of --num's, e.g. 5000-5031.")
@click.option("--init", default="karras", show_default=True, metavar="NAME",
              help="The schedule to start from (`edm schedules`), or file:PATH; the tuned schedule keeps its "
                   "first and last nonzero sigma.")
@click.option("--max-evals", type=click.IntRange(min=1), default=None, metavar="N",
              help="At most N sampler runs on the calibration batch.  [default: 20000/NFE, at least 200]")
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Where the schedule file goes (written atomically).")
@click.option("--device", default=None, metavar="DEVICE",
              help="cpu, cuda or cuda:N.  [default: cuda if available, else cpu]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.pass_context
def tune_schedule(ctx, model, trust_pickle, sampler, nfe, num, seeds, init, max_evals, out, device, progress):
    """Tune the sigma schedule of SAMPLER at an NFE budget for a model, and save it.

    The search minimises the sampler's error against the exact probability-flow ODE (solved in float64)
    on a calibration batch, moving the schedule's interior noise levels; the start and end levels stay
    those of --init. The schedule file is read back by `edm generate --schedule file:FILE.json` (exact
    at the tuned step count, resampled log-linearly at others). Judge the result on other seeds: the
    calibration seeds are apart from the usual 0, 1, ...

    \b
    Examples:
      edm tune-schedule --model digits --sampler heun --nfe 11 --out heun11.json
      edm generate --outdir out --sampler heun --nfe 11 --schedule file:heun11.json
    """
    import torch

    from .bench.tune import tunable_steps, tune_schedule
    from .generate import GenerateError, _cond, _resolve_device, schedule_sigmas
    from .models import ModelError, load_model

    try:
        steps = tunable_steps(sampler, nfe)
    except ValueError as e:
        raise _bad(e) from None
    seeds = _calibration_seeds(ctx, seeds, num)
    out = Path(out).expanduser()
    _check_out(out)
    try:
        device = _resolve_device(device)
    except GenerateError as e:
        raise _bad(e, "--device") from None
    try:
        loaded = load_model(model, device=device, dtype=torch.float64, trust_pickle=trust_pickle)
    except ModelError as e:
        raise _bad(e, "--model") from None
    try:
        init_sigmas, _ = schedule_sigmas(loaded, init, steps)
    except GenerateError as e:
        raise _bad(e, "--init") from None
    if progress:
        click.echo(f"Tuning {sampler} at NFE {nfe} ({steps} steps) for {model} from {init}, "
                   f"{len(seeds)} calibration seeds", err=True)
    try:
        result = tune_schedule(loaded.denoiser, sampler, nfe, shape=loaded.shape, seeds=seeds,
                               cond=_cond(loaded, seeds, None, device, torch.float64), init=init_sigmas,
                               device=device, max_evals=max_evals, progress=progress)
    except ValueError as e:  # e.g. a sampler that uses only the schedule's ends
        raise _bad(e) from None
    result = dataclasses.replace(result, init=init)  # the name given, not the tensor it became
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.save(out, model=model)
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"{sampler} NFE {nfe} ({steps} steps): calibration ODE error {result.init_error:.4g} "
               f"({init}) -> {result.error:.4g} ({result.improvement:.2f}x lower, "
               f"{result.evaluations} runs), saved {out}")


if __name__ == "__main__":
    tune_schedule()

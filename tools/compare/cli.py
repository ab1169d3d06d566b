"""The ``edm bench`` and ``edm tune-schedule`` commands (click command objects; ``tools.cli`` registers
them): thin layers over ``tools.compare.prepare_bench`` / ``Bench.run`` and ``tools.compare.tune_schedule``,
with the sampling options every sampling command shares (:mod:`tools.options`). torch loads when a
command runs."""

from __future__ import annotations

import dataclasses

import click

from tools.common import BadInput, check_writable_file, one_line
from tools.options import (
    cli_errors,
    command,
    detector_option,
    detector_weights_option,
    model_request,
    one_sampler,
    option,
    option_value,
    parse_list,
    progress_option,
    sampler_options,
    sampling_options,
    seeds_option,
    usage_error,
)

__all__ = ["bench", "tune_schedule"]

def _parse_options(ctx, param, items) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        target, equals, text = item.partition("=")
        sampler, dot, key = target.strip().partition(".")
        if not (equals and dot and sampler and key):
            raise click.BadParameter(f"expected SAMPLER.KEY=VALUE (e.g. restart.s_noise=1.05), got {item!r}",
                                     ctx=ctx, param=param)
        options.setdefault(sampler, {})[key] = option_value(text.strip())
    return options


def _sampler_names(value: str) -> list[str]:
    import samplers

    try:
        names = parse_list(value, "sampler", "sampler")
    except BadInput as e:
        raise usage_error(e) from None
    return samplers.list() if names == ["all"] else names


def _merged_options(names: list[str], flags: dict, per_sampler: dict[str, dict]) -> dict[str, dict]:
    """--eta-style flags for every sampler that has the option, then SAMPLER.KEY=VALUE overrides (fitted
    solvers, file:PATH, have none)."""
    from tools.solvers.use import special_sampler

    registered = [name for name in names if special_sampler(name) != "file"]
    merged = {name: dict(values) for name, values in sampler_options(registered, flags).items() if values}
    for name, values in per_sampler.items():
        merged.setdefault(name, {}).update(values)
    return merged


@command("bench")
@sampling_options(sampler="all")
@seeds_option(None, "Instead of --num: the seeds, e.g. 0-99,200.")
@option("Seeds and classes", "--num", type=click.IntRange(min=1), default=None, metavar="N",
        help="Samples per cell: seeds 0..N-1.  [default: 64]")
@option("Sampling", "--option", "options", multiple=True, callback=_parse_options,
        metavar="SAMPLER.KEY=VALUE",
        help="Override one sampler's option, e.g. restart.s_noise=1.05 (repeatable); a flag such as --eta "
             "applies to every benchmarked sampler that has it.")
@option("Reference", "--metrics", default="ode,time", show_default=True, metavar="LIST",
        help="ode: RMS error against the exact probability-flow ODE from the same noise (deterministic "
             "samplers); fd (or fid): Frechet distance of detector features to --ref; time: wall time per "
             "sample and the denoiser's share of it.")
@option("Reference", "--ode-num", type=click.IntRange(min=1), default=None, metavar="N",
        help="The ode metric uses the first N seeds (its reference solve is costly).  [default: "
             "min(samples, 16)]")
@detector_option
@detector_weights_option
@option("Reference", "--ref", default=None, metavar="REF",
        help="fd's reference: statistics .npz, 'digits' or an image source.  "
             "[default: the shipped statistics for the digits model; required otherwise]")
@option("Output", "--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
        help="Where results.csv, results.json, results.md and the plots go. A rerun with the same DIR "
             "computes only what is missing.")
@option("Output", "--overwrite", is_flag=True, help="Start afresh, ignoring results already in DIR.")
@option("Output", "--batch", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
        help="Samples per batch.")
@option("Output", "--write-auto", is_flag=True,
        help="Also write the model's table for --sampler auto: the best sampler x schedule per NFE budget "
             "by fd (else ode), into $EDM_AUTO_DIR (default ~/.cache/edm-samplers/auto); merged into an "
             "earlier table measured alike (same metric and settings), budget by budget.")
@progress_option
def bench(sampler, steps, nfe, schedule, seeds, num, options, metrics, ode_num, detector, detector_weights,
          ref, out, overwrite, batch, write_auto, progress, **flags):
    """Benchmark samplers: every sampler x schedule x NFE budget, on the same seeds.

    --sampler, --schedule and --nfe take comma-separated lists here. Writes DIR/results.csv,
    results.json and results.md (every cell: the NFE budget, the steps and the NFE used, and the metrics)
    and, when matplotlib is installed, one PNG per metric against NFE. The outputs are rewritten after
    every cell, so an interrupted run resumes where it stopped; results of other settings in DIR are an
    error (--overwrite replaces them).

    time is measured on the fd/time pass (--dtype, all seeds), or on the float64 ode pass when ode is
    the only other metric; results.json says which.

    A text-to-image model (diffusers:DIR of a Stable Diffusion pipeline) takes --prompt or --prompts (the
    k-th seed gets line k, cycling, as in `edm generate`), --negative-prompt, --width/--height, and
    --guidance defaults to its pipeline's. fd scores the decoded images (what `edm generate` writes); ode
    compares latents; time is the sampling alone (text encoding and decoding excluded).

    \b
    Examples:
      edm bench --out bench-out --sampler heun,dpmpp_2m,unipc --nfe 5,10,20
      edm bench --out bench-out --metrics fd,time --num 1000 --class 3 --guidance 1
      edm bench --out bench-out --metrics fd,time --guidance 1 --guide-model digits-weak
      edm bench --out bench-out --metrics fd,time --sampler euler,heun --nfe 35 --corrector langevin
      edm bench --out bench-out --model runs/ckpt.json --metrics fd --ref stats.npz
      edm bench --out bench-out --model diffusers:sd15 --prompts prompts.txt --metrics fd,time \\
          --ref coco-stats.npz --sampler euler,dpmpp_2m --nfe 10,20
    """
    from .runner import DEFAULT_NFE, BenchRequest, prepare_bench

    if steps is not None:
        raise click.BadParameter("edm bench compares samplers at equal NFE: give budgets with --nfe",
                                 param_hint="'--steps'")
    sampling = model_request(flags, "edm bench (it compares samplers on generation)",
                             refused=("init_image", "strength", "mask", "resample"))
    names = _sampler_names(sampler)
    merged = _merged_options(names, flags, options)
    request = BenchRequest(sampling=sampling, samplers=names, schedules=schedule, nfe=nfe or DEFAULT_NFE,
                           metrics=metrics, num=num, seeds=seeds, ode_num=ode_num, options=merged,
                           batch=batch, detector=detector, detector_weights=detector_weights, ref=ref,
                           out=out, overwrite=overwrite, progress=progress)
    with cli_errors(batch=batch):
        bench = prepare_bench(request)
        if write_auto:
            _check_write_auto(bench, sampling)
        if progress:
            click.echo(f"Benchmarking {bench.describe()}", err=True)
        cells = bench.run()
    skipped = sum(cell["status"] != "ok" for cell in cells)
    click.echo(f"{len(cells)} cells ({bench.computed} computed, {len(cells) - skipped - bench.computed} "
               f"already done, {skipped} skipped) -> {', '.join(str(p) for p in bench.written)}")
    if write_auto:
        _write_auto(bench, cells)


def _check_write_auto(bench, sampling) -> None:
    """Usage errors, before any sampling, for benchmarks whose best cells --sampler auto could not rerun."""
    if "fd" not in bench.metrics and "ode" not in bench.metrics:
        raise click.BadParameter("--write-auto ranks cells by fd or ode: add one of them",
                                 param_hint="'--metrics'")
    ranges = (("--sigma-min", sampling.sigma_min), ("--sigma-max", sampling.sigma_max),
              ("--rho", sampling.rho))
    given = [flag for flag, value in ranges if value is not None]
    if given:  # a table row names a schedule only, which auto runs with the model's range and default rho
        raise click.UsageError(f"--write-auto records schedules at their defaults: drop {given[0]}")
    if bench.corrector is not None:
        raise click.UsageError("--write-auto records samplers alone: drop the Langevin corrector")


def _write_auto(bench, cells) -> None:
    from tools.solvers.auto import write_auto_table
    from tools.solvers.file import fingerprints

    prints = fingerprints(bench.loaded.denoiser)  # as loaded, then as float16 / bfloat16 loads would be
    try:
        path = write_auto_table(cells, model=bench.settings["model"], fingerprint=prints[0],
                                fingerprints=prints, sampler_options=bench.options, conditions=bench.settings)
    except ValueError as e:  # no cell measured (all skipped), or the table cannot be written
        raise click.ClickException(one_line(e)) from None
    click.echo(f"auto table -> {path}")


# ---------------------------------------------------------------------------------------------------
# edm tune-schedule


@command("tune-schedule")
@sampling_options(sampler=None)
@seeds_option(None, "Calibration seeds instead of --num's, e.g. 5000-5031.")
@option("Seeds and classes", "--num", type=click.IntRange(min=1), default=None, metavar="N",
        help="Calibration images: seeds 1000000 to 1000000+N-1, apart from the usual evaluation seeds.  "
             "[default: 16]")
@option("Sampling", "--init", default="karras", show_default=True, metavar="NAME",
        help="The schedule to start from (`edm schedules`), or file:PATH; the tuned schedule keeps its "
             "first and last nonzero sigma. (--schedule is the same; give one of them.)")
@option("Sampling", "--max-evals", type=click.IntRange(min=1), default=None, metavar="N",
        help="At most N sampler runs on the calibration batch.  [default: 20000/NFE, at least 200]")
@option("Output", "--out", required=True, type=click.Path(dir_okay=False), metavar="FILE.json",
        help="Where the schedule file goes (written atomically; its folder is created).")
@progress_option
@click.pass_context
def tune_schedule(ctx, sampler, steps, nfe, schedule, seeds, num, init, max_evals, out, progress, **flags):
    """Tune the sigma schedule of a deterministic --sampler at an NFE budget for a model, and save it.

    The search minimises the sampler's error against the exact probability-flow ODE (solved in float64)
    on a calibration batch, moving the schedule's interior noise levels; the start and end levels stay
    those of --init. Class-conditional models are tuned with the seeds' classes (or --class) and the
    --guidance they will be sampled with. The schedule file is read back by `edm generate --schedule
    file:FILE.json` (exact at the tuned step count, resampled log-linearly at others). Judge the result
    on other seeds: the calibration seeds are apart from the usual 0, 1, ...

    \b
    Examples:
      edm tune-schedule --model digits --sampler heun --nfe 11 --out heun11.json
      edm generate --outdir out --sampler heun --nfe 11 --schedule file:heun11.json
    """
    import torch

    from tools.generate.sampling import prepare_sampling
    from tools.schedules.tune import calibration_seeds, check_something_to_tune, tunable_steps
    from tools.schedules.tune import tune_schedule as tune

    if sampler is None:
        raise click.BadParameter("give the sampler to tune", param_hint="'--sampler'")
    if steps is None and nfe is None:
        raise click.UsageError("give the budget to tune for: --nfe N (or --steps N)")
    if flags["dtype"] not in (None, "float64"):
        raise click.BadParameter("tuning runs sampler, model and reference in float64 (the error must be the "
                                 "solver's, not rounding)", param_hint="'--dtype'")
    if seeds is not None and num is not None:
        raise click.UsageError("--seeds and --num are mutually exclusive: give one")
    if ctx.get_parameter_source("schedule") is not click.core.ParameterSource.DEFAULT:
        if ctx.get_parameter_source("init") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--schedule and --init name the same thing: give one")
        init = schedule
    request = model_request(flags, "edm tune-schedule (it fits the deterministic ODE solve)", "float64",
                            refused=("init_image", "strength", "mask", "resample", "corrector",
                                     "corrector_steps", "snr"), text_refused=True)
    nfe, options = one_sampler(sampler, steps, nfe, flags, "edm tune-schedule")
    import samplers

    try:
        if nfe is None:
            nfe = samplers.get(sampler).nfe(steps)
        steps = tunable_steps(sampler, nfe, options)
        check_something_to_tune(sampler, nfe)
    except ValueError as e:
        raise usage_error(e) from None  # the message says what is wrong: the sampler, or its budget
    seeds = seeds if seeds is not None else calibration_seeds(num or 16)
    try:
        out_path = check_writable_file(out, "out", example="tuned.json")
    except BadInput as e:
        raise usage_error(e) from None
    with cli_errors():
        setup = prepare_sampling(request.replace(sampler=sampler, schedule=init, steps=steps, options=options,
                                                 dtype=torch.float64))
    if progress:
        click.echo(f"Tuning {sampler} at NFE {nfe} ({steps} steps) for {request.model} from {init}, "
                   f"{len(seeds)} calibration seeds", err=True)
    try:
        result = tune(setup.denoiser, sampler, nfe, shape=setup.model.shape, seeds=seeds,
                      cond=setup.cond(seeds), init=setup.sigmas, options=options, device=setup.device,
                      max_evals=max_evals, progress=progress)
    except ValueError as e:  # e.g. a sampler that uses only the schedule's ends
        raise click.UsageError(one_line(e)) from None
    result = dataclasses.replace(result, init=init)  # the name given, not the tensor it became
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        class_label, guidance, steer = request.class_label, request.guidance, request.steering
        result.save(out_path, model=request.model,
                    **({"class": class_label} if class_label is not None else {}),
                    **({"guidance": guidance} if guidance else {}),
                    **({"steering": steer.given()} if steer is not None else {}))
    except OSError as e:
        raise click.ClickException(f"cannot write {out_path}: {e.strerror or e}") from None
    click.echo(f"{sampler} NFE {nfe} ({steps} steps): calibration ODE error {result.init_error:.4g} "
               f"({init}) -> {result.error:.4g} ({result.improvement:.2f}x lower, "
               f"{result.evaluations} runs), saved {out_path}")

"""The ``edm bench`` command (a click command object; ``tools.cli`` registers it): a thin layer over
``tools.compare.prepare_bench`` / ``Bench.run``, with the sampling options every sampling command shares
(:mod:`tools.options`). torch loads when the command runs."""

from __future__ import annotations

import click

from tools.common import BadInput, one_line
from tools.options import (
    cli_errors,
    command,
    detector_option,
    detector_weights_option,
    flag_of,
    model_request,
    option,
    option_value,
    parse_list,
    progress_option,
    refuse_sampler_flags,
    sampler_options,
    sampling_options,
    seeds_option,
    usage_error,
)

__all__ = ["NOT_TAKEN", "bench"]

#: sampling options edm bench does not have (not in its help; typing one says why)
NOT_TAKEN = {"steps": "edm bench compares samplers at equal NFE: give budgets with --nfe",
             "init_image": "edm bench compares samplers on generation, not image editing",
             "strength": "edm bench compares samplers on generation, not image editing",
             "mask": "edm bench compares samplers on generation, not image editing",
             "resample": "edm bench compares samplers on generation, not image editing",
             # their steps differ from cell to cell; a sigma interval means the same in every cell
             "guidance_start": "edm bench runs each budget on other steps: give --guidance-interval LO,HI",
             "guidance_stop": "edm bench runs each budget on other steps: give --guidance-interval LO,HI"}

def _parse_options(ctx, param, items) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        target, equals, text = item.partition("=")
        sampler, dot, key = target.strip().rpartition(".")  # keys have no dot; file:PATH samplers may
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
    if not registered:  # else each flag goes to the registered samplers that have it
        refuse_sampler_flags(flags, "a fitted solver (--sampler file:PATH)")
    merged = {name: dict(values) for name, values in sampler_options(registered, flags).items() if values}
    for name, values in per_sampler.items():
        merged.setdefault(name, {}).update(values)
    return merged


@command("bench", not_taken={flag_of(name): why for name, why in NOT_TAKEN.items()})
@sampling_options(sampler="all", exclude=NOT_TAKEN, helps={
    "nfe": "The budgets compared at: denoiser evaluations per image, a list (e.g. 5,10,20); each sampler "
           "takes the most steps that fit (e.g. heun: 35 NFE = 18 steps)."})
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
def bench(sampler, nfe, schedule, seeds, num, options, metrics, ode_num, detector, detector_weights,
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

    sampling = model_request(flags, "edm bench")
    names = _sampler_names(sampler)
    merged = _merged_options(names, flags, options)
    request = BenchRequest(sampling=sampling, samplers=names, schedules=schedule, nfe=nfe or DEFAULT_NFE,
                           metrics=metrics, num=num, seeds=seeds, ode_num=ode_num, options=merged,
                           batch=batch, detector=detector, detector_weights=detector_weights, ref=ref,
                           out=out, overwrite=overwrite, progress=progress)
    # an option given as SAMPLER.KEY=VALUE is named so in errors, not as the flag --KEY
    typed = {key: f"--option {name}.{key}" for name, values in options.items() for key in values}
    with cli_errors(batch=batch, typed=typed):
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

"""The ``edm bench`` command (a click command object; ``tools.cli`` registers it): a thin layer over
``tools.bench.prepare_bench`` / ``Bench.run``. torch loads when the command runs."""

from __future__ import annotations

import json

import click

from .fid.cli import DETECTORS, detector_weights_option, device_option, progress_option
from .generate_cli import DTYPE_NAMES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}

# BenchError.param -> the flag named in the error message.
PARAM_FLAGS = {"model": "--model", "samplers": "--samplers", "schedules": "--schedules", "nfe": "--nfe",
               "metrics": "--metrics", "num": "--num", "seeds": "--seeds", "ode_num": "--ode-num",
               "options": "--option", "batch": "--batch", "device": "--device", "dtype": "--dtype",
               "detector": "--detector", "detector_weights": "--detector-weights", "ref": "--ref",
               "out": "--out"}


def _usage_error(error) -> click.UsageError:
    flag = PARAM_FLAGS.get(error.param)
    if flag:
        return click.BadParameter(str(error), param_hint=f"'{flag}'")
    return click.UsageError(str(error))


def _option_value(text: str):
    """A number, bool or list as JSON writes it (``inf``/``nan`` as floats), else the text itself."""
    for parse in (json.loads, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _parse_options(ctx, param, items) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        target, equals, text = item.partition("=")
        sampler, dot, key = target.strip().partition(".")
        if not (equals and dot and sampler and key):
            raise click.BadParameter(f"expected SAMPLER.KEY=VALUE (e.g. restart.s_noise=1.05), got {item!r}",
                                     ctx=ctx, param=param)
        options.setdefault(sampler, {})[key] = _option_value(text.strip())
    return options


@click.command("bench", context_settings=CONTEXT)
@click.option("--model", default="digits", show_default=True, metavar="SPEC",
              help="The model, as for `edm generate`: 'digits', a checkpoint, 'diffusers:DIR' or a .pkl.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading an NVlabs pickle (runs its code).")
@click.option("--samplers", "sampler_names", default="all", show_default=True, metavar="LIST",
              help="Comma-separated samplers (`edm samplers`), or 'all'.")
@click.option("--schedules", default="karras", show_default=True, metavar="LIST",
              help="Comma-separated schedules (`edm schedules`) or file:PATH schedule files.")
@click.option("--nfe", default="5,10,20,50", show_default=True, metavar="LIST",
              help="NFE budgets: each cell runs the most steps whose exact NFE fits (the NFE used is "
                   "reported); cells that cannot fit, and adaptive samplers, are reported as skipped.")
@click.option("--metrics", default="ode,time", show_default=True, metavar="LIST",
              help="ode: RMS error against the exact probability-flow ODE from the same noise "
                   "(deterministic samplers); fd (or fid): Frechet distance of detector features to --ref; "
                   "time: wall time per sample and the denoiser's share of it.")
@click.option("--num", type=click.IntRange(min=1), default=None, metavar="N",
              help="Samples per cell: seeds 0..N-1.  [default: 64]")
@click.option("--seeds", default=None, metavar="LIST", help="Instead of --num: the seeds, e.g. 0-99,200.")
@click.option("--ode-num", type=click.IntRange(min=1), default=None, metavar="N",
              help="The ode metric uses the first N seeds (its reference solve is costly).  "
                   "[default: min(samples, 16)]")
@click.option("--option", "options", multiple=True, callback=_parse_options, metavar="SAMPLER.KEY=VALUE",
              help="Override a sampler's option, e.g. restart.s_noise=1.05 (repeatable).")
@click.option("--detector", type=click.Choice(DETECTORS), default=None,
              help="fd's feature network.  [default: the reference's; digits for 1x8x8, else inception]")
@detector_weights_option
@click.option("--ref", default=None, metavar="REF",
              help="fd's reference: statistics .npz, 'digits' or an image source.  "
                   "[default: the shipped statistics for the digits model; required otherwise]")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Where results.csv, results.json, results.md and the plots go. A rerun with the same "
                   "DIR computes only what is missing.")
@click.option("--overwrite", is_flag=True, help="Start afresh, ignoring results already in DIR.")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
              help="Samples per batch.")
@device_option
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="float32", show_default=True,
              help="Precision of the model for fd and time. The ode metric always runs sampler, model and "
                   "reference in float64, so that its error is the solver's, not rounding.")
@progress_option
def bench_command(model, trust_pickle, sampler_names, schedules, nfe, metrics, num, seeds, ode_num, options,
                  detector, detector_weights, ref, out, overwrite, batch, device, dtype, progress):
    """Benchmark samplers: every sampler x schedule x NFE budget, on the same seeds.

    Writes DIR/results.csv, results.json and results.md (every cell: the NFE budget, the steps and the
    NFE used, and the metrics) and, when matplotlib is installed, one PNG per metric against NFE. The
    outputs are rewritten after every cell, so an interrupted run resumes where it stopped; results of
    other settings in DIR are an error (--overwrite replaces them).

    time is measured on the fd/time pass (--dtype, all seeds), or on the float64 ode pass when ode is
    the only other metric; results.json says which.

    \b
    Examples:
      edm bench --out bench-out --samplers heun,dpmpp_2m,unipc --nfe 5,10,20
      edm bench --out bench-out --metrics fd,time --num 1000
      edm bench --out bench-out --model runs/ckpt.json --metrics fd --ref stats.npz
    """
    import torch

    from .bench import prepare_bench
    from .generate import GenerateError

    try:
        bench = prepare_bench(model, samplers=sampler_names, schedules=schedules, nfe=nfe, metrics=metrics,
                              num=num, seeds=seeds, ode_num=ode_num, options=options, batch=batch,
                              device=device, dtype=dtype, detector=detector,
                              detector_weights=detector_weights, ref=ref, out=out, overwrite=overwrite,
                              progress=progress, trust_pickle=trust_pickle)
        if progress:
            click.echo(f"Benchmarking {bench.describe()}", err=True)
        cells = bench.run()
    except GenerateError as e:
        raise _usage_error(e) from None
    except torch.OutOfMemoryError:
        raise click.ClickException(f"out of memory with --batch {batch}: try a smaller --batch") from None
    except OSError as e:
        raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None
    skipped = sum(cell["status"] != "ok" for cell in cells)
    click.echo(f"{len(cells)} cells ({bench.computed} computed, {len(cells) - skipped - bench.computed} "
               f"already done, {skipped} skipped) -> {', '.join(str(p) for p in bench.written)}")


bench = bench_command  # the name tools.cli registers

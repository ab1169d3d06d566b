"""The tuning commands (click command objects; ``tools.cli`` registers them): ``edm tune-schedule``, a thin
layer over ``tools.schedules.tune``, and ``edm tune-solver``, over ``tools.solvers.tune``, with the sampling
options every sampling command shares (:mod:`tools.options`). torch loads when a command runs."""

from __future__ import annotations

import dataclasses

import click

from tools.common import BadInput, check_writable_file, one_line
from tools.options import (
    PROMPT_FLAGS,
    SAMPLING_PARAMS,
    STEERING_FLAGS,
    cli_errors,
    command,
    flag_of,
    model_request,
    one_sampler,
    option,
    progress_option,
    sampling_options,
    seeds_option,
    usage_error,
)

__all__ = ["tune_schedule", "tune_solver"]


# What tune-solver fits with (the steering flags but those that leave the deterministic ODE solve): its help
# lists only these, and it takes no others.
_SOLVER_REFUSED = ("init_image", "strength", "mask", "resample", "corrector", "corrector_steps", "snr",
                   "guidance_start", "guidance_stop")
SOLVER_FLAGS = ("model", "trust_pickle", "sampler", "nfe", "schedule", "sigma_min", "sigma_max",
                "class_label", "guidance", *(name for name in STEERING_FLAGS if name not in _SOLVER_REFUSED),
                "device", "dtype")
SOLVER_HELP = {
    "sampler": "A registered sampler to start the fit from, on --schedule: one that draws no noise and calls "
               "the model once per noise level (e.g. euler, dpmpp_2m, ipndm; not heun, a stochastic or "
               "adaptive sampler, a solver file or auto).  [default: the best such sampler x schedule at "
               "the budget]",
    "nfe": "The budget the solver is fitted for: exactly N model calls per image, N >= 2.  [required]",
    "dtype": "Precision of the model during the fit: float32 or float64 (a float32 fit also serves float16 "
             "and bfloat16 loads of the model).  [default: float32]",
    "schedule": "A registered schedule (`edm schedules`) for the --sampler start.  [default: the best of "
                "karras, exponential, polyexponential and kl_optimal]",
}
# What tune-schedule does not take (it tunes the deterministic ODE solve of an image model): neither in its
# help nor parsed
SCHEDULE_NOT_TAKEN = (*_SOLVER_REFUSED, *PROMPT_FLAGS)


def _not_taken(names, command: str, why: str) -> dict[str, str]:
    """Flag -> why ``command`` does not take it, for sampling flags it leaves out: typing one says so (instead
    of click's guess at a similar flag)."""
    return {flag_of(name): f"{command} does not take {flag_of(name)}: {why}" for name in names}


# step fractions name steps of a schedule that the fit moves; a sigma interval stays put
_STEPS_WHY = "the fit moves the noise levels, so steps name no fixed sigmas: give --guidance-interval LO,HI"
SCHEDULE_NOT_TAKEN_WHY = {
    **_not_taken(SCHEDULE_NOT_TAKEN, "edm tune-schedule", "it tunes an image model's deterministic ODE "
                 "solve (no text, editing or corrector)"),
    **_not_taken(("guidance_start", "guidance_stop"), "edm tune-schedule", _STEPS_WHY)}
SOLVER_NOT_TAKEN_WHY = {
    **_not_taken([name for name in SAMPLING_PARAMS if name not in SOLVER_FLAGS], "edm tune-solver",
                 "it fits an image model's deterministic ODE solve (no text, editing or corrector)"),
    **_not_taken(("guidance_start", "guidance_stop"), "edm tune-solver", _STEPS_WHY),
    "--steps": "a fitted solver makes exactly N model calls: give the budget as --nfe N",
    "--rho": "a fit starts from a registered --schedule and moves its levels itself",
}
# precisions whose rounding the teacher's adaptive ODE solve cannot get under its tolerance (it shrinks its
# steps to nothing and never finishes)
HALF_PRECISION = ("float16", "bfloat16")
# The flag a setting of tune_solver (and of its checkpoint) comes from, where it is not --setting-name.
_SOLVER_PARAMS = {"init": "--sampler", "model_fingerprint": "--model", "class": "--class"}


@command("tune-solver", sampler_options=False, not_taken=SOLVER_NOT_TAKEN_WHY)
@sampling_options(only=SOLVER_FLAGS, helps=SOLVER_HELP, sampler=None, schedule=None)
@seeds_option(None, "Calibration seeds instead of --num's, e.g. 5000-5063.")
@option("Seeds and classes", "--num", type=click.IntRange(min=1), default=None, metavar="N",
        help="Calibration images: seeds 1000000 to 1000000+N-1, apart from the usual evaluation seeds.  "
             "Fewer fit faster but overfit (held-out error 1.75x the calibration error with 256 on digits "
             "at 5 NFE, 1.31x with 1024).  [default: 1024]")
@option("Seeds and classes", "--heldout", type=click.IntRange(min=0), default=64, show_default=True,
        metavar="N", help="Held-out images to judge the fit on: seeds 2000000 to 2000000+N-1 (0: none).")
@option("Sampling", "--iterations", type=click.IntRange(min=0), default=None, metavar="N",
        help="Gradient steps of the fit, each one solver run (forward and backward) on all calibration "
             "images.  [default: 200]")
@option("Sampling", "--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
        help="Calibration images run through the model at once (memory only: each step's gradient is "
             "the whole calibration batch's).  [default: 128]")
@option("Sampling", "--restarts", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
        help="Fit from the K best starts and keep the best fit (K times the time; the error is not "
             "convex, and another start can end lower).")
@option("Output", "--out", required=True, type=click.Path(dir_okay=False), metavar="FILE.json",
        help="Where the solver file goes (written atomically; its folder is created).")
@option("Output", "--checkpoint-every", type=click.IntRange(min=1), default=None, metavar="N",
        help="Save the fit's state to FILE.json.partial every N iterations (also after the teacher "
             "solution, after each start's fit and on Ctrl-C or SIGTERM).  [default: 10]")
@option("Output", "--start-over", is_flag=True,
        help="Discard the state of an earlier, interrupted fit for FILE.json (FILE.json.partial) instead "
             "of continuing it.")
@progress_option
@click.pass_context
def tune_solver(ctx, sampler, nfe, schedule, seeds, num, heldout, iterations, restarts, batch_size, out,
                checkpoint_every, start_over, progress, **flags):
    """Fit a few-step solver to a model at an NFE budget: its noise levels and multistep weights.

    The fit minimises the distance of the solver's samples to the model's own probability-flow ODE
    solution from the same noise (solved near-exactly; no data needed) on a calibration batch, starting
    from the best registered sampler x schedule at that budget (or --sampler / --schedule), and is never
    worse than that start there. It reports the error on held-out seeds too. Class-conditional models
    are fitted with the seeds' classes (or --class), guided sampling with its --guidance: a solver is
    sampled with the guidance it was fitted with. The file is read back by `--sampler file:FILE.json`
    (in edm generate, edm fid gen and edm bench), for this model only.

    Cost: the defaults (1024 calibration seeds x 200 iterations) take about 40 minutes for digits at
    5 NFE on 2 CPU threads: an estimate, from 128 seeds timed on a busy 2-core machine and scaled by 8
    (about 13 minutes for the teacher solution, 3 for scoring the starts, 23 for the iterations). The
    time grows about linearly with --num, --iterations and --restarts.

    The fit's state is saved in FILE.json.partial (see --checkpoint-every): after Ctrl-C, SIGTERM or a
    crash, run the same command again to continue the fit, which ends with the solver file an
    uninterrupted run writes; --start-over discards it. The file is removed once the solver file is
    written.

    \b
    Examples:
      edm tune-solver --model digits --nfe 5 --out digits-5.json
      edm generate --outdir out --sampler file:digits-5.json --seeds 0-63
    """
    from tools.generate.sampling import prepare_sampling
    from tools.schedules.tune import calibration_seeds
    from tools.solvers.checkpoint import FitInterrupted, checkpoint_path
    from tools.solvers.file import fingerprints, save_solver
    from tools.solvers.tune import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_CHECKPOINT_EVERY,
        DEFAULT_ITERATIONS,
        DEFAULT_NUM,
        check_start,
        heldout_seeds,
    )
    from tools.solvers.tune import tune_solver as fit

    if nfe is None:
        raise click.UsageError("give the budget to fit for as --nfe N (a fitted solver takes exactly N "
                               "calls)")
    if len(nfe) != 1:
        raise click.BadParameter("give one budget", param_hint="'--nfe'")
    nfe = nfe[0]
    if flags["dtype"] in HALF_PRECISION:
        raise click.BadParameter(
            f"a fit evaluates the model in float32 or float64, not {flags['dtype']}: the teacher's ODE solve "
            "cannot reach its tolerance through half-precision rounding; a float32 fit also serves float16 "
            "and bfloat16 loads of the model", param_hint="'--dtype'")
    if seeds is not None and num is not None:
        raise click.UsageError("--seeds and --num are mutually exclusive: give one")
    request = model_request(flags, "edm tune-solver", why="it fits the deterministic ODE solve",
                            refused=("cfg_pp",), text_refused=True)
    seeds = seeds if seeds is not None else calibration_seeds(num or DEFAULT_NUM)
    try:
        out_path = check_writable_file(out, "out", example="solver.json")
    except BadInput as e:
        raise usage_error(e) from None
    with cli_errors():
        setup = prepare_sampling(request.replace(sampler="euler", schedule="karras", nfe=nfe))
    loaded = setup.model
    bottom = float(setup.sigmas[-2])
    top = float(setup.sigmas[0])
    flags_of = {**_SOLVER_PARAMS, "seeds": "--seeds" if num is None and ctx.get_parameter_source("seeds")
                is not click.core.ParameterSource.DEFAULT else "--num"}
    try:
        check_start(sampler, schedule, nfe, bottom, top)
    except BadInput as e:
        raise usage_error(e, flags_of.get(e.param)) from None
    held = heldout_seeds(heldout) if heldout else []
    log = (lambda text: click.echo(text, err=True)) if progress else None
    prints = fingerprints(loaded.denoiser)  # as loaded, and as a float16 / bfloat16 load would be
    class_label, steer = request.class_label, request.steering
    record = {"model": str(request.model), "model_fingerprint": prints[0], "model_fingerprints": prints,
              "guidance": setup.guidance,
              "class": class_label if class_label is not None else (
                  "random per seed" if loaded.num_classes else None),
              **({"steering": steer.given()} if steer is not None else {})}
    checkpoint = checkpoint_path(out_path)
    if progress:
        resuming = checkpoint.exists() and not start_over
        resumed = f" (continuing the fit saved in {checkpoint})" if resuming else ""
        click.echo(f"Fitting a {nfe}-NFE solver for {request.model} ({len(seeds)} calibration seeds, "
                   f"{len(held)} held out), sigma {top:g}...{bottom:g}{resumed}", err=True)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        result = fit(setup.denoiser, nfe, shape=loaded.shape, sigma_min=bottom, sigma_max=top, seeds=seeds,
                     heldout=held, cond=setup.cond, init=sampler, schedule=schedule,
                     iterations=DEFAULT_ITERATIONS if iterations is None else iterations, restarts=restarts,
                     batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                     device=setup.device, dtype=setup.state_dtype, progress=progress, log=log,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
                     resume=not start_over, context=_fit_context(record, steer))
    except FitInterrupted as e:
        click.echo(f"Interrupted after iteration {e.iteration} of {e.total}: the fit so far is saved in "
                   f"{e.checkpoint}; run the same command again to continue it", err=True)
        ctx.exit(128 + e.signal)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the fit's loop (the held-out check)
        saved = (f"Interrupted: the fit so far is saved in {checkpoint}; run the same command again to "
                 "continue it")
        click.echo(saved if checkpoint.exists() else "Interrupted before anything was saved", err=True)
        ctx.exit(130)
    except BadInput as e:  # a checkpoint of other settings, or not readable
        raise usage_error(e, flags_of.get(e.param)) from None
    except ValueError as e:  # a start that is not a linear solver of this budget, a bad schedule
        raise click.UsageError(one_line(e)) from None
    except OSError as e:  # the checkpoint cannot be written
        raise click.ClickException(f"cannot write {checkpoint}: {e.strerror or e}") from None
    try:
        save_solver(out_path, result.solver, **record, fit=result.metadata())
    except OSError as e:
        raise click.ClickException(f"cannot write {out_path}: {e.strerror or e}") from None
    checkpoint.unlink(missing_ok=True)  # the solver file holds the fit now
    heldout_text = "" if result.heldout_error is None else (
        f"; held-out {result.heldout_init_error:.4g} -> {result.heldout_error:.4g}")
    click.echo(f"{nfe}-NFE solver: calibration ODE error {result.init_error:.4g} ({result.start}) -> "
               f"{result.error:.4g} ({result.improvement:.2f}x lower){heldout_text}; saved {out_path}")


def _fit_context(record: dict, steer) -> dict:
    """What a checkpoint must match besides the fit's own settings: the model, its weights, class,
    guidance and each steering flag, by the setting's name (each a flag of its own)."""
    context = {key: record[key] for key in ("model", "model_fingerprint", "class", "guidance")}
    return {**context, **(steer.given() if steer is not None else {})}


# ---------------------------------------------------------------------------------------------------
# edm tune-schedule


@command("tune-schedule", not_taken=SCHEDULE_NOT_TAKEN_WHY)
@sampling_options(sampler=None, exclude=SCHEDULE_NOT_TAKEN)
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
    request = model_request(flags, "edm tune-schedule", "float64", why="it fits the deterministic ODE solve",
                            refused=("init_image", "strength", "mask", "resample", "corrector",
                                     "corrector_steps", "snr", "cfg_pp"), text_refused=True)
    nfe, options = one_sampler(sampler, steps, nfe, flags, "edm tune-schedule")
    import samplers

    try:
        if nfe is None:
            nfe = samplers.get(sampler).nfe(steps)
        steps = tunable_steps(sampler, nfe, options)
        check_something_to_tune(sampler, nfe)
    except ValueError as e:  # the message says what is wrong: the sampler, an option of it, or its budget
        raise usage_error(BadInput(one_line(e), terms=(*options, *samplers.get(sampler).options))) from None
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

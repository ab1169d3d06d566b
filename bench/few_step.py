"""Few-step sampling: fitted solvers (``tools.solvers.tune``) against the best registered samplers.

Two parts, each run on its own (``mixture`` takes minutes, ``digits`` about an hour on 2 CPU cores):

* ``mixture``: the exact Gaussian mixture of ``bench/accuracy.py`` (3x16x16, 16 components, sigma 80 ->
  0.002, float64). At each budget: k-diffusion's best deterministic sampler x schedule (as in
  accuracy.py), our best registered sampler x schedule untuned and with a tuned schedule, and the
  fitted solver; ODE error (RMS distance to the near-exact ODE solution) on the evaluation seeds.
  Target: fitted <= 0.15 x k-diffusion's best at 5 and 10 NFE.
* ``digits``: the embedded class-conditional digits model, FD-digits against the shipped reference
  (all 1797 digits) on the evaluation seeds, with a random class per seed. At each budget: the fitted
  solver, the best registered sampler x schedule by FD (untuned) and that sampler with a tuned schedule,
  beside the converged value (heun, 79 NFE) on the same seeds. Target: fitted at 5 NFE <= 1.15 x
  converged. Also the generalisation figures: calibration vs held-out ODE error, and the solver fitted on
  the calibration batch (classes drawn per seed) applied to a batch of one fixed class.

* ``bound``: how far the fit can reach on the mixture at all. The fit is run on the evaluation seeds
  themselves (in-sample: not an evaluation, an optimistic bound on this method), from the three best
  starts, and its error there is set beside k-diffusion's best on the same seeds, with how much of each
  error the hardest few seeds carry. If even this is above the 0.15x target, no solver of the space found
  by this fit meets it on those seeds.

Calibration seeds (1000000 on) and held-out seeds (2000000 on) are apart from the evaluation seeds 0..N-1.

    PYTHONPATH=. python bench/few_step.py mixture [--num 256] [--calibration 256] [--iterations 300]
    PYTHONPATH=. python bench/few_step.py digits [--num 2000] [--calibration 256] [--iterations 300]
    PYTHONPATH=. python bench/few_step.py bound [--num 256] [--iterations 300] [--restarts 3]

Writes ``DIR/few_step/<part>.json`` (every number), ``DIR/few_step/<part>.md`` (the table) and
``DIR/few_step/<part>.png`` (error against NFE), DIR being ``bench-out`` or, with ``--record``,
``bench/results``. The last line printed is ``targets met: X/Y``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

import samplers  # noqa: E402
from edm.checkpoint import atomic_write  # noqa: E402
from samplers.fitted import LinearSolver  # noqa: E402
from tools.schedules.tune import calibration_seeds, tune_schedule  # noqa: E402
from tools.solvers.tune import heldout_seeds, start_candidates, tune_solver  # noqa: E402

MIXTURE_BUDGETS = (5, 10)
DIGITS_BUDGETS = (3, 4, 5)
MIXTURE_TARGET = 0.15
DIGITS_TARGET = 1.15
CONVERGED = ("heun", 79)
# The registered samplers x schedules the "best registered" lines are chosen among on digits (by FD).
DIGITS_SAMPLERS = ("euler", "dpmpp_2m", "dpmpp_3m", "ipndm", "ipndm_afs", "deis", "unipc", "lms")
DIGITS_SCHEDULES = ("karras", "exponential", "kl_optimal")


def environment(threads: int) -> str:
    return (f"{dt.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {threads} thread(s), machine shared with other jobs")


def write(out: Path, part: str, record: dict, table: list[str], plot=None) -> None:
    """``<part>.json``, ``<part>.md`` and, with a ``plot``, ``<part>.png`` under ``out/few_step``."""
    folder = out / "few_step"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    atomic_write(folder / f"{part}.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(folder / f"{part}.md", lambda tmp: Path(tmp).write_text("\n".join(table) + "\n"))
    if plot is not None:
        plot(folder / f"{part}.png")


def line_plot(lines: dict[str, dict[int, float]], ylabel: str, title: str, hline: tuple[str, float] | None):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in lines.items():
            nfes = sorted(points)
            ax.plot(nfes, [points[n] for n in nfes], marker="o", label=label)
        if hline is not None:
            ax.axhline(hline[1], color="gray", linestyle="--", label=hline[0])
        ax.set_xlabel("NFE")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)

    return draw


def fmt(x: float) -> str:
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.2e}"


# ---------------------------------------------------------------------------------------------------
# The Gaussian mixture


def mixture_problem(num: int):
    """bench/accuracy.py's problem on the evaluation seeds 0..num-1: (accuracy module, denoiser, latents,
    problem)."""
    import accuracy  # bench/accuracy.py: the problem, k-diffusion's side and our registered side

    from edm.gaussian_mixture import GaussianMixture
    from tools.ode import ReferenceCache

    denoiser = GaussianMixture.random(shape=accuracy.SHAPE, k=16, seed=0, dtype=torch.float64)
    latents = samplers.noise.latents(list(range(num)), accuracy.SHAPE, dtype=torch.float64)
    return accuracy, denoiser, latents, accuracy.Problem(denoiser, latents, ReferenceCache(denoiser, latents))


def mixture(args) -> int:
    accuracy, denoiser, latents, problem = mixture_problem(args.num)
    rows, record, met = [], {"budgets": {}}, 0
    lines: dict[str, dict[int, float]] = {"k-diffusion best": {}, "ours untuned best": {},
                                          "fitted solver": {}}
    for budget in MIXTURE_BUDGETS:
        started = time.perf_counter()
        theirs = min(accuracy.kdiffusion_cells(problem, budget), key=lambda c: c["ode_rmse"])
        ours = accuracy.our_cells(problem, budget)
        best_ours = min(ours, key=lambda c: c["ode_rmse"])
        fit = tune_solver(denoiser, budget, shape=accuracy.SHAPE, sigma_min=accuracy.SIGMA_MIN,
                          sigma_max=accuracy.SIGMA_MAX, num=args.calibration, heldout_num=args.heldout,
                          iterations=args.iterations, batch_size=args.batch_size, progress=True, log=print)
        out = fit.solver.sample(denoiser, latents)
        error = problem.error(out, [accuracy.SIGMA_MAX])
        ratio = error.rms / theirs["ode_rmse"]
        met += ratio <= MIXTURE_TARGET
        generalisation = fit.heldout_error / fit.error
        record["budgets"][budget] = {
            "k-diffusion best": theirs, "ours untuned best": best_ours,
            "fitted": {"ode_rmse": error.rms, "ode_median": error.median, "start": fit.start,
                       "calibration_error": fit.error, "calibration_start_error": fit.init_error,
                       "heldout_error": fit.heldout_error, "heldout_start_error": fit.heldout_init_error,
                       "sigmas": fit.solver.sigmas.tolist(), "weights": fit.solver.weights.tolist(),
                       "model_sigmas": None if fit.solver.model_sigmas is None
                       else fit.solver.model_sigmas.tolist(), "afs": fit.solver.afs},
            "ratio": ratio, "seconds": time.perf_counter() - started}
        for label, value in (("k-diffusion best", theirs["ode_rmse"]),
                             ("ours untuned best", best_ours["ode_rmse"]), ("fitted solver", error.rms)):
            lines[label][budget] = value
        rows.append(f"| {budget} | {theirs['sampler']} / {theirs['schedule']} | {fmt(theirs['ode_rmse'])} | "
                    f"{best_ours['sampler']} / {best_ours['schedule']} | {fmt(best_ours['ode_rmse'])} | "
                    f"from {fit.start} | **{fmt(error.rms)}** (median {fmt(error.median)}) | "
                    f"**{ratio:.3f}** | {fmt(fit.error)} / {fmt(fit.heldout_error)} "
                    f"({generalisation:.2f}x) | "
                    f"{'met' if ratio <= MIXTURE_TARGET else 'missed'} |")
        print(rows[-1], flush=True)
    table = [
        f"`PYTHONPATH=. python bench/few_step.py mixture --num {args.num} --calibration {args.calibration} "
        f"--heldout {args.heldout} --iterations {args.iterations}`, {environment(torch.get_num_threads())}.",
        "",
        f"{args.num} evaluation seeds (0..{args.num - 1}); fitted on {args.calibration} calibration seeds "
        f"({calibration_seeds(1)[0]} on), judged also on {args.heldout} held-out seeds "
        f"({heldout_seeds(1)[0]} on). Error: RMS distance to the probability-flow ODE (DOP853, rtol = atol "
        f"= 1e-10) from the same noise, then the final denoising jump; float64.",
        "",
        "| NFE | k-diffusion best | error | ours untuned best | error | "
        "fitted solver | error | fitted / k-diffusion | calibration / held-out error | target "
        f"<= {MIXTURE_TARGET} |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"targets met: {met}/{len(MIXTURE_BUDGETS)}",
    ]
    record.update(num=args.num, calibration=args.calibration, heldout=args.heldout,
                  iterations=args.iterations, environment=environment(torch.get_num_threads()))
    write(out_dir(args), "mixture", record, table,
          line_plot(lines, "ODE error (RMS)", "Gaussian mixture: ODE error at few NFE", None))
    print(f"targets met: {met}/{len(MIXTURE_BUDGETS)}")
    return 0


def per_seed_spread(x: torch.Tensor, reference: torch.Tensor, top: int = 5) -> dict:
    """How the squared error spreads over seeds: the share the ``top`` worst seeds carry, and the RMS of
    the rest."""
    per = (x.to(torch.float64) - reference).flatten(1).square().mean(1)
    ranked = per.sort(descending=True).values
    return {f"top{top}_share": float(ranked[:top].sum() / ranked.sum()),
            f"rms_without_top{top}": float(ranked[top:].mean().sqrt()),
            "worst_seeds": per.argsort(descending=True)[:top].tolist()}


def bound(args) -> int:
    accuracy, denoiser, latents, problem = mixture_problem(args.num)
    ends = torch.tensor([accuracy.SIGMA_MAX, accuracy.SIGMA_MIN, 0.0], dtype=torch.float64)
    reference = problem.reference(ends)
    rows, record, met = [], {"budgets": {}}, 0
    for budget in MIXTURE_BUDGETS:
        started = time.perf_counter()
        theirs = min(accuracy.kdiffusion_cells(problem, budget), key=lambda c: c["ode_rmse"])
        fit = tune_solver(denoiser, budget, shape=accuracy.SHAPE, sigma_min=accuracy.SIGMA_MIN,
                          sigma_max=accuracy.SIGMA_MAX, seeds=list(range(args.num)), heldout=[],
                          iterations=args.iterations, restarts=args.restarts, batch_size=args.batch_size,
                          progress=True, log=print)
        out = fit.solver.sample(denoiser, latents)
        error = problem.error(out, [accuracy.SIGMA_MAX])
        start = samplers.sample(denoiser, latents * accuracy.SIGMA_MAX, fit.start_solver.sigmas,
                                fit.start_solver)
        ratio = error.rms / theirs["ode_rmse"]
        met += ratio <= MIXTURE_TARGET
        spread = {"fitted": per_seed_spread(out, reference), "start": per_seed_spread(start, reference)}
        record["budgets"][budget] = {"k-diffusion best": theirs, "in-sample fit": {
            "ode_rmse": error.rms, "ode_median": error.median, "start": fit.start,
            "start_error": fit.init_error, "starts": {label: fit.candidates[label] for label in fit.fits}},
            "spread": spread, "ratio": ratio,
            "seconds": time.perf_counter() - started}
        rows.append(f"| {budget} | {theirs['sampler']} / {theirs['schedule']} | {fmt(theirs['ode_rmse'])} | "
                    f"{fit.start} | {fmt(fit.init_error)} | **{fmt(error.rms)}** "
                    f"(median {fmt(error.median)}) | **{ratio:.3f}** | {spread['start']['top5_share']:.2f} / "
                    f"{spread['fitted']['top5_share']:.2f} | {fmt(spread['fitted']['rms_without_top5'])} |")
        print(rows[-1], flush=True)
    table = [
        f"`PYTHONPATH=. python bench/few_step.py bound --num {args.num} --iterations {args.iterations} "
        f"--restarts {args.restarts}`, {environment(torch.get_num_threads())}.",
        "",
        f"The fit run on the {args.num} evaluation seeds themselves (in-sample), from the {args.restarts} "
        f"best starts, {args.iterations} steps each: an optimistic bound on what this fit reaches there, not "
        "an evaluation. Error: RMS distance to the probability-flow ODE from the same noise, float64.",
        "",
        "| NFE | k-diffusion best | error | best fit's start | start error | in-sample fit | "
        f"fit / k-diffusion (target <= {MIXTURE_TARGET}) | worst 5 seeds' share of the squared error "
        "(start / fit) | fit's RMS without them |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"bounds under the target: {met}/{len(MIXTURE_BUDGETS)}",
    ]
    record.update(num=args.num, iterations=args.iterations, restarts=args.restarts,
                  environment=environment(torch.get_num_threads()))
    write(out_dir(args), "bound", record, table, None)
    print(f"bounds under the target: {met}/{len(MIXTURE_BUDGETS)}")
    return 0


# ---------------------------------------------------------------------------------------------------
# The digits model


def digits(args) -> int:
    from tools.fid.scoring import score
    from tools.generate.runner import sample_images
    from tools.generate.sampling import prepare_sampling
    from tools.request import SamplingRequest
    from tools.solvers.file import fingerprints, save_solver

    seeds = list(range(args.num))
    ref = Path(__file__).resolve().parents[1] / "tools" / "fid" / "refs" / "digits.npz"

    def fd(setup, which=seeds) -> float:
        batches = (sample_images(setup, which[i:i + args.batch]) for i in range(0, len(which), args.batch))
        return float(score(batches, str(ref), ["fd"], detector="digits", batch=args.batch)["fd_digits"])

    def setup_for(sampler, nfe=None, schedule="karras", dtype="float32", class_label=None):
        return prepare_sampling(SamplingRequest(sampler=sampler, nfe=nfe, schedule=schedule, device="cpu",
                                                dtype=dtype, class_label=class_label))

    started = time.perf_counter()
    converged = fd(setup_for(CONVERGED[0], CONVERGED[1]))
    print(f"converged {CONVERGED[0]} {CONVERGED[1]} NFE: FD-digits {converged:.4f}", flush=True)
    record: dict = {"converged": {"sampler": CONVERGED[0], "nfe": CONVERGED[1], "fd": converged},
                    "budgets": {}}
    lines: dict[str, dict[int, float]] = {"best registered (untuned)": {},
                                          "best registered, tuned schedule": {}, "fitted solver": {}}
    rows, met = [], 0
    base = setup_for("euler", 5)
    model = base.model
    prints = fingerprints(model.denoiser)  # what each solver file records of the model
    top, bottom = float(base.sigmas[0]), float(base.sigmas[-2])
    for budget in args.budgets:
        cells = {}
        for sampler in DIGITS_SAMPLERS:
            try:
                samplers.steps_for_nfe(sampler, budget)
            except ValueError:
                continue
            for schedule in DIGITS_SCHEDULES:
                cells[(sampler, schedule)] = fd(setup_for(sampler, budget, schedule))
        (sampler, schedule), untuned = min(cells.items(), key=lambda kv: kv[1])
        print(f"NFE {budget}: best registered {sampler} / {schedule}: FD {untuned:.4f}", flush=True)
        tuned_fd, tuned_path = None, None
        try:
            setup64 = setup_for(sampler, budget, schedule, dtype="float64")
            tuned = tune_schedule(setup64.denoiser, sampler, budget, shape=model.shape, num=args.tune_num,
                                  cond=setup64.cond(calibration_seeds(args.tune_num)), init=setup64.sigmas,
                                  max_evals=args.tune_evals, progress=True)
            folder = out_dir(args) / "few_step" / "schedules"
            folder.mkdir(parents=True, exist_ok=True)
            tuned_path = tuned.save(folder / f"digits-{sampler}-nfe{budget}.json", model="digits")
            tuned_fd = fd(setup_for(sampler, budget, f"file:{tuned_path}"))
        except ValueError as e:  # too few steps to move
            print(f"  no tuned schedule for {sampler} at {budget}: {e}")
        fitted_setup = setup_for("euler", budget)
        fit = tune_solver(fitted_setup.denoiser, budget, shape=model.shape, sigma_min=bottom, sigma_max=top,
                          num=args.calibration, heldout_num=args.heldout, cond=fitted_setup.cond,
                          iterations=args.iterations, batch_size=args.batch_size, dtype=torch.float32,
                          progress=True, log=print)
        fitted_fd = fd_solver(fitted_setup, fit.solver, seeds, args.batch, ref)
        # Another class-conditional batch: the same solver on 256 seeds of one fixed class each (0 and 7).
        fixed = {}
        for label in (0, 7):
            one_class = setup_for("euler", budget, class_label=label)
            fixed[label] = one_class_error(one_class, fit.solver, bottom, top)
        ratio = fitted_fd / converged
        met += budget == 5 and ratio <= DIGITS_TARGET
        record["budgets"][budget] = {
            "registered": {f"{k[0]} / {k[1]}": v for k, v in cells.items()},
            "best_registered": {"sampler": sampler, "schedule": schedule, "fd": untuned},
            "tuned_schedule": {"fd": tuned_fd, "file": None if tuned_path is None else tuned_path.name},
            "fitted": {"fd": fitted_fd, "start": fit.start, "calibration_error": fit.error,
                       "calibration_start_error": fit.init_error, "heldout_error": fit.heldout_error,
                       "heldout_start_error": fit.heldout_init_error, "one_class_errors": fixed,
                       "sigmas": fit.solver.sigmas.tolist(), "weights": fit.solver.weights.tolist(),
                       "model_sigmas": None if fit.solver.model_sigmas is None
                       else fit.solver.model_sigmas.tolist(), "afs": fit.solver.afs},
            "ratio_to_converged": ratio}
        lines["best registered (untuned)"][budget] = untuned
        if tuned_fd is not None:
            lines["best registered, tuned schedule"][budget] = tuned_fd
        lines["fitted solver"][budget] = fitted_fd
        tuned_text = "-" if tuned_fd is None else f"{tuned_fd:.3f}"
        rows.append(f"| {budget} | {sampler} / {schedule} | {untuned:.3f} | {tuned_text} | "
                    f"from {fit.start} | "
                    f"**{fitted_fd:.3f}** | **{ratio:.3f}** | {fit.error:.4f} / {fit.heldout_error:.4f} "
                    f"({fit.heldout_error / fit.error:.2f}x) | {fixed[0][1]:.4f}, {fixed[7][1]:.4f} |")
        print(rows[-1], flush=True)
        path = out_dir(args) / "few_step" / f"digits-{budget}.json"
        save_solver(path, fit.solver, model="digits", model_fingerprint=prints[0], model_fingerprints=prints,
                    guidance=0.0, **{"class": "random per seed"}, fit=fit.metadata())
    elapsed = time.perf_counter() - started
    table = [
        f"`PYTHONPATH=. python bench/few_step.py digits --num {args.num} --calibration {args.calibration} "
        f"--heldout {args.heldout} --iterations {args.iterations} "
        f"--budgets {','.join(map(str, args.budgets))}`, "
        f"{environment(torch.get_num_threads())}; "
        f"{elapsed / 60:.0f} min.",
        "",
        f"FD-digits of seeds 0..{args.num - 1} (a random class per seed) against the shipped reference (all "
        f"1797 digits). Converged: {CONVERGED[0]} at {CONVERGED[1]} NFE, same seeds: **{converged:.3f}**. "
        f"Best registered: the lowest FD among {', '.join(DIGITS_SAMPLERS)} x {', '.join(DIGITS_SCHEDULES)} "
        f"at that budget; tuned schedule: that sampler with `tune_schedule` ({args.tune_num} calibration "
        f"seeds, {args.tune_evals} runs). Fitted solvers: {args.calibration} calibration seeds, float32, "
        f"{args.iterations} iterations; "
        f"calibration / held-out columns are ODE errors ({args.heldout} held-out seeds); the last column is "
        "the ODE error on 64 seeds that all have class 0, then class 7 (the fit drew a class per seed).",
        "",
        "| NFE | best registered | FD | tuned schedule FD | fitted solver | FD | FD / converged | "
        "calibration / held-out ODE error | one class (0, 7) ODE error |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"targets met: {met}/1 (fitted at 5 NFE <= {DIGITS_TARGET} x converged)",
    ]
    record.update(num=args.num, calibration=args.calibration, heldout=args.heldout,
                  iterations=args.iterations, environment=environment(torch.get_num_threads()),
                  minutes=elapsed / 60)
    write(out_dir(args), "digits", record, table,
          line_plot(lines, "FD-digits", "digits model: FD-digits at few NFE",
                    (f"{CONVERGED[0]} {CONVERGED[1]} NFE", converged)))
    print(f"targets met: {met}/1")
    return 0


def fd_solver(setup, solver: LinearSolver, seeds, batch: int, ref: Path) -> float:
    """FD-digits of a fitted solver, sampled through the same Sampling as the registered ones."""
    import dataclasses

    from tools.fid.scoring import score
    from tools.generate.runner import sample_images

    run = dataclasses.replace(setup, sampler=solver.name, solver=solver, sigmas=solver.sigmas.clone(),
                              steps=solver.levels, nfe=solver.nfe, options={})
    batches = (sample_images(run, seeds[i:i + batch]) for i in range(0, len(seeds), batch))
    return float(score(batches, str(ref), ["fd"], detector="digits", batch=batch)["fd_digits"])


def one_class_error(setup, solver: LinearSolver, bottom: float, top: float) -> tuple[float, float]:
    """(start error, fitted error) on 64 held-out seeds of one class: the fitted solver against the ODE."""
    from tools.solvers.tune import Batch

    seeds = heldout_seeds(64)
    batch = Batch(setup.denoiser, seeds, setup.model.shape, setup.cond(seeds), bottom, top, setup.device,
                  torch.float32)
    best_start = min(start_candidates(solver.nfe, bottom, top).values(), key=batch.error)
    return batch.error(best_start), batch.error(solver)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["mixture", "digits", "bound"])
    parser.add_argument("--num", type=int, default=None, help="evaluation seeds (mixture 256, digits 2000)")
    parser.add_argument("--calibration", type=int, default=256, help="calibration seeds of the fit")
    parser.add_argument("--heldout", type=int, default=256, help="held-out seeds of the fit")
    parser.add_argument("--iterations", type=int, default=300, help="gradient steps of the fit")
    parser.add_argument("--restarts", type=int, default=3, help="starts the bound's fit is run from")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="calibration samples run at once in the fit (memory only)")
    parser.add_argument("--tune-num", type=int, default=16,
                        help="calibration seeds of tune_schedule (digits)")
    parser.add_argument("--tune-evals", type=int, default=100, help="sampler runs of tune_schedule (digits)")
    parser.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")],
                        default=list(DIGITS_BUDGETS), help="digits budgets (default 3,4,5)")
    parser.add_argument("--batch", type=int, default=500, help="digits images per batch")
    add_out_arguments(parser)
    args = parser.parse_args(argv)
    if args.num is None:
        args.num = 256 if args.part == "mixture" else 2000
    return {"mixture": mixture, "digits": digits, "bound": bound}[args.part](args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Fitted linear multistep solvers: samplers.fitted, tools.solvers.tune, solver files, `edm tune-solver`
and `--sampler file:PATH`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import samplers
from _support import assert_usage_error, error_lines, invoke
from edm.gaussian_mixture import GaussianMixture
from samplers import schedules
from samplers.fitted import LinearSolver, from_sampler, multistep
from tools import tune_cli as solver_cli
from tools.generate import cli as generate_cli
from tools.ode import ReferenceCache, rms_error
from tools.solvers.file import SolverFileError, fingerprint, fingerprints, load_solver, save_solver
from tools.solvers.tune import distinct_starts, start_candidates, tune_solver

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 4, 4)
RANGE = dict(sigma_min=0.002, sigma_max=80.0)
# Every deterministic registered sampler that evaluates once per (strictly decreasing) level.
LINEAR = ("ddim", "deis", "dpm_2", "dpmpp_2m", "dpmpp_3m", "euler", "ipndm", "ipndm_afs", "lms",
          "res_multistep", "unipc")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture.random(SHAPE, k=4, seed=0, std_range=(0.15, 0.4), dtype=torch.float64)


def karras(steps):
    return schedules.get("karras")(steps, 0.002, 80.0).to(torch.float64)


def latents(seeds):
    return samplers.noise.latents(list(seeds), SHAPE, dtype=torch.float64)


class PointMass:
    """The exact denoiser of data at one point: D = mu whatever x and sigma. Its ODE is linear,
    x(sigma) = mu + (sigma / sigma_0) (x_0 - mu), so Euler (= DDIM) solves it exactly at any budget."""

    def __init__(self, mu):
        self.mu = mu

    def __call__(self, x, sigma, **cond):
        return self.mu.expand_as(x).to(x.dtype) + 0 * x * sigma.reshape(-1, *[1] * (x.ndim - 1))


# ---------------------------------------------------------------------------------------------------
# Registered samplers as points of the space


@pytest.mark.parametrize("sampler", LINEAR)
def test_reading_a_sampler_reproduces_it(mixture, sampler):
    steps = samplers.steps_for_nfe(sampler, 6)
    sigmas = karras(steps)
    solver = from_sampler(sampler, sigmas)
    x = latents(range(4)) * 80.0
    want = samplers.sample(mixture, x, sigmas, sampler)
    got = samplers.sample(mixture, x, solver.sigmas, solver)
    assert solver.nfe == samplers.registry.nfe_on(sampler, sigmas)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", LINEAR)
def test_consistent_samplers_have_rows_summing_to_one(sampler):
    solver = from_sampler(sampler, karras(samplers.steps_for_nfe(sampler, 6)))
    rows = solver.weights.sum(1)[int(solver.afs):]
    if solver.afs:  # D_0 = 0 stands in for the first evaluation: rows sum to 1 on the real ones only later
        return
    torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-12)


def test_euler_is_the_identity_weight_matrix():
    solver = from_sampler("euler", karras(5))
    torch.testing.assert_close(solver.weights, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("sampler, match", [
    ("heun", "twice at one noise level"),
    ("euler_ancestral", "stochastic"),
    ("dpm_adaptive", "adaptive"),
    ("dpm_fast", "not exact for a zero denoiser"),
])
def test_samplers_outside_the_space_are_refused(sampler, match):
    with pytest.raises(ValueError, match=match):
        from_sampler(sampler, karras(4))


def test_a_solver_is_a_sampler_for_any_denoiser(mixture):
    solver = from_sampler("dpmpp_2m", karras(5))
    x = latents(range(3))
    direct = solver.sample(mixture, x)
    assert torch.equal(direct, samplers.sample(mixture, x * 80.0, solver.sigmas, solver))
    assert samplers.get(solver).nfe_per_step is None and samplers.registry.nfe_on(solver, solver.sigmas) == 5
    with pytest.raises(ValueError, match="takes 5 levels"):
        samplers.sample(mixture, x, karras(7), solver)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigmas=[80.0, 1.0, 2.0, 0.0], weights=torch.eye(3)), "strictly decreasing"),
    (dict(sigmas=[80.0, 1.0, 0.0], weights=torch.ones(2, 2)), "lower-triangular"),
    (dict(sigmas=[80.0, 1.0, 0.0], weights=torch.eye(3)), "2x2"),
    (dict(sigmas=[80.0, 0.0], weights=torch.eye(1), afs=True), "analytical first step"),
    (dict(sigmas=[80.0, 1.0, 0.0], weights=torch.eye(2), model_sigmas=[1.0, -1.0]), "model_sigmas"),
])
def test_invalid_solvers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearSolver(**kwargs)


# ---------------------------------------------------------------------------------------------------
# The fit


def test_exact_on_a_linear_ode_where_the_start_is_exact():
    """Point-mass data: Euler is exact at any budget, so the start has error 0; the fit keeps it, and a fit
    run from any start keeps each step's weights summing to 1, which keeps it exact."""
    mu = torch.linspace(-1, 1, math.prod(SHAPE), dtype=torch.float64).reshape(SHAPE)
    denoiser = PointMass(mu)
    fit = tune_solver(denoiser, 4, shape=SHAPE, **RANGE, num=3, heldout_num=2, iterations=5)
    out = fit.solver.sample(denoiser, latents(range(5)))
    torch.testing.assert_close(out, mu.expand_as(out), rtol=0, atol=1e-12)
    assert fit.error <= 1e-12 and fit.init_error <= 1e-12
    moved = tune_solver(denoiser, 4, shape=SHAPE, **RANGE, num=3, heldout=[], init="dpmpp_3m", iterations=5)
    torch.testing.assert_close(moved.solver.sample(denoiser, latents(range(5))), mu.expand(5, *SHAPE),
                               rtol=0, atol=1e-12)


def test_zero_iterations_return_the_start_exactly(mixture):
    fit = tune_solver(mixture, 5, shape=SHAPE, **RANGE, num=4, heldout=[], init="dpmpp_2m", iterations=0)
    x = latents(range(3))
    want = samplers.sample(mixture, x * 80.0, karras(5), "dpmpp_2m")
    torch.testing.assert_close(fit.solver.sample(mixture, x), want, rtol=0, atol=1e-12)
    assert fit.start == "dpmpp_2m / karras" and fit.error == fit.init_error


def test_a_fitted_solver_is_a_start_of_its_own(mixture):
    told = LinearSolver(karras(4), from_sampler("dpmpp_2m", karras(4)).weights,
                        model_sigmas=karras(4)[:-1] * torch.tensor([1.1, 0.9, 1.2, 1.0], dtype=torch.float64))
    fit = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=4, heldout=[], init=told, iterations=3)
    again = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=4, heldout=[], init=told, iterations=0)
    x = latents(range(2))
    assert torch.equal(again.solver.sample(mixture, x), told.sample(mixture, x))
    assert fit.error <= fit.init_error == again.error


@pytest.mark.slow
def test_the_fit_beats_its_start_on_calibration_and_held_out_seeds(mixture):
    fit = tune_solver(mixture, 5, shape=SHAPE, **RANGE, num=32, heldout_num=32, iterations=60)
    assert fit.start in start_candidates(5, 0.002, 80.0)
    assert fit.init_error == min(fit.candidates.values())
    assert fit.error < fit.init_error / 2
    assert fit.heldout_error < fit.heldout_init_error / 1.5
    assert fit.solver.nfe == 5 and fit.solver.sigmas[0] == 80.0 and fit.solver.sigmas[-2] >= 0.002
    # The errors are what they say: the solver against the ODE from the same calibration noise.
    noise = latents(fit.seeds)
    reference = ReferenceCache(mixture, noise)(torch.tensor([80.0, 0.002, 0.0], dtype=torch.float64))
    assert math.isclose(rms_error(fit.solver.sample(mixture, noise), reference), fit.error, rel_tol=1e-6)


@pytest.mark.slow
def test_the_fit_does_not_depend_on_how_the_batch_is_chunked(mixture):
    whole = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=12, heldout=[], iterations=6, batch_size=None)
    chunked = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=12, heldout=[], iterations=6, batch_size=5)
    torch.testing.assert_close(chunked.solver.weights, whole.solver.weights, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked.solver.sigmas, whole.solver.sigmas, rtol=1e-10, atol=0)
    assert math.isclose(chunked.error, whole.error, rel_tol=1e-9)


@pytest.mark.slow
def test_restarts_keep_the_best_of_the_fits_from_the_best_starts(mixture):
    """restarts=3 fits from each of the three best starts, and returns the fit a single-start run from
    that start gives (the same steps), the lowest of the three."""
    common = dict(shape=SHAPE, **RANGE, num=6, heldout=[], iterations=4)
    fit = tune_solver(mixture, 4, restarts=3, **common)
    starts = start_candidates(4, 0.002, 80.0)
    ranked = distinct_starts(sorted(fit.candidates, key=fit.candidates.get), starts)[:3]
    # polyexponential at its default rho is exponential: a repeated start is not fitted twice
    pair = ["euler / exponential", "euler / polyexponential"]
    assert distinct_starts(pair, starts) == pair[:1]
    alone = {label: tune_solver(mixture, 4, init=starts[label], **common) for label in ranked}
    assert fit.start in ranked and fit.settings["restarts"] == 3
    assert list(fit.fits) == ranked and fit.fits == {label: alone[label].error for label in ranked}
    assert fit.error == min(one.error for one in alone.values()) == alone[fit.start].error
    assert torch.equal(fit.solver.weights, alone[fit.start].solver.weights)
    assert fit.init_error == fit.candidates[fit.start]


def test_never_worse_than_the_start(mixture):
    """A learning rate far too large diverges; the start comes back."""
    fit = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=4, heldout=[], init="ipndm", iterations=3,
                      learning_rate=50.0)
    assert fit.error <= fit.init_error


def test_conditioning_reaches_the_denoiser(mixture):
    seen = []

    def denoiser(x, sigma, class_labels=None):
        seen.append(class_labels.shape)
        return mixture(x, sigma)

    tune_solver(denoiser, 3, shape=SHAPE, **RANGE, num=3, heldout_num=2, init="euler", iterations=1,
                cond=lambda seeds: {"class_labels": torch.zeros(len(seeds), 10)})
    assert {s[0] for s in seen} == {3, 2}


@pytest.mark.parametrize("kwargs, match", [
    (dict(nfe=0), "nfe"),
    (dict(init="heun"), "twice at one noise level"),
    (dict(init="nope"), "registered sampler, not 'nope'"),
    (dict(seeds=[1, 1]), "distinct"),
    (dict(seeds=[5, 6], heldout=[6]), "apart"),
    (dict(restarts=0), "restarts"),
])
def test_bad_arguments(mixture, kwargs, match):
    args = {"nfe": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        tune_solver(mixture, args.pop("nfe"), shape=SHAPE, **RANGE, num=2, iterations=1, **args)


# ---------------------------------------------------------------------------------------------------
# Files


def test_file_round_trip(mixture, tmp_path):
    fit = tune_solver(mixture, 4, shape=SHAPE, **RANGE, num=4, heldout_num=2, iterations=5)
    path = save_solver(tmp_path / "s.json", fit.solver, model="mix", model_fingerprint="sha256:x",
                       guidance=0.0, fit=fit.metadata())
    loaded = load_solver(path)
    assert torch.equal(loaded.solver.sigmas, fit.solver.sigmas)
    assert torch.equal(loaded.solver.weights, fit.solver.weights)
    if fit.solver.model_sigmas is not None:
        assert torch.equal(loaded.solver.model_sigmas, fit.solver.model_sigmas)
    x = latents(range(3))
    assert torch.equal(loaded.solver.sample(mixture, x), fit.solver.sample(mixture, x))
    assert loaded.metadata["fit"]["start"] == fit.start and loaded.metadata["nfe"] == 4
    assert json.loads(path.read_text())["format"] == "edm-samplers/solver-v1"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("text, match", [
    ("{", "corrupt"),
    ('{"format": "other"}', "not an edm-samplers solver file"),
    ('{"format": "edm-samplers/solver-v1", "nfe": 1, "sigmas": [1, 2, 0], "weights": [[1, 0], [0, 1]]}',
     "strictly decreasing"),
    ('{"format": "edm-samplers/solver-v1", "nfe": 3, "sigmas": [2, 1, 0], "weights": [[1, 0], [0, 1]]}',
     "says nfe 3"),
])
def test_bad_files(tmp_path, text, match):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(SolverFileError, match=match):
        load_solver(path)


def test_fingerprint_follows_the_weights_not_their_dtype():
    net = torch.nn.Linear(3, 2)
    a = fingerprint(net)
    assert fingerprint(net.double()) == a
    with torch.no_grad():
        net.weight[0, 0] += 1
    assert fingerprint(net) != a


# ---------------------------------------------------------------------------------------------------
# The commands


@pytest.fixture(scope="module")
def digits_solver(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("solver") / "digits-3.json"
    result = invoke(solver_cli.tune_solver, "--model", "digits", "--nfe", 3, "--num", 3, "--heldout", 2,
                    "--iterations", 2, "--restarts", 2, "--out", out, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_cli_fits_and_records_what_it_fitted(digits_solver):
    loaded = load_solver(digits_solver)
    meta = loaded.metadata
    assert loaded.solver.nfe == 3 and meta["model"] == "digits" and meta["guidance"] == 0.0
    assert meta["class"] == "random per seed" and meta["fit"]["seeds"] == "1000000-1000002"
    assert meta["fit"]["heldout_seeds"] == "2000000-2000001"
    assert meta["fit"]["error"] <= meta["fit"]["init_error"] and meta["fit"]["restarts"] == 2
    from tools.models import load_model

    assert meta["model_fingerprint"] == fingerprint(load_model("digits").denoiser)
    assert meta["model_fingerprints"] == fingerprints(load_model("digits").denoiser)


@pytest.mark.slow
def test_a_solver_fitted_in_float32_serves_half_precision_loads_of_its_model(digits_solver, tmp_path):
    """A cast rounds the weights, so a bfloat16 load has other bytes; the file records what they are."""
    from tools.models import load_model

    prints = fingerprints(load_model("digits").denoiser)
    assert len(prints) == 3
    for dtype in (torch.float16, torch.bfloat16):
        half = fingerprint(load_model("digits", dtype=dtype).denoiser)
        assert half != prints[0] and half in prints
    result = invoke(generate_cli.generate, "--sampler", f"file:{digits_solver}", "--seeds", "0",
                    "--dtype", "bfloat16", "--outdir", tmp_path / "bf16", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads(digits_solver.read_text())
    del record["model_fingerprints"]  # a file that knows only its float32 weights
    (tmp_path / "old.json").write_text(json.dumps(record))
    result = invoke(generate_cli.generate, "--sampler", f"file:{tmp_path / 'old.json'}", "--seeds", "0",
                    "--dtype", "bfloat16", "--outdir", tmp_path / "old", "--device", "cpu", "--no-progress")
    assert result.exit_code == 2 and "fitted for another model" in result.output


@pytest.mark.slow
def test_generate_with_a_solver_file_is_batch_invariant(digits_solver, tmp_path):
    outs = []
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        result = invoke(generate_cli.generate, "--sampler", f"file:{digits_solver}", "--seeds", "0-3",
                        "--batch", batch, "--outdir", out, "--device", "cpu", "--no-progress")
        assert result.exit_code == 0, result.output
        outs.append(out)
    for name in ("000000.png", "000003.png"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    record = json.loads((outs[0] / "edm-generate.json").read_text())
    assert record["sampler"] == f"file:{digits_solver}" and record["schedule"] == "fitted"


@pytest.mark.slow
def test_a_solver_is_refused_for_another_model(digits_solver, tmp_path):
    record = json.loads(digits_solver.read_text())
    record["model_fingerprint"] = "sha256:" + "0" * 64
    record["model_fingerprints"] = [record["model_fingerprint"]]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(record))
    result = invoke(generate_cli.generate, "--sampler", f"file:{other}", "--seeds", "0", "--outdir",
                    tmp_path / "out", "--device", "cpu", "--no-progress")
    assert result.exit_code == 2
    errors = error_lines(result)
    assert len(errors) == 1 and "fitted for another model" in errors[0], result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, match", [
    (["--nfe", 4], "runs at 3 NFE"),
    (["--steps", 5], "takes 3 steps"),
    (["--schedule", "karras"], "drop --schedule"),
    (["--eta", 1], "takes no sampler options"),
    (["--guidance", 1], "fitted with guidance 0"),
    (["--sigma-max", 10], "own noise levels"),
])
@pytest.mark.slow
def test_generate_refuses_what_a_solver_file_fixes(digits_solver, tmp_path, args, match):
    result = invoke(generate_cli.generate, "--sampler", f"file:{digits_solver}", "--seeds", "0", "--outdir",
                    tmp_path / "out", "--device", "cpu", "--no-progress", *args)
    assert result.exit_code == 2, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and match in errors[0], result.output


@pytest.mark.parametrize("args, match", [
    (["--nfe", 0], "--nfe"),
    (["--steps", 3], "--steps"),
    (["--sampler", "heun"], "twice at one noise level"),
    (["--sampler", "nope"], "registered sampler, not 'nope'"),
    (["--eta", 1], "--eta"),
    (["--model", "no/such/model.json"], "--model"),
    (["--out", "."], "is a directory"),
    (["--seeds", "5-9", "--num", 5], "mutually exclusive"),
    (["--restarts", 0], "--restarts"),
])
def test_tune_solver_bad_inputs(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    base = {"--model": "digits", "--nfe": 3, "--out": "s.json", "--num": 2, "--heldout": 0,
            "--iterations": 1}
    given = dict(zip(args[::2], args[1::2]))
    merged = {**base, **given}
    if "--steps" in given:
        merged.pop("--nfe")
    if "--seeds" in given:
        merged["--num"] = given.get("--num", 5)
    result = invoke(solver_cli.tune_solver, "--no-progress", "--device", "cpu",
                    *[str(a) for key, value in merged.items() for a in (key, value)])
    assert_usage_error(result, match)
    assert not (tmp_path / "s.json").exists()


def test_multistep_with_model_levels_tells_the_model_other_levels():
    told = []

    def model(x, sigma):
        told.append(float(sigma))
        return torch.zeros_like(x)

    multistep(model, torch.ones(1, 1), [4.0, 2.0, 1.0], torch.eye(3), model_levels=[5.0, 3.0, 1.5])
    assert told == [5.0, 3.0, 1.5]


@pytest.mark.slow
def test_bench_runs_a_solver_file_at_its_own_budget(digits_solver, tmp_path):
    from tools.compare import cli as bench_cli

    out = tmp_path / "bench"
    result = invoke(bench_cli.bench, "--model", "digits", "--sampler", f"file:{digits_solver},ipndm", "--nfe",
                    "3,4", "--metrics", "ode", "--num", 2, "--ode-num", 2, "--out", out, "--device", "cpu",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    cells = {(c["sampler"], c["schedule"], c["nfe_budget"]): c
             for c in json.loads((out / "results.json").read_text())["cells"]}
    mine = cells[(f"file:{digits_solver}", "fitted", 3)]
    assert mine["status"] == "ok" and mine["nfe"] == 3 and mine["ode_rmse"] > 0
    assert cells[(f"file:{digits_solver}", "fitted", 4)]["status"] == "skipped: fitted for 3 NFE"
    assert cells[("ipndm", "karras", 4)]["status"] == "ok"


@pytest.mark.slow
def test_bench_refuses_a_solver_for_another_model(digits_solver, tmp_path):
    from tools.compare import cli as bench_cli

    record = json.loads(digits_solver.read_text())
    record["model_fingerprint"] = "sha256:" + "1" * 64
    record["model_fingerprints"] = [record["model_fingerprint"]]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(record))
    result = invoke(bench_cli.bench, "--model", "digits", "--sampler", f"file:{other}", "--nfe", 3,
                    "--metrics", "ode", "--num", 2, "--device", "cpu", "--no-progress", "--out",
                    tmp_path / "b")
    assert result.exit_code == 2
    errors = error_lines(result)
    assert len(errors) == 1 and "fitted for another model" in errors[0], result.output


def test_sampler_auto_picks_what_the_table_says(tmp_path, monkeypatch):
    from tools.models import load_model
    from tools.solvers import auto

    monkeypatch.setenv("EDM_AUTO_DIR", str(tmp_path / "auto"))
    # measured on as many images as the shipped digits table (1000): a smaller table would be passed over
    cells = [{"sampler": sampler, "schedule": schedule, "nfe_budget": 4, "steps": 4, "nfe": 4,
              "evaluations": 4, "stochastic": False, "status": "ok", "num": 1000, "ode_rmse": None, "fd": fd,
              "detector": "digits"}
             for sampler, schedule, fd in (("dpmpp_2m", "karras", 9.0), ("deis", "kl_optimal", 3.0),
                                           ("euler", "exponential", 5.0))]
    auto.write_auto_table(cells, model="digits", fingerprint=fingerprint(load_model("digits").denoiser))
    picks = {}
    for nfe in (4, 6):
        out = tmp_path / f"auto{nfe}"
        result = invoke(generate_cli.generate, "--sampler", "auto", "--nfe", nfe, "--seeds", "0",
                        "--outdir", out, "--device", "cpu", "--no-progress")
        assert result.exit_code == 0, result.output
        record = json.loads((out / "edm-generate.json").read_text())
        picks[nfe] = (record["sampler"], record["schedule"], len(record["sigmas"]) - 1)
        assert record["auto"]["source"].startswith("table")
    # the row at 4 NFE, and at 6 the largest row below it, run at the asked budget
    assert picks == {4: ("deis", "kl_optimal", 4), 6: ("deis", "kl_optimal", 6)}


@pytest.mark.parametrize("args, match", [
    ([], "give --nfe"),
    (["--nfe", 5, "--schedule", "karras"], "drop --schedule"),
    (["--nfe", 5, "--eta", 0.5], "takes no sampler options"),
])
def test_sampler_auto_bad_inputs(tmp_path, args, match):
    result = invoke(generate_cli.generate, "--sampler", "auto", "--seeds", "0", "--outdir", tmp_path / "o",
                    "--device", "cpu", "--no-progress", *args)
    assert result.exit_code == 2, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and match in errors[0], result.output


@pytest.mark.slow
def test_fid_gen_scores_a_solver_file(digits_solver):
    from tools.fid import cli as fid_cli

    result = invoke(fid_cli.fid, "gen", "--sampler", f"file:{digits_solver}", "--num", 8, "--ref", "digits",
                    "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("fd_digits ")
    assert float(result.stdout.split()[1]) > 0


@pytest.mark.slow
def test_a_guided_fit_is_sampled_with_its_guidance(tmp_path):
    out = tmp_path / "guided.json"
    result = invoke(solver_cli.tune_solver, "--model", "digits", "--nfe", 3, "--num", 2, "--heldout", 0,
                    "--iterations", 1, "--guidance", 1, "--class", 4, "--out", out, "--device", "cpu",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    meta = load_solver(out).metadata
    assert meta["guidance"] == 1.0 and meta["class"] == 4 and meta["fit"]["heldout_error"] is None
    images = tmp_path / "images"
    result = invoke(generate_cli.generate, "--sampler", f"file:{out}", "--seeds", "0", "--outdir", images,
                    "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((images / "edm-generate.json").read_text())["guidance"] == 1.0

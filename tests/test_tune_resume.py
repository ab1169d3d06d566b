"""An interrupted solver fit continues where it stopped: tools.solvers.tune's checkpoints and the rerun of
`edm tune-solver`, which ends with the same solver file as a run that was never interrupted."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch

from _support import assert_usage_error, invoke
from edm.gaussian_mixture import GaussianMixture
from tools import tune_cli
from tools.common import BadInput
from tools.solvers import tune
from tools.solvers.tune import FitInterrupted, tune_solver

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 4, 4)
# Two starts, so that a checkpoint holds a finished fit and a running one.
FIT = dict(shape=SHAPE, sigma_min=0.002, sigma_max=80.0, num=4, heldout_num=2, iterations=5, restarts=2,
           checkpoint_every=2)


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Outside the fit's own deferral a SIGINT must raise KeyboardInterrupt, Python's default: set that
    handler for each test and put the previous one back after. A process started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then installs no handler of its own: there
    the held-out case's Ctrl-C raised nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture.random(SHAPE, k=4, seed=0, std_range=(0.15, 0.4), dtype=torch.float64)


class Interrupting:
    """The denoiser, and a SIGINT (a user's Ctrl-C) sent to this process at its ``at``-th call."""

    def __init__(self, denoiser, at: int):
        self.denoiser, self.at, self.calls = denoiser, at, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        if self.calls == self.at:
            signal.raise_signal(signal.SIGINT)
        return self.denoiser(x, sigma, **cond)


def same_fit(a, b) -> bool:
    """The same solver (bit for bit) and the same record of how it was fitted."""
    def told(solver):
        return None if solver.model_sigmas is None else solver.model_sigmas.tolist()

    return (torch.equal(a.solver.sigmas, b.solver.sigmas) and torch.equal(a.solver.weights, b.solver.weights)
            and told(a.solver) == told(b.solver) and a.metadata() == b.metadata() and a.fits == b.fits)


@pytest.fixture(scope="module")
def uninterrupted(mixture, tmp_path_factory):
    """A fit never interrupted, and the denoiser calls before its first iteration (the teacher's and the
    starts'): after them, each iteration of each start makes 4 (NFE) calls."""
    fit = tune_solver(mixture, 4, **FIT, checkpoint=tmp_path_factory.mktemp("whole") / "s.json.partial")
    calls = Interrupting(mixture, at=0)
    tune_solver(calls, 4, **{**FIT, "iterations": 0, "heldout_num": 0}, heldout=[])
    return fit, calls.calls


def during(setup: int, iteration: int) -> int:
    """The denoiser call halfway through ``iteration`` (1, 2, ...; the second start's from 6 on)."""
    return setup + 4 * (iteration - 1) + 2


# Ctrl-C in the teacher's ODE solve, in the first start's fit, in its last iteration, in the second
# start's fit, and in the held-out error (after the fit: a plain KeyboardInterrupt, the checkpoint kept): its
# first call, the one after the 2 x 5 iterations (a later one may not come: the held-out teacher's ODE solve
# makes as many calls as its step control needs).
@pytest.mark.parametrize("at", [lambda setup: setup // 3, lambda setup: during(setup, 2),
                                lambda setup: during(setup, 5), lambda setup: during(setup, 8),
                                lambda setup: during(setup, 11) - 1],
                         ids=["teacher", "first", "first-end", "second", "heldout"])
def test_an_interrupted_fit_continues_to_the_same_solver(mixture, uninterrupted, tmp_path, at):
    whole, setup = uninterrupted
    path = tmp_path / "s.json.partial"
    with pytest.raises(KeyboardInterrupt) as info:
        tune_solver(Interrupting(mixture, at=at(setup)), 4, **FIT, checkpoint=path)
    if isinstance(info.value, FitInterrupted):
        assert info.value.checkpoint == path and str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
    resumed = tune_solver(mixture, 4, **FIT, checkpoint=path)
    assert same_fit(resumed, whole)


def test_a_second_interruption_continues_too(mixture, uninterrupted, tmp_path):
    whole, setup = uninterrupted
    path = tmp_path / "s.json.partial"
    stops = []
    for iteration in (2, 4):  # the second run counts its calls from where it resumed (iteration 3)
        with pytest.raises(FitInterrupted) as info:
            tune_solver(Interrupting(mixture, at=during(setup if not stops else 0, iteration)), 4, **FIT,
                        checkpoint=path)
        stops.append(info.value.iteration)
    assert stops == [2, 6]
    assert same_fit(tune_solver(mixture, 4, **FIT, checkpoint=path), whole)


def test_sigterm_stops_the_fit_as_ctrl_c_does(mixture, uninterrupted, tmp_path, monkeypatch):
    whole, setup = uninterrupted

    def sigterm(_):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    monkeypatch.setattr(signal, "raise_signal", sigterm)
    path = tmp_path / "s.json.partial"
    with pytest.raises(FitInterrupted) as info:
        tune_solver(Interrupting(mixture, at=during(setup, 3)), 4, **FIT, checkpoint=path)
    assert info.value.signal == signal.SIGTERM
    monkeypatch.undo()
    assert same_fit(tune_solver(mixture, 4, **FIT, checkpoint=path), whole)


@pytest.mark.parametrize("change, param", [
    (dict(iterations=6), "iterations"),
    (dict(num=5), "seeds"),
    (dict(restarts=1), "restarts"),
    (dict(batch_size=3), "batch_size"),
    (dict(init="euler"), "init"),
    (dict(sigma_max=70.0), "sigma_max"),
    (dict(context={"model": "other"}), "model"),
])
def test_a_checkpoint_of_other_settings_is_refused(mixture, uninterrupted, tmp_path, change, param):
    _, setup = uninterrupted
    path = tmp_path / "s.json.partial"
    with pytest.raises(FitInterrupted):
        tune_solver(Interrupting(mixture, at=during(setup, 3)), 4, **FIT, checkpoint=path,
                    context={"model": "gmm"})
    before = path.read_bytes()
    with pytest.raises(BadInput) as info:
        tune_solver(mixture, 4, **{**FIT, "context": {"model": "gmm"}, **change}, checkpoint=path)
    assert info.value.param == param and str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    # resume=False starts over, whatever the checkpoint holds
    again = {**FIT, "context": {"model": "gmm"}, **change, "iterations": 1}
    tune_solver(mixture, 4, **again, checkpoint=path, resume=False)


# ---------------------------------------------------------------------------------------------------
# edm tune-solver


CLI = ("--model", "digits", "--nfe", 3, "--num", 3, "--heldout", 2, "--iterations", 4, "--restarts", 2,
       "--checkpoint-every", 1, "--device", "cpu", "--no-progress")


def interrupt_run_after(monkeypatch, runs: int) -> None:
    """Ctrl-C during the ``runs``-th solver run on the calibration batch (start errors, then the fit)."""
    run, count = tune.Batch.run, [0]

    def interrupted(self, *args, **kwargs):
        count[0] += 1
        if count[0] == runs:
            signal.raise_signal(signal.SIGINT)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(tune.Batch, "run", interrupted)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """An uninterrupted `edm tune-solver` and one interrupted in its second start's fit (its checkpoint)."""
    folder = tmp_path_factory.mktemp("cli")
    whole = invoke(tune_cli.tune_solver, *CLI, "--out", folder / "whole.json")
    assert whole.exit_code == 0, whole.output
    assert not (folder / "whole.json.partial").exists()
    with pytest.MonkeyPatch.context() as monkeypatch:
        # 3 NFE: a dozen or so starts are scored, then 4 iterations from each of two
        interrupt_run_after(monkeypatch, len(tune.start_candidates(3, 0.002, 80.0)) + 6)
        stopped = invoke(tune_cli.tune_solver, *CLI, "--out", folder / "part.json")
    return folder, whole, stopped


@pytest.mark.slow
def test_cli_rerun_ends_with_the_same_solver_file(cli_runs, tmp_path):
    folder, _, stopped = cli_runs
    assert stopped.exit_code == 130, stopped.output
    assert "Traceback" not in stopped.output
    assert "part.json.partial" in stopped.output and "run the same command again" in stopped.output
    assert not (folder / "part.json").exists()
    out = tmp_path / "part.json"
    shutil.copy(folder / "part.json.partial", tmp_path / "part.json.partial")
    resumed = invoke(tune_cli.tune_solver, *CLI, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes() == (folder / "whole.json").read_bytes()
    assert not (tmp_path / "part.json.partial").exists()


@pytest.mark.parametrize("args, flag", [
    (("--iterations", 5), "--iterations"),
    (("--num", 4), "--num"),
    (("--seeds", "1000000-1000002,7"), "--seeds"),
    (("--heldout", 3), "--heldout"),
    (("--sampler", "euler"), "--sampler"),
    (("--guidance", 1.0), "--guidance"),
    (("--class", 3), "--class"),
])
@pytest.mark.slow
def test_cli_refuses_a_checkpoint_of_other_flags(cli_runs, tmp_path, args, flag):
    folder = cli_runs[0]
    partial = tmp_path / "part.json.partial"
    shutil.copy(folder / "part.json.partial", partial)
    before = partial.read_bytes()
    given = dict(zip(CLI[::2], CLI[1::2]))
    given.update(dict(zip(args[::2], args[1::2])))
    if "--seeds" in given:
        given.pop("--num")
    result = invoke(tune_cli.tune_solver, *[a for item in given.items() for a in item], "--out",
                    tmp_path / "part.json")
    assert_usage_error(result, flag, "--start-over", "part.json.partial")
    assert partial.read_bytes() == before and not (tmp_path / "part.json").exists()


@pytest.mark.slow
def test_cli_start_over_discards_the_checkpoint(cli_runs, tmp_path):
    folder = cli_runs[0]
    shutil.copy(folder / "part.json.partial", tmp_path / "part.json.partial")
    result = invoke(tune_cli.tune_solver, *CLI, "--iterations", 1, "--restarts", 1, "--start-over",
                    "--out", tmp_path / "part.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "part.json").is_file() and not (tmp_path / "part.json.partial").exists()


def test_cli_help_states_the_default_cost_and_the_checkpoint():
    result = invoke(tune_cli.tune_solver, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "minutes" in text and "1024 calibration seeds x 200 iterations" in text
    assert ".partial" in text and "--start-over" in text and "--checkpoint-every" in text


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tune_solver_refuses_half_precision(tmp_path, dtype):
    """A half-precision teacher never reached its ODE tolerance (the run did not end): refused up front."""
    result = invoke(tune_cli.tune_solver, "--model", "digits", "--nfe", 5, "--dtype", dtype,
                    "--out", tmp_path / "s.json", "--no-progress")
    assert_usage_error(result, "--dtype", f"not {dtype}", "float32")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_ctrl_c_in_the_held_out_check_says_how_to_continue(cli_runs, tmp_path, monkeypatch):
    """After the fit (its state saved), Ctrl-C in the held-out check: exit 130 and the same hint."""
    folder, _, _ = cli_runs
    error = tune.Batch.error

    def interrupted(self, solver):
        if self.seeds == tune.heldout_seeds(2):  # the held-out batch (--heldout 2)
            raise KeyboardInterrupt
        return error(self, solver)

    monkeypatch.setattr(tune.Batch, "error", interrupted)
    out = tmp_path / "s.json"
    stopped = invoke(tune_cli.tune_solver, *CLI, "--out", out)
    assert stopped.exit_code == 130, stopped.output
    assert "Aborted" not in stopped.output and "run the same command again" in stopped.output
    assert (tmp_path / "s.json.partial").is_file() and not out.exists()
    monkeypatch.undo()
    resumed = invoke(tune_cli.tune_solver, *CLI, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes() == (folder / "whole.json").read_bytes()

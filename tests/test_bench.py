"""The benchmark engine (``tools.compare``) and ``edm bench``, on an exact Gaussian-mixture denoiser and
(for the command) a few samples of the built-in digits model. No wall-clock time is asserted."""

from __future__ import annotations

import json
import math

import pytest
import torch

import samplers
from _support import Counting, invoke, plan_of
from edm.gaussian_mixture import GaussianMixture
from samplers.registry import nfe_on
from tools import cli
from tools.compare import CELL_KEYS, BenchError, fit_budget, parse_budgets, parse_metrics, run_bench
from tools.ode import reference_sample

SHAPE = (1, 4, 4)
SIGMA_MIN, SIGMA_MAX = 0.01, 20.0
KARRAS = samplers.schedules.get("karras")
CHECK_CALLS = 1  # a run with work to do first evaluates the model once per precision it runs in


pytestmark = pytest.mark.usefixtures("one_thread")


def counting() -> Counting:
    """The mixture's exact denoiser, counting its calls."""
    return Counting(GaussianMixture.random(SHAPE, k=4, seed=0, dtype=torch.float64))


def bench(denoiser, **kwargs):
    kwargs = {"shape": SHAPE, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "device": "cpu", "name": "gm",
              "num": 2, **kwargs}
    return run_bench(denoiser, **kwargs)


def latents(num: int) -> torch.Tensor:
    return samplers.noise.latents(list(range(num)), SHAPE, dtype=torch.float32).to(torch.float64)


# ---------------------------------------------------------------------------------------------------
# Budgets and NFE


@pytest.mark.parametrize("name", samplers.list())
def test_nfe_reported_is_the_number_of_denoiser_calls_and_within_budget(name):
    for budget in (5, 10):
        model = counting()
        (cell,) = bench(model, samplers=[name], nfe=[budget], metrics=["time"], num=1)
        assert set(cell) == set(CELL_KEYS)
        if samplers.get(name).adaptive and samplers.get(name).count_nfe is None:
            assert cell["status"].startswith("skipped: ") and "adaptive" in cell["status"]
            assert cell["nfe"] is None and cell["time_per_sample_s"] is None and model.calls == 0
            continue
        if nfe_on(name, KARRAS(1, SIGMA_MIN, SIGMA_MAX)) > budget:  # annealed_langevin: 6 NFE for one step
            assert cell["status"].startswith("skipped: needs at least") and model.calls == 0
            continue
        assert cell["status"] == "ok" and cell["nfe_budget"] == budget
        assert model.calls == CHECK_CALLS + cell["nfe"]
        assert 1 <= cell["nfe"] <= budget
        steps_more = KARRAS(cell["steps"] + 1, SIGMA_MIN, SIGMA_MAX)
        assert cell["steps"] == budget or nfe_on(name, steps_more) > budget  # the most steps that fit


def test_nfe_on_counts_schedule_dependent_samplers():
    sigmas = KARRAS(5, SIGMA_MIN, SIGMA_MAX)
    assert nfe_on("heun", sigmas) == 9 and nfe_on("heun", sigmas[:-1]) == 8  # 4 full steps, none onto 0
    assert nfe_on("restart", sigmas) == 9 + 2 * 2 * 3  # one restart interval, K = 2, n = 3
    assert nfe_on("restart", sigmas, restart_list="0.06,0.30,1,2") == 9 + 2 * 1 * 2
    assert nfe_on("dpm_adaptive", sigmas) is None


def test_fit_budget_counts_on_the_schedule_actually_run():
    # A table-like schedule that stops at 3 steps: heun's budget of 10 then buys 3 steps (5 NFE).
    capped = fit_budget("heun", "capped", lambda n: KARRAS(min(n, 3), SIGMA_MIN, SIGMA_MAX), 10)
    assert (capped.steps, capped.nfe, capped.status) == (3, 5, "ok")
    # A schedule whose one restart interval always anchors: at least 3 + 12 NFE.
    fixed = torch.tensor([20.0, 0.1, 0.0], dtype=torch.float64)
    anchored = fit_budget("restart", "fixed", lambda n: fixed, 5)
    assert anchored.status == "skipped: needs at least 15 NFE (one step), more than the budget"
    assert anchored.record(stochastic=True, num=3)["steps"] is None


def test_parsers():
    assert parse_budgets("20, 5,10,5") == [5, 10, 20] and parse_budgets(7) == [7]
    assert parse_metrics("time,FID,ode") == ("ode", "fd", "time")
    for bad in ("", "5,x", "0", "5,-1", [2.5], [True]):
        with pytest.raises(ValueError, match="positive integers"):
            parse_budgets(bad)
    with pytest.raises(ValueError, match="unknown metric lpips"):
        parse_metrics("ode,lpips")


# ---------------------------------------------------------------------------------------------------
# Metrics


def test_ode_error_shrinks_with_nfe_and_matches_an_independent_computation():
    cells = bench(counting(), samplers=["heun", "dpm_fast"], nfe=[5, 10, 20, 40], metrics=["ode"], num=3)
    heun = [c for c in cells if c["sampler"] == "heun"]
    errors = [c["ode_rmse"] for c in heun]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    gm = counting().denoiser
    for cell in (heun[2], next(c for c in cells if c["sampler"] == "dpm_fast" and c["nfe_budget"] == 20)):
        sigmas = KARRAS(cell["steps"], SIGMA_MIN, SIGMA_MAX)
        x = latents(3) * SIGMA_MAX
        result = samplers.sample(gm, x.clone(), sigmas, cell["sampler"])
        # dpm_fast stops at sigma_min without the final denoising jump: so does its reference
        ends = sigmas if cell["sampler"] == "heun" else sigmas[:-1]
        expected = (result - reference_sample(gm, x, ends)).square().mean().sqrt().item()
        assert cell["ode_rmse"] == pytest.approx(expected, rel=1e-6)


def test_stochastic_samplers_have_no_ode_error_and_time_is_a_share():
    cells = bench(counting(), samplers=["euler_ancestral", "restart", "euler"], nfe=[4],
                  metrics=["ode", "time"], num=2)
    by_name = {c["sampler"]: c for c in cells}
    for name in ("euler_ancestral", "restart"):
        assert by_name[name]["stochastic"] and by_name[name]["ode_rmse"] is None
    assert not by_name["euler"]["stochastic"] and by_name["euler"]["ode_rmse"] > 0
    for cell in cells:
        assert cell["status"] == "ok" and cell["time_per_sample_s"] > 0
        assert 0 <= cell["denoiser_share"] <= 1
        assert cell["fd"] is None and cell["detector"] is None


def test_options_decide_whether_a_sampler_is_stochastic():
    (cell,) = bench(counting(), samplers=["euler_ancestral"], nfe=[4], metrics=["ode"],
                    options={"euler_ancestral": {"eta": 0.0}})
    assert not cell["stochastic"] and cell["ode_rmse"] > 0


# ---------------------------------------------------------------------------------------------------
# Resuming


@pytest.mark.slow
def test_rerun_computes_nothing_and_added_budgets_only_the_new_cells(tmp_path):
    model = counting()
    first = bench(model, samplers=["heun", "dpmpp_2m"], nfe=[4, 8], metrics=["time"], out=tmp_path)
    model.calls = 0
    again = bench(model, samplers=["heun", "dpmpp_2m"], nfe=[4, 8], metrics=["time"], out=tmp_path)
    assert model.calls == 0 and again == first
    more = bench(model, samplers=["heun", "dpmpp_2m"], nfe=[8, 12], metrics=["time"], out=tmp_path)
    new = [c for c in more if c["nfe_budget"] == 12]
    assert model.calls == CHECK_CALLS + sum(c["nfe"] for c in new)  # num = 2 samples in one batch
    assert [c for c in more if c["nfe_budget"] == 8] == [c for c in first if c["nfe_budget"] == 8]
    written = json.loads((tmp_path / "results.json").read_text())
    assert len(written["cells"]) == 6 and written["settings"]["nfe"] == [4, 8, 12]  # the old cells are kept


@pytest.mark.slow
def test_rerun_adds_only_the_missing_metric(tmp_path):
    timed = bench(counting(), samplers=["euler", "ddpm"], nfe=[4], metrics=["time"], out=tmp_path)
    both = bench(counting(), samplers=["euler", "ddpm"], nfe=[4], metrics=["ode"], out=tmp_path)
    for old, new in zip(timed, both):
        assert new["time_per_sample_s"] == old["time_per_sample_s"]  # kept, not re-measured
    assert both[0]["ode_rmse"] > 0 and both[1]["ode_rmse"] is None  # ddpm is stochastic


@pytest.mark.slow
def test_other_settings_in_the_folder_are_refused(tmp_path):
    bench(counting(), samplers=["euler"], nfe=[4], metrics=["time"], out=tmp_path)
    with pytest.raises(BenchError, match=r"holds a benchmark with other settings \(.*num: 2 there, 3 here"):
        bench(counting(), samplers=["euler"], nfe=[4], metrics=["time"], out=tmp_path, num=3)
    with pytest.raises(BenchError, match="options of euler"):
        bench(counting(), samplers=["euler"], nfe=[4], metrics=["time"], out=tmp_path,
              options={"euler": {"s_churn": 1.0}})
    (cell,) = bench(counting(), samplers=["euler"], nfe=[4], metrics=["time"], out=tmp_path, num=3,
                    overwrite=True)
    assert cell["num"] == 3


def test_bad_api_input_names_the_argument(tmp_path):
    cases = {"samplers": dict(samplers=["nope"]), "nfe": dict(nfe="5,x"), "metrics": dict(metrics=["lpips"]),
             "schedules": dict(schedules=["simple"]), "options": dict(options={"euler": {"bogus": 1}}),
             "ode_num": dict(ode_num=5), "ref": dict(metrics=["fd"])}
    for param, kwargs in cases.items():
        with pytest.raises(BenchError) as info:
            bench(counting(), **{"samplers": ["euler"], "nfe": [4], **kwargs})
        assert info.value.param == param, (param, str(info.value))
    with pytest.raises(BenchError, match="shape="):
        run_bench(counting(), samplers=["euler"], nfe=[4])


def test_conditioning_of_a_plain_denoiser_is_split_by_batch():
    gm, seen = counting().denoiser, []

    def denoiser(x, sigma, offset, scale):
        seen.append((offset.shape[0], offset.dtype, scale))
        return gm(x, sigma) + offset

    offsets = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)
    bench(denoiser, samplers=["euler"], nfe=[2], metrics=["ode", "time"], num=3, batch=2,
          cond={"offset": offsets, "scale": 0.5})
    assert (2, torch.float64, 0.5) in seen and (1, torch.float64, 0.5) in seen  # the ode pass's batches
    assert (3, torch.float64, 0.5) in seen  # the reference solves all ode seeds at once


def test_samples_are_the_images_edm_generate_writes(tmp_path):
    """Same latents, seeds and (class-conditional digits model) class labels as `edm generate`."""
    from tools import generate as pipeline
    from tools.compare import BenchRequest, Stopwatch, prepare_bench
    from tools.images import to_uint8

    planned = prepare_bench(BenchRequest.of("digits", samplers=["dpmpp_2m_sde"], nfe=[6], metrics=["time"],
                                            num=3, batch=3, device="cpu"))
    (cell,) = planned.cells
    ours = torch.cat(list(planned._sample(cell, torch.float32, planned.seeds, Stopwatch("cpu"))))
    plan = plan_of("digits", "0-2", tmp_path, sampler="dpmpp_2m_sde", steps=cell.steps, batch=3,
                   device="cpu", progress=False)
    assert (to_uint8(ours) == pipeline.sample_images(plan.sampling, [0, 1, 2])).all()


# ---------------------------------------------------------------------------------------------------
# edm bench


def edm(*args):
    return invoke(cli.main, "bench", *map(str, args), "--device", "cpu", "--no-progress")


@pytest.mark.slow
def test_cli_writes_the_results(tmp_path):
    out = tmp_path / "out"
    result = edm("--sampler", "euler,heun,dpm_adaptive", "--nfe", "3,5", "--metrics", "time", "--num", 2,
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("6 cells (4 computed, 0 already done, 2 skipped) -> ")
    assert {"results.csv", "results.json", "results.md"} <= {p.name for p in out.iterdir()}
    written = json.loads((out / "results.json").read_text())
    assert written["settings"]["model"] == "digits" and written["settings"]["seeds"] == "0-1"
    assert [c["nfe"] for c in written["cells"]] == [3, 5, 3, 5, None, None]
    assert "time per sample" in (out / "results.md").read_text()
    again = edm("--sampler", "euler,heun,dpm_adaptive", "--nfe", "3,5", "--metrics", "time", "--num", 2,
                "--out", out)
    assert again.output.splitlines()[-1].startswith("6 cells (0 computed, 4 already done, 2 skipped)")
    other = edm("--sampler", "euler", "--nfe", "3", "--metrics", "time", "--num", 3, "--out", out)
    assert other.exit_code == 2 and "Traceback" not in other.output
    assert "holds a benchmark with other settings (" in other.output
    assert "num: 2 there, 3 here" in other.output
    assert len(other.output.splitlines()) == 4  # click's usage line, its hint, a blank and the one error line


@pytest.mark.slow
def test_fd_on_the_shipped_reference_resumes_from_another_install(tmp_path):
    """The default reference is recorded as 'digits', not as this checkout's path to the shipped file, so
    a results folder made elsewhere (bench/results/digits_bench) resumes here."""
    out = tmp_path / "out"
    args = ["--sampler", "euler", "--nfe", "3", "--metrics", "fd", "--num", 2, "--out", out]
    assert edm(*args).exit_code == 0
    written = json.loads((out / "results.json").read_text())
    assert written["settings"]["ref"] == "digits" and written["settings"]["detector"] == "digits"
    assert math.isfinite(written["cells"][0]["fd"])
    assert edm(*args, "--ref", "digits").output.splitlines()[-1].startswith("1 cells (0 computed, 1 already")


@pytest.mark.parametrize("args", [
    ["--sampler", "heun,nope"], ["--schedule", "karras,nope"], ["--schedule", "simple"],
    ["--metrics", "ode,lpips"], ["--nfe", "5,ten"], ["--nfe", "0"], ["--option", "heun.bogus=1"],
    ["--option", "heun-s_churn"], ["--metrics", "fd", "--ref", "missing.npz"],
    ["--metrics", "fd", "--num", "1"], ["--seeds", "3-1"], ["--out", "FILE"], ["--model", "missing.json"],
], ids=lambda args: " ".join(args))
def test_cli_bad_input_is_a_one_line_usage_error(tmp_path, args):
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / a) if a in ("FILE", "missing.npz", "missing.json") else a for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "out"]
    result = edm("--sampler", "euler", "--nfe", "3", "--num", 2, *args, *out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith("Error: ")
    assert not (tmp_path / "out").exists()  # nothing half-written

"""Distillation (edm.distill, ``edm distill``): the progressive target and the consistency target against
hand computations and the registry's own samplers, the consistency boundary condition against diffusers'
scalings, the students' recorded schedules against the karras schedule, resume bit for bit, torchrun, and
bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from _support import invoke
from edm.distill import (
    ConsistencyObjective,
    ProgressiveObjective,
    Teacher,
    heun_teacher_step,
    student_levels,
    student_sampling,
)
from edm.distill_run import distill
from edm.precond import Precond, schemes
from edm.train import train
from tools.distill_cli import distill as distill_command

TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "label_dropout": 0.1}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny class-conditional EDM model of the digits (a few steps: only the mechanics are tested)."""
    out = tmp_path_factory.mktemp("teacher")
    train("digits", out, steps=3, batch=16, network_kwargs=TINY, sigma_data=0.75, progress=False, seed=1)
    return out / "network"


def _state(run):
    record = json.loads((run / "training-state.json").read_text())
    return load_file(run / record["tensors"])


def _toy_denoiser(x, sigma, class_labels=None, guidance=None):
    """A smooth nonlinear stand-in for a network, per-sample sigma, class dependent."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
    shift = 0.0 if class_labels is None else class_labels.argmax(1).to(x.dtype).reshape(-1, 1, 1, 1) * 0.1
    return torch.tanh(x / (1 + s)) * 0.7 + shift * (class_labels.sum(1).reshape(-1, 1, 1, 1)
                                                      if class_labels is not None else 0.0)


# ---------------------------------------------------------------------------------------------------
# Levels and the recorded schedule


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16])
def test_student_levels_are_the_karras_schedule_it_records_and_halvings_nest(steps):
    from samplers import schedules

    record = student_sampling(steps, 0.002, 80.0, 7.0)
    karras = schedules.karras(steps, record["sigma_min"], record["sigma_max"], rho=record["rho"]).double()
    levels = student_levels(steps, 0.002, 80.0, 7.0)
    assert torch.allclose(karras, levels, rtol=1e-12, atol=0)
    assert torch.allclose(student_levels(2 * steps, 0.002, 80.0, 7.0)[::2], levels, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------
# Teacher steps and guidance against the registry's samplers and guidance wrapper


def test_per_sample_heun_step_equals_the_registry_heun_sampler_on_each_sample():
    import samplers

    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    s = torch.tensor([80.0, 2.5, 0.3])
    s_next = torch.tensor([17.5, 0.0, 0.1])
    out = heun_teacher_step(_toy_denoiser, x, s, s_next)
    heun = samplers.get("heun").fn
    for b in range(3):
        def model(xb, sigma):
            return _toy_denoiser(xb, torch.tensor([sigma]))
        expected = heun(model, x[b:b + 1], [float(s[b]), float(s_next[b])])
        assert torch.allclose(out[b:b + 1], expected, atol=1e-6)


def test_guided_teacher_equals_classifier_free_guidance_at_each_sample_weight():
    from samplers.guidance import ClassifierFreeGuidance

    torch.manual_seed(1)
    x = torch.randn(2, 1, 8, 8)
    labels = torch.eye(10)[[3, 7]]
    w = torch.tensor([0.5, 2.0])
    sigma = torch.tensor([1.5, 1.5])
    got = Teacher(_toy_denoiser).bind({"class_labels": labels}, w)(x, sigma)
    for b in range(2):
        cfg = ClassifierFreeGuidance(_toy_denoiser, float(w[b]))
        expected = cfg(x[b:b + 1], 1.5, class_labels=labels[b:b + 1])
        assert torch.allclose(got[b:b + 1], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The two losses against their definitions


def test_progressive_loss_is_edm_weighted_distance_to_the_one_step_target():
    objective = ProgressiveObjective(teacher="unused", steps=2, teacher_sampler="euler", sigma_data=0.75)
    objective.teacher = Teacher(_toy_denoiser)
    images = torch.randn(6, 1, 8, 8)
    labels = torch.eye(10)[:6]

    def student(x, sigma, class_labels=None):
        return 0.9 * _toy_denoiser(x, sigma, class_labels)

    loss = objective.loss(student, images, generator=torch.Generator().manual_seed(5), class_labels=labels)
    # the same draws by hand: level index, noise, then the two Euler steps of the teacher
    g = torch.Generator().manual_seed(5)
    i = torch.randint(0, 2, (6,), generator=g)
    noise = torch.randn(images.shape, generator=g)
    levels = student_levels(4, 0.002, 80.0, 7.0).float()
    for b in range(6):
        s, mid, s_next = (float(levels[2 * int(i[b]) + k]) for k in range(3))
        x = images[b:b + 1] + s * noise[b:b + 1]
        y = labels[b:b + 1]

        def euler(xx, a, c, y=y):
            return xx + (c - a) * (xx - _toy_denoiser(xx, torch.tensor([a]), y)) / a
        x2 = euler(euler(x, s, mid), mid, s_next)
        r = s_next / s
        target = (x2 - r * x) / (1 - r)
        weight = (s**2 + 0.75**2) / (s * 0.75) ** 2
        expected = weight * (student(x, torch.tensor([s]), y) - target) ** 2
        assert torch.allclose(loss[b:b + 1], expected, rtol=1e-4, atol=1e-6)


def test_progressive_target_is_exact_for_a_student_that_steps_like_two_teacher_steps():
    """A teacher that is linear in x (the exact denoiser of Gaussian data) makes two Euler steps one linear
    map; a student whose D is the PD target then lands exactly where the teacher does in two steps."""
    sd = 0.75

    def gaussian(x, sigma, **_):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return sd**2 / (s**2 + sd**2) * x

    objective = ProgressiveObjective(teacher="unused", steps=4, teacher_sampler="heun", sigma_data=sd)
    objective.teacher = Teacher(gaussian)
    levels = student_levels(8, 0.002, 80.0, 7.0)

    def perfect_student(x, sigma, **_):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        idx = [int((levels - float(v)).abs().argmin()) for v in s]
        mid = levels[[k + 1 for k in idx]]
        nxt = levels[[k + 2 for k in idx]]
        x2 = heun_teacher_step(gaussian, heun_teacher_step(gaussian, x, s.float(), mid.float()),
                               mid.float(), nxt.float())
        r = (nxt / s).float().reshape(-1, 1, 1, 1)
        return (x2 - r * x) / (1 - r)

    loss = objective.loss(perfect_student, torch.randn(8, 1, 8, 8) * sd,
                          generator=torch.Generator().manual_seed(0))
    assert float(loss.max()) < 1e-8


def test_consistency_scheme_equals_diffusers_boundary_scalings():
    from diffusers import CMStochasticIterativeScheduler

    scheduler = CMStochasticIterativeScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    scheme = schemes.get("consistency", sigma_data=0.5, sigma_min=0.002, sigma_max=80.0)
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition(sigma)
    assert torch.allclose(scheme.c_skip(sigma), c_skip, rtol=1e-12)
    assert torch.allclose(scheme.c_out(sigma), c_out, rtol=1e-12)
    x = torch.randn(2, 1, 8, 8)
    f = Precond(lambda x, c, **_: torch.sin(x) + c.reshape(-1, 1, 1, 1), "consistency", sigma_data=0.5)
    assert torch.equal(f(x, 0.002), x)  # the boundary condition, exactly


def test_consistency_loss_compares_student_with_target_after_one_teacher_heun_step():
    objective = ConsistencyObjective(teacher="unused", bins=6, sigma_data=0.75, distance="l2")
    objective.teacher = Teacher(_toy_denoiser)
    images = torch.randn(5, 1, 8, 8)

    def student(x, sigma, **_):
        return 0.8 * _toy_denoiser(x, sigma) + 0.01

    loss = objective.loss(student, images, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    from edm.distill import ramp_levels

    t = ramp_levels(torch.linspace(1, 0, 6, dtype=torch.float64), 0.002, 80.0, 7.0).float()
    n = torch.randint(0, 5, (5,), generator=g)
    noise = torch.randn(images.shape, generator=g)
    t_n, t_next = t[n], t[n + 1]
    x_next = images + t_next.reshape(-1, 1, 1, 1) * noise
    x_hat = heun_teacher_step(_toy_denoiser, x_next, t_next, t_n)
    expected = (student(x_next, t_next) - student(x_hat, t_n)).flatten(1).pow(2).mean(1)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-7)


def test_curriculum_doubles_bins_in_equal_stages():
    objective = ConsistencyObjective(teacher="unused", bins=10, bins_end=80, total_steps=400)
    assert [objective.bins_at(s) for s in (0, 99, 100, 199, 200, 300, 399)] == [10, 10, 20, 20, 40, 80, 80]


# ---------------------------------------------------------------------------------------------------
# Runs: init from the teacher, records, resume, torchrun


def test_guided_student_starts_as_its_teacher_at_every_weight(teacher, tmp_path):
    from edm.checkpoint import load_checkpoint

    distill(str(teacher), tmp_path / "g", method="progressive", steps=1, end_steps=1, train_steps=1, batch=4,
            guidance=(0, 2), progress=False, lr=1e-12)
    student = load_checkpoint(tmp_path / "g" / "student-1" / "network")
    first = load_checkpoint(teacher)
    x = torch.randn(2, 1, 8, 8)
    labels = torch.eye(10)[[1, 2]]
    for w in (0.0, 2.0):
        got = student.denoiser(x, 3.0, class_labels=labels, guidance=torch.full((2,), w))
        assert torch.allclose(got, first.denoiser(x, 3.0, class_labels=labels), atol=1e-5)
    record = json.loads((tmp_path / "g" / "student-1" / "network.json").read_text())
    assert record["sampling"]["guidance_range"] == [0.0, 2.0]
    assert record["network"]["kwargs"]["guidance_embed"] is True
    assert record["network"]["kwargs"]["label_dropout"] == 0.0


def test_progressive_rounds_record_their_schedule_and_chain_teachers(teacher, tmp_path):
    out = tmp_path / "pd"
    results = distill(str(teacher), out, method="progressive", steps=4, train_steps=2, batch=4,
                      progress=False)
    assert [r.step for r in results] == [2, 2, 2]
    for n, previous in ((4, str(teacher)), (2, str(out / "student-4" / "network")),
                        (1, str(out / "student-2" / "network"))):
        record = json.loads((out / f"student-{n}" / "network.json").read_text())
        assert record["sampling"] == student_sampling(n, 0.002, 80.0, 7.0)
        assert record["objective"] is None  # the precond section rebuilds the student's denoiser
        assert record["distillation"]["method"] == "progressive"
        assert record["distillation"]["params"]["teacher"] == previous
        assert record["distillation"]["params"]["teacher_sampler"] == ("heun" if n == 4 else "euler")
        assert record["training"]["init"] == previous


def _interrupt_at(monkeypatch, cls, stop_step):
    original = cls.at_step

    def at_step(self, step):
        if step == stop_step:
            raise KeyboardInterrupt
        original(self, step)

    monkeypatch.setattr(cls, "at_step", at_step)


@pytest.mark.parametrize("method, options", [
    ("progressive", {"steps": 2}),
    ("consistency", {"method_options": {"target_ema": 0.9, "bins": 4, "bins_end": 16,
                                        "distance": "pseudo-huber", "levels": "lognormal",
                                        "weighting": "ict"}, "guidance": (0, 2)}),
])
def test_resume_gives_the_weights_of_an_uninterrupted_run(teacher, tmp_path, monkeypatch, method, options):
    kwargs = {"method": method, "train_steps": 4, "batch": 4, "progress": False, "checkpoint_every": 2,
              **options}
    distill(str(teacher), tmp_path / "whole", **kwargs)
    cls = ProgressiveObjective if method == "progressive" else ConsistencyObjective
    with monkeypatch.context() as m:
        _interrupt_at(m, cls, 3)
        with pytest.raises(KeyboardInterrupt):
            distill(str(teacher), tmp_path / "cut", **kwargs)
    with pytest.raises(ValueError, match="already holds a run"):
        distill(str(teacher), tmp_path / "cut", **kwargs)
    distill(str(teacher), tmp_path / "cut", resume=True, **kwargs)
    runs = ["student-2", "student-1"] if method == "progressive" else ["."]
    for run in runs:
        a, b = _state(tmp_path / "whole" / run), _state(tmp_path / "cut" / run)
        assert sorted(a) == sorted(b)
        for key in a:
            if not key.startswith("rng."):
                assert torch.equal(a[key], b[key]), (run, key)
    if method == "consistency":
        assert any(k.startswith("objective.target.") for k in a)


@pytest.mark.slow
def test_two_processes_distil_the_student_of_one(teacher, tmp_path):
    from test_distributed_training import ENV, _max_difference

    flags = ["--teacher", str(teacher), "--method", "consistency", "--train-steps", "3", "--batch", "6",
             "--threads", "1", "--no-progress", "--guidance-range", "0,1"]
    assert invoke(distill_command, *flags, "--out", tmp_path / "one").exit_code == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "tools.cli", "distill", *flags, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    start = {f"net.{k}": v for k, v in load_file(str(teacher) + ".safetensors").items()}
    moved = max(float((a[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4  # the three steps did move the weights (Adam: about lr = 2e-4 per step)
    # Adam's first steps are nearly lr * sign(gradient): where a gradient is about 0 (the zero-initialised
    # guidance embedding) the ranks' summation order shows (observed 2e-5); a wrong share of the batch
    # would differ by as much as the steps themselves
    for prefix in ("net.", "ema."):
        assert _max_difference(a, b, prefix) <= 0.1 * moved, prefix


# ---------------------------------------------------------------------------------------------------
# The command line: bad inputs are one line, exit 2, nothing written


@pytest.mark.parametrize("flags, message", [
    (["--method", "progressive", "--teacher-sampler", "euler_ancestral"], "is stochastic"),
    (["--method", "progressive", "--teacher-sampler", "dpmpp_2m"], "not one distillation runs"),
    (["--method", "progressive", "--steps", "6"], "must be a power of 2"),
    (["--method", "progressive", "--steps", "4", "--end-steps", "3"], "must be a power of 2"),
    (["--method", "progressive", "--steps", "2", "--end-steps", "4"], "exceeds"),
    (["--method", "distil"], "'distil' is not one of"),
    (["--method", "consistency", "--steps", "2"], "--steps belongs to --method progressive"),
    (["--method", "progressive", "--bins", "10"], "--bins belongs to --method consistency"),
    (["--method", "consistency", "--sample-sigmas", "1,2"], "decreasing"),
    (["--method", "consistency", "--guidance-range", "2,1"], "LO,HI"),
    (["--method", "consistency", "--bins", "20", "--bins-end", "10"], "bins <= bins_end"),
])
def test_bad_options_are_one_line_usage_errors(teacher, tmp_path, flags, message):
    out = tmp_path / "out"
    result = invoke(distill_command, "--teacher", str(teacher), "--out", out, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("spec", ["diffusers:/nowhere", "net.pkl", "missing-checkpoint"])
def test_teachers_that_are_not_edm_checkpoints_are_refused(tmp_path, spec):
    result = invoke(distill_command, "--teacher", spec, "--method", "progressive", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "teacher" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_ddpm_teacher_is_not_an_edm_denoiser(tmp_path):
    train("digits", tmp_path / "ddpm", steps=1, batch=4, network_kwargs=TINY, objective="ddpm",
          progress=False)
    result = invoke(distill_command, "--teacher", tmp_path / "ddpm", "--method", "consistency",
                    "--out", tmp_path / "o")
    assert result.exit_code == 2 and "is not an EDM denoiser" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_guided_distillation_of_an_unconditional_teacher_is_refused(tmp_path):
    train("digits", tmp_path / "u", steps=1, batch=4, network_kwargs=TINY, cond="none", progress=False)
    result = invoke(distill_command, "--teacher", tmp_path / "u", "--method", "progressive",
                    "--guidance-range", "0,2", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "class-conditional teacher" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_one_step_consistency_student_records_a_schedule_that_runs(teacher, tmp_path):
    from samplers import schedules

    distill(str(teacher), tmp_path / "cd", method="consistency", train_steps=1, batch=4, progress=False)
    record = json.loads((tmp_path / "cd" / "network.json").read_text())["sampling"]
    levels = schedules.karras(record["steps"], record["sigma_min"], record["sigma_max"], rho=record["rho"])
    assert levels.tolist() == [80.0, 0.0]


def test_resuming_from_the_command_line_keeps_the_recorded_command(teacher, tmp_path):
    flags = ["--teacher", teacher, "--method", "progressive", "--out", tmp_path / "pd", "--steps", "2",
             "--end-steps", "2", "--train-steps", "2", "--batch", "4", "--no-progress"]
    assert invoke(distill_command, *flags).exit_code == 0
    first = json.loads((tmp_path / "pd" / "student-2" / "network.json").read_text())["command"]
    result = invoke(distill_command, *flags, "--resume")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "pd" / "student-2" / "network.json").read_text())["command"]
    assert again == first and " --steps 2 " in again and " --train-steps 2 " in again


def test_cli_runs_and_records_its_command(teacher, tmp_path):
    out = tmp_path / "cd"
    result = invoke(distill_command, "--teacher", teacher, "--method", "consistency", "--out", out,
                    "--train-steps", "2", "--batch", "4", "--sample-sigmas", "80,0.8", "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "network.json").read_text())
    assert record["command"].startswith("edm distill --teacher ")
    assert "--method consistency" in record["command"] and "--out " in record["command"]
    assert record["sampling"]["sampler"] == "consistency" and record["sampling"]["steps"] == 2
    import samplers

    assert set(record["sampling"]["options"]) <= set(samplers.get("consistency").options)
    assert record["sampling"]["options"]["eps"] == 0.002  # the boundary level the student was trained with
    assert record["distillation"]["method"] == "consistency" and record["objective"] is None
    assert record["precond"]["scheme"] == "consistency"


"""The embedded students of ``digits`` (``digits-pd1``, ``digits-pd2``, ``digits-pd4``, ``digits-cd``): they
load, record how they were trained and how to sample them, run at their recorded defaults, and draw the
class they are asked for (the ``digits`` detector reads it) in one, two and four evaluations."""

from __future__ import annotations

import json

import pytest
import torch

from _support import invoke
from tools.cli import main
from tools.fid.detectors import get_detector
from tools.generate.sampling import prepare_sampling
from tools.images import to_uint8
from tools.labels import class_labels
from tools.models import load_model
from tools.models.checkpoint import builtin_path
from tools.request import SamplingRequest

#: students redone from another student's run (digits-pd2: 2500 steps from digits-pd4's continued round)
REDONE_FROM = {"digits-pd2": "digits-pd4"}
STUDENTS = {"digits-pd1": ("euler", 1), "digits-pd2": ("euler", 2), "digits-pd4": ("euler", 4),
            "digits-pd8": ("euler", 8),
            "digits-cd": ("consistency", None)}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_records_its_recipe_cost_and_sampling(name):
    record = json.loads(builtin_path(name).with_suffix(".json").read_text())
    sampler, steps = STUDENTS[name]
    if name in REDONE_FROM:  # distilled from another student's run: the one that student's recipe ends in
        parent = json.loads(builtin_path(REDONE_FROM[name]).with_suffix(".json").read_text())["command"]
        run = parent.rsplit("--resume ", 1)[1].split()[0]
        assert record["command"].startswith(f"edm distill --teacher {run} ")
    else:
        assert record["command"].startswith("edm distill --teacher digits ")
    assert record["training"]["seconds"] > 0
    assert record["sampling"]["sampler"] == sampler
    if steps is not None:
        assert record["sampling"]["steps"] == steps
    assert record["distillation"]["method"] in ("progressive", "consistency")
    assert record["objective"] is None  # loads from its precond section, without edm.distill


def _accuracy(name: str, seeds, **sampling) -> float:
    setup = prepare_sampling(SamplingRequest(model=load_model(name), **sampling))
    images = to_uint8(setup.sample(seeds)).transpose(0, 3, 1, 2)
    logits = get_detector("digits").classify(torch.from_numpy(images))
    truth = torch.as_tensor(class_labels(seeds, 10, (1, 8, 8)))
    return float((logits.argmax(1) == truth).float().mean())


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_draws_the_asked_class_at_its_recorded_defaults(name):
    # the benchmark measures >= 95% on 2000 seeds; 200 seeds keep the test fast and leave a margin
    assert _accuracy(name, list(range(200))) >= 0.9


def test_generate_runs_a_student_at_its_recorded_sampler_and_steps(tmp_path):
    result = invoke(main, "generate", "--model", "digits-pd2", "--seeds", "0-3", "--outdir", tmp_path / "a",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    assert record["sampler"] == "euler" and record["steps"] == 2
    assert record["sigmas"] == [80.0, 2.515218976147159, 0.0]  # the student's own levels
    explicit = invoke(main, "generate", "--model", "digits-pd2", "--seeds", "0-3", "--outdir", tmp_path / "b",
                      "--sampler", "euler", "--steps", "2", "--schedule", "karras", "--sigma-min",
                      str(json.loads(builtin_path("digits-pd2").with_suffix(".json").read_text())
                          ["sampling"]["sigma_min"]), "--no-progress")
    assert explicit.exit_code == 0, explicit.output
    for png in sorted((tmp_path / "a").glob("*.png")):
        assert png.read_bytes() == (tmp_path / "b" / png.name).read_bytes()

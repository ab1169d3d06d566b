"""Rough edges a new user met with steering and ``edm fid gen``: each bad combination is refused once,
before anything is written (and, where the model is not needed, before it is loaded), with one ``Error:``
line naming the flag the user typed."""

from __future__ import annotations

import numpy as np
import pytest

from _support import assert_usage_error, invoke
from tools.fid.cli import fid
from tools.generate.cli import generate

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

TINY = ("--steps", 2, "--no-progress")


@pytest.fixture
def loads(monkeypatch):
    """The model specs loaded during the test (``tools.models.load_model`` still loads them)."""
    import tools.models
    from tools.models.loader import load_model

    seen = []

    def counted(spec, **kwargs):
        seen.append(spec)
        return load_model(spec, **kwargs)

    monkeypatch.setattr(tools.models, "load_model", counted)
    return seen


@pytest.fixture
def sd(tiny_pipeline):
    return f"diffusers:{tiny_pipeline('sd')}"


def written(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def fid_gen(*args):
    return invoke(fid, "gen", *TINY, *args)


def gen(outdir, *args):
    return invoke(generate, "--outdir", outdir, "--seeds", 0, "--steps", 2, "--no-progress", *args)


# ---------------------------------------------------------------------------------------------------
# 1. edm fid gen needs at least 2 images (a covariance), and so does an image reference


@pytest.mark.parametrize("args, flag", [
    (("--num", 1), "--num"),
    (("--seeds", 7), "--seeds"),
])
def test_fid_gen_needs_two_images(args, flag, loads, tmp_path):
    line = assert_usage_error(fid_gen(*args, "--ref", "digits"), f"'{flag}'", "at least 2")
    assert not loads, line  # refused before the model is loaded
    assert written(tmp_path) == []


def test_fid_reference_of_one_image_is_refused(loads, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 8, 8, 1), np.uint8))
    line = assert_usage_error(fid_gen("--num", 2, "--ref", one), "'--ref'", "at least 2")
    assert not loads, line
    assert written(tmp_path) == ["one.npy"]


@pytest.mark.parametrize("command", ["calc", "ref"])
def test_fid_num_1_is_refused(command, tmp_path):
    args = (["--images", "digits", "--ref", "digits"] if command == "calc"
            else ["--data", "digits", "--dest", tmp_path / "ref.npz"])
    assert_usage_error(invoke(fid, command, *args, "--num", 1), "'--num'", "at least 2")
    assert written(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# 2. a reference of another detector's images names --ref (not --detector, unless given)


def test_sd_with_the_digits_reference_names_ref(sd, tmp_path):
    line = assert_usage_error(fid_gen("--model", sd, "--prompt", "x", "--num", 2, "--ref", "digits"),
                              "'--ref'", "inception")
    assert "--detector" not in line, line  # not given
    assert written(tmp_path) == []


def test_sd_with_a_digits_detector_given_names_detector(sd):
    assert_usage_error(fid_gen("--model", sd, "--prompt", "x", "--num", 2, "--ref", "digits",
                               "--detector", "digits"), "'--detector'")


# ---------------------------------------------------------------------------------------------------
# 3. checks that need no model come before it is loaded


@pytest.mark.parametrize("args, flag", [
    (("--ref", "nope/ref.npz"), "--ref"),
    (("--ref", "digits", "--schedule", "nope"), "--schedule"),
    (("--ref", "digits", "--schedule", "file:nope.json"), "--schedule"),
])
def test_fid_gen_checks_before_loading(args, flag, loads, tmp_path):
    line = assert_usage_error(fid_gen("--num", 2, *args), f"'{flag}'")
    assert not loads, line
    assert written(tmp_path) == []


def test_generate_checks_the_schedule_before_loading(loads, tmp_path):
    line = assert_usage_error(gen(tmp_path / "out", "--schedule", "nope"), "'--schedule'")
    assert not loads, line
    assert written(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# 4. a model without classes takes no class, said once


@pytest.mark.parametrize("args, flag", [
    (("--negative-class", 3), "--negative-class"),
    (("--class", 3), "--class"),
])
def test_sd_takes_no_class(args, flag, sd, tmp_path):
    line = assert_usage_error(gen(tmp_path / "out", "--model", sd, "--prompt", "x", *args),
                              f"'{flag}'", "this model takes no class")
    assert "-1" not in line and "--classifier" not in line, line
    assert written(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# 5. guidance that cancels itself


def _digits_path() -> str:
    from tools.models.checkpoint import builtin_path

    return str(builtin_path("digits").with_suffix(".json"))


@pytest.mark.parametrize("guide", ["digits", "resolved"])
def test_guide_model_equal_to_the_model(guide, loads, tmp_path):
    guide = _digits_path() if guide == "resolved" else guide
    line = assert_usage_error(gen(tmp_path / "out", "--class", 3, "--guidance", 1, "--guide-model", guide),
                              "'--guide-model'", "the model itself", "digits-weak")
    assert loads == ["digits"], line  # the guide is not loaded
    assert written(tmp_path) == []


def test_guide_model_spelled_as_the_model_path(tmp_path):
    line = assert_usage_error(gen(tmp_path / "out", "--model", _digits_path(), "--guidance", 1,
                                  "--guide-model", "digits"), "'--guide-model'", "the model itself")
    assert written(tmp_path) == [], line


def test_negative_class_equal_to_the_class(tmp_path):
    assert_usage_error(gen(tmp_path / "out", "--class", 3, "--guidance", 1, "--negative-class", 3),
                       "'--negative-class'", "--class 3", "cancel")
    assert written(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# 6. an unconditional run takes a class only for a classifier


def test_unconditional_with_a_class_needs_a_classifier(tmp_path):
    assert_usage_error(gen(tmp_path / "out", "--unconditional", "--class", 3), "'--class'", "--classifier")
    assert written(tmp_path) == []


def test_the_meaningful_combinations_still_run(tmp_path):
    """The checks above refuse only what cancels or is ignored."""
    for name, args in {"weak guide": ("--class", 3, "--guidance", 1, "--guide-model", "digits-weak"),
                       "other negative": ("--class", 3, "--guidance", 1, "--negative-class", 5),
                       "unconditional": ("--unconditional",)}.items():
        result = gen(tmp_path / name, *args)
        assert result.exit_code == 0, (name, result.output)

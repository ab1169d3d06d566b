"""The ``edm fid`` commands (tools.fid.cli): ref, calc, gen, their errors, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _support
from _support import error_lines
from tools.fid.cli import fid
from tools.fid.detectors import DIGITS_WEIGHTS
from tools.fid.stats import load_ref, load_ref_metadata

ROOT = Path(__file__).resolve().parents[1]
# The shipped digits detector; EDM_FID_TEST_DIGITS_WEIGHTS points at another checkpoint (development).
WEIGHTS = Path(os.environ.get("EDM_FID_TEST_DIGITS_WEIGHTS", DIGITS_WEIGHTS))
W = ["--detector-weights", str(WEIGHTS)]
QUIET = ["--no-progress", "--device", "cpu"]


def invoke(*args, env=None):
    return _support.invoke(fid, *args, env=env, catch_exceptions=False)


def _digits_uint8() -> np.ndarray:
    from tools.fid.sources import open_images

    return np.concatenate([b.numpy() for b in open_images("digits", batch=2000)])  # NCHW


def _last_line(result) -> str:
    return result.stdout.strip().splitlines()[-1]


def _one_line_error(result, text):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1 and text in result.output, result.output


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The digits split in two seeded halves, plus Gaussian-noise images, as .npy files."""
    root = tmp_path_factory.mktemp("halves")
    images = _digits_uint8()
    order = np.random.RandomState(0).permutation(len(images))
    np.save(root / "a.npy", images[order[:898]])
    np.save(root / "b.npy", images[order[898:]])
    noise = np.random.default_rng(0).normal(128, 64, size=(898, 1, 8, 8)).clip(0, 255).astype(np.uint8)
    np.save(root / "noise.npy", noise)
    return root


def test_ref_folder_equals_array_and_writes_metadata(tmp_path):
    images = _digits_uint8()[:100]
    folder = tmp_path / "png"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    np.save(tmp_path / "x.npy", images)
    r1 = invoke("ref", "--data", folder, "--dest", tmp_path / "folder.npz", *W, *QUIET)
    r2 = invoke("ref", "--data", tmp_path / "x.npy", "--dest", tmp_path / "array.npz", *W, *QUIET)
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    (mu1, s1), (mu2, s2) = load_ref(tmp_path / "folder.npz"), load_ref(tmp_path / "array.npz")
    np.testing.assert_allclose(mu1, mu2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)
    meta = load_ref_metadata(tmp_path / "folder.npz")
    assert meta["detector"] == "digits" and meta["num"] == 100 and mu1.shape == (meta["dim"],)


def test_calc_halves_far_below_noise_and_output_format(tmp_path, halves):
    assert invoke("ref", "--data", halves / "b.npy", "--dest", tmp_path / "b.npz", *W, *QUIET).exit_code == 0
    half = invoke("calc", "--images", halves / "a.npy", "--ref", tmp_path / "b.npz", *W, *QUIET)
    noise = invoke(
        "calc", "--images", halves / "noise.npy", "--ref", tmp_path / "b.npz", *W, *QUIET, "--json"
    )
    assert half.exit_code == 0 and noise.exit_code == 0, half.output + noise.output
    name, value = _last_line(half).split()
    assert name == "fd_digits"
    fd_noise = json.loads(_last_line(noise))["fd_digits"]
    assert 0 < float(value) < 0.1 * fd_noise


@pytest.mark.slow
def test_kid_and_pr_need_reference_images(tmp_path, halves):
    result = invoke(
        "calc",
        "--images",
        halves / "a.npy",
        "--ref",
        halves / "a.npy",
        "--metrics",
        "fid,kid,pr",
        *W,
        *QUIET,
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(_last_line(result))
    assert abs(record["fd_digits"]) < 1e-4  # round-off of the matrix square root
    assert (
        abs(record["kid"])
        < 0.05  # the unbiased estimate of a set against itself is O(1/N)
        * json.loads(
            _last_line(
                invoke(
                    "calc",
                    "--images",
                    halves / "noise.npy",
                    "--ref",
                    halves / "a.npy",
                    "--metrics",
                    "kid",
                    *W,
                    *QUIET,
                    "--json",
                )
            )
        )["kid"]
    )
    assert record["precision"] == 1.0 and record["recall"] == 1.0
    assert invoke("ref", "--data", halves / "a.npy", "--dest", tmp_path / "a.npz", *W, *QUIET).exit_code == 0
    _one_line_error(
        invoke(
            "calc", "--images", halves / "a.npy", "--ref", tmp_path / "a.npz", "--metrics", "kid", *W, *QUIET
        ),
        "statistics (mu, sigma) only",
    )


def test_num_selection_in_calc_equals_preselected_array(tmp_path, halves):
    from tools.fid.sources import select_indices

    images = np.load(halves / "a.npy")
    np.save(tmp_path / "sel.npy", images[select_indices(len(images), 300, 5)])
    args = ("--ref", halves / "b.npy", *W, *QUIET, "--json")
    r1 = invoke("calc", "--images", halves / "a.npy", "--num", 300, "--seed", 5, *args)
    r2 = invoke("calc", "--images", tmp_path / "sel.npy", *args)
    assert json.loads(_last_line(r1))["fd_digits"] == pytest.approx(
        json.loads(_last_line(r2))["fd_digits"], rel=1e-12
    )


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, halves):
    dest = tmp_path / "out.npz"
    (tmp_path / "empty").mkdir()
    _one_line_error(invoke("ref", "--data", tmp_path / "empty", "--dest", dest, *W, *QUIET), "no images")
    _one_line_error(
        invoke("ref", "--data", halves / "a.npy", "--num", 5000, "--dest", dest, *W, *QUIET),
        "found 898 images",
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "a.png")
    (bad / "b.png").write_bytes(b"garbage")
    _one_line_error(invoke("ref", "--data", bad, "--dest", dest, *W, *QUIET), "b.png")
    np.savez(tmp_path / "nomu.npz", foo=np.zeros(3))
    _one_line_error(
        invoke("calc", "--images", halves / "a.npy", "--ref", tmp_path / "nomu.npz", *W, *QUIET), "mu"
    )
    np.savez(tmp_path / "dim10.npz", mu=np.zeros(10), sigma=np.eye(10))
    _one_line_error(
        invoke("calc", "--images", halves / "a.npy", "--ref", tmp_path / "dim10.npz", *W, *QUIET), "10-d"
    )
    rgb = np.zeros((4, 3, 8, 8), np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    _one_line_error(
        invoke("calc", "--images", tmp_path / "rgb.npy", "--ref", halves / "a.npy", *W, *QUIET), "images"
    )
    result = invoke(
        "calc", "--images", halves / "a.npy", "--ref", halves / "b.npy", "--metrics", "fd2", *QUIET
    )
    assert result.exit_code == 2
    assert not dest.exists()


def test_missing_inception_weights_one_line(tmp_path, halves):
    env = {"HOME": str(tmp_path), "EDM_FID_INCEPTION_WEIGHTS": str(tmp_path / "nowhere.pth")}
    dest = tmp_path / "ref.npz"
    result = invoke(
        "ref", "--data", halves / "a.npy", "--dest", dest, "--detector", "inception", *QUIET, env=env
    )
    _one_line_error(result, "pt_inception-2015-12-05-6726825d.pth")
    assert not dest.exists()


@pytest.mark.slow
def test_gen_scores_exactly_the_images_generate_writes(tmp_path, halves):
    from tools.generate import generate

    generate(
        "digits", "0-11", tmp_path / "png", sampler="heun", steps=3, batch=5, device="cpu", progress=False
    )
    written = invoke(
        "calc", "--images", tmp_path / "png", "--ref", halves / "b.npy", "--batch", 5, *W, *QUIET, "--json"
    )
    made = invoke(
        "gen",
        "--model",
        "digits",
        "--sampler",
        "heun",
        "--steps",
        3,
        "--num",
        12,
        "--batch",
        5,
        "--ref",
        halves / "b.npy",
        *W,
        *QUIET,
        "--json",
    )
    assert written.exit_code == 0 and made.exit_code == 0, written.output + made.output
    a, b = json.loads(_last_line(written)), json.loads(_last_line(made))
    assert b["fd_digits"] == pytest.approx(a["fd_digits"], rel=1e-12)
    assert b["nfe"] == 5 and b["num"] == 12


def test_group_lists_train_detector():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("ref", "calc", "gen", "train-detector"):
        assert name in result.output


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, halves):
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    # batch 1: float32 convolutions may round differently for different batch sizes (as in generate)
    args = ["-m", "tools.fid.cli", "ref", "--data", str(halves / "a.npy"), "--batch", "1", *W, *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for n in (1, 2):
        done = subprocess.run(
            [*base, str(n), *args, "--dest", str(tmp_path / f"r{n}.npz")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    (mu1, s1), (mu2, s2) = load_ref(tmp_path / "r1.npz"), load_ref(tmp_path / "r2.npz")
    np.testing.assert_allclose(mu1, mu2, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-10)

"""Cascaded generation, ``edm generate --model BASE --sr-model SR``: a tiny class-conditional 1x4x4 base and
a tiny 4x4 -> 8x8 super-resolution model (``sr_models``).

The oracle of the super-resolution stage is a plain super-resolution run of the library: the SR model with
``--low-res`` the base stage's PNGs and the seeds ``stream_seed(seed, STAGE_STREAM)``. Byte-identity checks
run in float64 (see test_generate.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _support import assert_usage_error, invoke
from samplers.noise import STAGE_STREAM, stream_seed
from tools.fid.cli import fid
from tools.fid.detectors import DIGITS_WEIGHTS
from tools.generate import cli as generate_cli
from tools.generate import generate, prepare_sampling
from tools.generate.cascade import stage_seeds
from tools.images import to_uint8
from tools.request import SamplingRequest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
SEEDS = "0-7"
#: both stages stochastic, each with flags of its own
STAGES = ["--sampler", "euler_ancestral", "--steps", 4, "--sr-sampler", "dpmpp_2m_sde", "--sr-steps", 3,
          "--sr-eta", 0.7, "--noise-aug", 0.3, "--dtype", "float64", "--no-progress"]


def pngs(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def cascade(sr_models, outdir, *args, seeds=SEEDS):
    base, sr = sr_models
    result = invoke(generate_cli.generate, "--model", base, "--sr-model", sr, *STAGES, "--seeds", seeds,
                    "--outdir", outdir, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def reference(sr_models, tmp_path_factory):
    """A cascade's folder, batch 8."""
    out = tmp_path_factory.mktemp("cascade") / "out"
    cascade(sr_models, out, "--batch", 8)
    return out


def test_layout_and_record(reference):
    names = sorted(pngs(reference))
    assert names == sorted([*(f"base/{s:06d}.png" for s in range(8)), *(f"{s:06d}.png" for s in range(8))])
    record = json.loads((reference / "edm-generate.json").read_text())
    assert record["base"]["sampler"] == "euler_ancestral" and record["base"]["steps"] == 4
    assert record["sr"]["sampler"] == "dpmpp_2m_sde" and record["sr"]["options"] == {"eta": 0.7}
    assert record["sr"]["low_res"] == {"source": "the base stage's images", "noise_aug": 0.3}
    assert record["sr"]["seeds"] == f"stream_seed(seed, {STAGE_STREAM})"


def test_unset_stage_flags_take_the_sr_models_defaults_and_subdirs_hold_both_stages(sr_models, tmp_path):
    base, sr = sr_models
    result = invoke(generate_cli.generate, "--model", base, "--sr-model", sr, "--sampler", "euler",
                    "--steps", 3, "--seeds", "999-1000", "--subdirs", "--outdir", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "edm-generate.json").read_text())
    assert (record["base"]["sampler"], record["base"]["steps"]) == ("euler", 3)
    stage = record["sr"]
    assert (stage["sampler"], stage["steps"], stage["schedule"]) == ("heun", 18, "karras")
    assert record["sr"]["low_res"]["noise_aug"] == 0.2  # the SR checkpoint's recorded level
    assert sorted(pngs(tmp_path)) == ["000000/000999.png", "001000/001000.png", "base/000000/000999.png",
                                      "base/001000/001000.png"]


def test_batch_one_equals_batch_eight(sr_models, reference, tmp_path):
    cascade(sr_models, tmp_path, "--batch", 1)
    assert pngs(tmp_path) == pngs(reference)


def test_sr_stage_equals_a_super_resolution_run_of_the_base_images(sr_models, reference):
    """The final images are the SR model's on the base PNGs, with the derived seeds (bytes)."""
    _, sr = sr_models
    seeds = list(range(8))
    setup = prepare_sampling(SamplingRequest(model=sr, low_res=reference / "base", noise_aug=0.3,
                                             sampler="dpmpp_2m_sde", steps=3, options={"eta": 0.7},
                                             dtype="float64"))
    derived = [stream_seed(seed, STAGE_STREAM) for seed in seeds]
    assert stage_seeds(seeds) == derived
    low = setup.low_res.images.for_seeds(seeds, "cpu", torch.float64)  # the PNGs, read by seed
    with torch.no_grad():
        expected = to_uint8(setup.images(derived, low_res=low))
    final = [np.asarray(Image.open(reference / f"{s:06d}.png")) for s in seeds]
    np.testing.assert_array_equal(np.stack(final), expected[..., 0])
    # the stage's own noise: sampling it with the base seeds gives other images
    with torch.no_grad():
        assert not np.array_equal(to_uint8(setup.images(seeds, low_res=low)), expected)


def test_the_library_cascade_writes_what_the_command_writes(sr_models, reference, tmp_path):
    base, sr = sr_models
    stage = SamplingRequest(model=sr, sampler="dpmpp_2m_sde", steps=3, options={"eta": 0.7}, noise_aug=0.3,
                            dtype="float64")
    generate(base, SEEDS, tmp_path, sampler="euler_ancestral", steps=4, dtype="float64", sr=stage,
             progress=False)
    assert pngs(tmp_path) == pngs(reference)


def test_base_stage_equals_a_plain_run_of_the_base_model(sr_models, reference, tmp_path):
    base, _ = sr_models
    result = invoke(generate_cli.generate, "--model", base, *STAGES[:4], "--dtype", "float64",
                    "--no-progress", "--seeds", SEEDS, "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == {name.removeprefix("base/"): data for name, data in pngs(reference).items()
                              if name.startswith("base/")}


def test_rerun_resumes_to_the_same_bytes(sr_models, reference, tmp_path):
    out = tmp_path / "out"
    cascade(sr_models, out, "--batch", 3)
    (out / "000002.png").unlink()
    (out / "000005.png").unlink()
    (out / "base" / "000006.png").unlink()  # a seed whose final image is there but its base one is not
    result = cascade(sr_models, out, "--batch", 3)
    assert "3 images written, 5 skipped" in result.output
    assert pngs(out) == pngs(reference)


def test_killed_run_resumes_to_the_same_bytes(sr_models, reference, tmp_path):
    base, sr = sr_models
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tools.generate.cli", "--model", str(base), "--sr-model", str(sr),
               *map(str, STAGES), "--seeds", "0-1999", "--batch", "1", "--outdir", str(out)]
    process = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and len(list(out.glob("*.png"))) < 3:
            time.sleep(0.05)
        process.kill()  # SIGKILL, part-way through 2000 seeds
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    finals = list(out.glob("*.png"))
    assert 3 <= len(finals) < 2000
    assert all((out / "base" / path.name).is_file() for path in finals)  # each seed's base image first
    done = subprocess.run(command[:command.index("--seeds")] + ["--seeds", SEEDS, "--batch", "3", "--outdir",
                                                                str(out)], env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {name: data for name, data in pngs(out).items() if int(Path(name).stem) < 8} == pngs(reference)


def test_torchrun_two_processes_equal_one(sr_models, reference, tmp_path):
    base, sr = sr_models
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tools.generate.cli", "--model", str(base), "--sr-model", str(sr), *map(str, STAGES),
               "--seeds", SEEDS, "--batch", "3", "--device", "cpu", "--outdir", str(tmp_path / "two")]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pngs(tmp_path / "two") == pngs(reference)


def test_fid_gen_scores_the_final_images(sr_models, reference, tmp_path):
    """`edm fid gen --sr-model` scores what `edm fid calc` scores of the cascade's final images."""
    base, sr = sr_models
    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8))
    common = ["--ref", ref, "--detector-weights", DIGITS_WEIGHTS, "--device", "cpu", "--no-progress",
              "--json"]
    made = invoke(fid, "gen", "--model", base, "--sr-model", sr, *STAGES[:-1], "--seeds", SEEDS,
                  "--batch", 3, *common)
    assert made.exit_code == 0, made.output
    final = tmp_path / "final"  # the final images alone (fid calc reads a folder's PNGs at every depth)
    final.mkdir()
    for path in reference.glob("*.png"):
        (final / path.name).write_bytes(path.read_bytes())
    written = invoke(fid, "calc", "--images", final, "--batch", 3, *common)
    assert written.exit_code == 0, written.output
    a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (written, made))
    assert b["fd_digits"] == pytest.approx(a["fd_digits"], rel=1e-9)
    assert b["sr"]["sampler"] == "dpmpp_2m_sde" and b["sr"]["low_res"]["noise_aug"] == 0.3


@pytest.mark.parametrize("args, fragments", [
    (["--sr-steps", 3], ["--sr-steps", "give --sr-model"]),
    (["--sr-model", "SR", "--low-res", "LOW"], ["--low-res and --sr-model"]),
    (["--sr-model", "BASE"], ["--sr-model", "not a super-resolution model"]),
    (["--model", "digits", "--sr-model", "SR"], ["takes 1x4x4 low-resolution images", "makes 1x8x8"]),
    (["--sr-model", "SR", "--noise-level", 3], ["takes --noise-aug", "not --noise-level"]),
    (["--sr-model", "SR", "--sr-steps", 3, "--sr-nfe", 5], ["--sr-steps and --sr-nfe"]),
    (["--sr-model", "SR", "--sr-sampler", "nope"], ["'--sr-sampler'", "unknown sampler"]),
    (["--sr-model", "SR", "--sr-eta", 0.5], ["--sr-eta", "heun"]),
    (["--sr-model", "SR", "--sr-schedule", "nope"], ["'--sr-schedule'", "unknown schedule"]),
    (["--sr-model", "nowhere"], ["'--sr-model'", "nowhere"]),
    (["--sr-model", "SR", "--sr-sampler", "auto", "--sr-nfe", 10, "--sr-schedule", "karras"],
     ["--sr-sampler auto picks its own noise levels: drop --sr-schedule"]),
    (["--sr-model", "SR", "--sr-sampler", "auto", "--sr-nfe", 10, "--sr-eta", 1], ["(got --sr-eta)"]),
    (["--sr-model", "SR", "--sr-sigma-max", -1], ["the --sr-model stage", "sigma_max"]),
    (["--sr-model", "SR", "--grid", "OUT/base/000001.png"], ["'--grid'", "seed 1's image"]),
])
def test_bad_inputs_are_one_line_usage_errors_and_write_nothing(sr_models, tmp_path, args, fragments):
    base, sr = sr_models
    named = {"SR": sr, "BASE": base, "LOW": tmp_path}
    args = [named.get(a, a.replace("OUT/", f"{tmp_path / 'out'}/")) if isinstance(a, str) else a
            for a in args]
    if "--model" not in args:
        args = ["--model", base, *args]
    outdir = tmp_path / "out"
    result = invoke(generate_cli.generate, *args, "--seeds", "0-1", "--steps", 2, "--outdir", outdir,
                    "--no-progress")
    assert_usage_error(result, *fragments)
    assert not outdir.exists()


def test_the_base_schedule_flag_does_not_bind_the_stages_auto_sampler(sr_models, tmp_path):
    base, sr = sr_models
    result = invoke(generate_cli.generate, "--model", base, "--schedule", "karras", "--sr-model", sr,
                    "--sr-sampler", "auto", "--sr-nfe", 10, "--steps", 2, "--seeds", "0-1",
                    "--outdir", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "edm-generate.json").read_text())["sr"]["auto"]

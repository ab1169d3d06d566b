"""`edm generate` on a text-to-image pipeline: prompts per seed, sizes, records, processes, bad input.

The images themselves are checked against diffusers' pipelines in ``test_text_to_image.py``; here the
front end around them: which prompt a seed gets, that --batch and torchrun do not change a byte, and that
every bad input is one line with exit 2 and nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _support import error_lines, invoke
from tools.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
LINES = ["a red bicycle", "a blue house", "two cats"]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def sd(tiny_pipeline):
    return tiny_pipeline("sd")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(LINES[:1] + [""] + LINES[1:]) + "\n")  # a blank line is skipped
    return path


def run(*args):
    return invoke(main, "generate", *map(str, args))


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


COMMON = ("--sampler", "euler", "--schedule", "diffusers", "--steps", 4, "--no-progress", "--device", "cpu")


@pytest.mark.slow
def test_each_seed_gets_its_line_of_the_prompts_file(sd, prompts_file, tmp_path):
    seeds = [5, 2, 9, 7]  # the k-th seed of the list gets line k, cycling: 7 gets line 0 again
    ok("--model", f"diffusers:{sd}", "--prompts", prompts_file, "--seeds", ",".join(map(str, seeds)),
       "--outdir", tmp_path / "file", *COMMON)
    for k, seed in enumerate(seeds):
        ok("--model", f"diffusers:{sd}", "--prompt", LINES[k % 3], "--seeds", seed,
           "--outdir", tmp_path / f"one{k}", *COMMON)
        assert pngs(tmp_path / f"one{k}") == {f"{seed:06d}.png": pngs(tmp_path / "file")[f"{seed:06d}.png"]}
    record = json.loads((tmp_path / "file" / "edm-generate.json").read_text())
    text = json.dumps(record)
    assert all(line in text for line in LINES) and "6.5" in text  # prompts and the default guidance


@pytest.mark.slow
def test_width_and_height_and_the_default_guidance(sd, tmp_path):
    ok("--model", f"diffusers:{sd}", "--prompt", LINES[0], "--seeds", 0, "--width", 24, "--height", 12,
       "--outdir", tmp_path / "wide", *COMMON)
    from PIL import Image

    with Image.open(tmp_path / "wide" / "000000.png") as image:
        assert image.size == (24, 12)
    ok("--model", f"diffusers:{sd}", "--prompt", LINES[0], "--seeds", 0, "--outdir", tmp_path / "default",
       *COMMON)
    ok("--model", f"diffusers:{sd}", "--prompt", LINES[0], "--seeds", 0, "--guidance", 6.5,
       "--outdir", tmp_path / "explicit", *COMMON)
    ok("--model", f"diffusers:{sd}", "--prompt", LINES[0], "--seeds", 0, "--guidance", 0,
       "--outdir", tmp_path / "none", *COMMON)
    assert pngs(tmp_path / "default") == pngs(tmp_path / "explicit") != pngs(tmp_path / "none")


@pytest.mark.slow
def test_torchrun_two_processes_match_one(sd, prompts_file, tmp_path):
    args = ["--model", f"diffusers:{sd}", "--prompts", str(prompts_file), "--seeds", "0-4", "--batch", "2",
            *map(str, COMMON)]
    ok(*args, "--outdir", tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tools.generate.cli", *args, "--outdir", str(tmp_path / "two")]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pngs(tmp_path / "two") == pngs(tmp_path / "one") and len(pngs(tmp_path / "one")) == 5


def _broken_pipelines(root: Path, sd: Path) -> dict[str, Path]:
    import shutil

    missing = root / "missing"
    shutil.copytree(sd, missing)
    shutil.rmtree(missing / "vae")
    unknown = root / "unknown"
    shutil.copytree(sd, unknown)
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    return {"missing": missing, "unknown": unknown}


BAD = {
    "no prompt": (lambda sd, broken: ["--model", f"diffusers:{sd}"], "--prompt"),
    "prompt for digits": (lambda sd, broken: ["--model", "digits", "--prompt", "x", "--sampler", "euler"],
                          "--prompt"),
    "width for digits": (lambda sd, broken: ["--model", "digits", "--width", "16", "--sampler", "euler"],
                         "--width"),
    "size the VAE cannot take": (lambda sd, broken: ["--model", f"diffusers:{sd}", "--prompt", "x",
                                                     "--width", "15"], "--width"),
    "prompt and prompts": (lambda sd, broken: ["--model", f"diffusers:{sd}", "--prompt", "x", "--prompts",
                                               str(sd / "model_index.json")], "--prompts"),
    "missing prompts file": (lambda sd, broken: ["--model", f"diffusers:{sd}", "--prompts",
                                                 str(sd / "nope.txt")], "--prompts"),
    "missing component": (lambda sd, broken: ["--model", f"diffusers:{broken['missing']}", "--prompt", "x"],
                          "vae"),
    "unknown pipeline": (lambda sd, broken: ["--model", f"diffusers:{broken['unknown']}", "--prompt", "x"],
                         "KandinskyPipeline"),
    "diffusers schedule for digits": (lambda sd, broken: ["--model", "digits", "--schedule", "diffusers"],
                                      "--schedule"),
    "sampler without counterpart": (lambda sd, broken: ["--model", f"diffusers:{sd}", "--prompt", "x",
                                                        "--sampler", "restart"], "counterpart"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sd, tmp_path, case):
    build, expected = BAD[case]
    args = build(sd, _broken_pipelines(tmp_path, sd))
    defaults = [] if "--sampler" in args else ["--sampler", "euler"]
    schedule = [] if "--schedule" in args or "digits" in args else ["--schedule", "diffusers"]
    result = run(*args, *defaults, *schedule, "--steps", 3, "--seeds", 0, "--outdir", tmp_path / "out",
                 "--no-progress")
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_model_object_reused_after_a_diffusers_plan_samples_as_a_fresh_one(sd, tmp_path):
    """--schedule diffusers pins the network's timesteps (and, for Karras sigmas, a log-sigma time map) on a
    copy of the loaded model's denoiser; a later setup with another schedule on the same object samples as
    a fresh load, and the loaded model itself is left as it was."""
    import shutil

    from tools.generate.sampling import prepare_sampling
    from tools.models import load_model
    from tools.request import Prompting, SamplingRequest

    karras = tmp_path / "karras"
    shutil.copytree(sd, karras)
    config_path = karras / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_class_name": "EulerDiscreteScheduler",
                                       "use_karras_sigmas": True}))
    text = Prompting(prompt=LINES[0])
    reused = load_model(f"diffusers:{karras}")
    prepare_sampling(SamplingRequest(model=reused, sampler="euler", schedule="diffusers", steps=4,
                                     prompting=text, device="cpu"))
    again = prepare_sampling(SamplingRequest(model=reused, sampler="heun", schedule="karras", steps=3,
                                             prompting=text, device="cpu"))
    fresh = prepare_sampling(SamplingRequest(model=f"diffusers:{karras}", sampler="heun", schedule="karras",
                                             steps=3, prompting=text, device="cpu"))
    assert again.sample([0]).equal(fresh.sample([0]))
    assert reused.denoiser is again.model.denoiser  # karras: the loaded denoiser itself, never pinned


def test_a_prompt_the_encoder_truncates_is_warned_about(sd, tmp_path):
    long = "a very long prompt " * 6  # the tiny tokenizer spells words out: far over 77 tokens
    result = ok("--model", f"diffusers:{sd}", "--prompt", long, "--seeds", 0, "--outdir", tmp_path / "o",
                *COMMON)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "truncated" in warnings[0], result.stderr
    assert (tmp_path / "o" / "000000.png").is_file()
    quiet = ok("--model", f"diffusers:{sd}", "--prompt", LINES[0], "--seeds", 0, "--outdir", tmp_path / "q",
               *COMMON)
    assert "truncated" not in quiet.stderr

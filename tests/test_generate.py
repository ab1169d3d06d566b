"""`edm generate` / `edm info` and the generation pipeline, on a tiny random-weight 1x8x8 UNet checkpoint.

Byte-identity checks run the model in float64: float32 matrix products on CPU may round differently for
different batch sizes (the network's arithmetic, not the pipeline's), which float64 keeps out of 8-bit
images.
"""

from __future__ import annotations

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

import samplers
from _support import error_lines, invoke, plan_of
from tools import common, images
from tools import generate as pipeline
from tools.generate import cli as generate_cli
from tools.generate import runner
from tools.generate.record import RECORD_NAME
from tools.models import cli as models_cli
from tools.seeds import format_seeds, parse_seeds

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
CLASSES = 10
NETWORK = dict(in_channels=1, resolution=8, model_channels=8, channel_mult=[1], num_blocks=1,
               attn_resolutions=[], channels_per_head=8)
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(path: Path, num_classes: int) -> Path:
    from edm.checkpoint import save_checkpoint
    from edm.networks import build_network

    torch.manual_seed(num_classes)
    kwargs = {**NETWORK, "num_classes": num_classes}
    backbone = build_network("unet", **kwargs)
    for weight in backbone.parameters():  # the output and residual convolutions start at zero: randomise
        if weight.ndim > 1 and not weight.any():
            torch.nn.init.normal_(weight, std=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, backbone, {
        "network": {"name": "unet", "kwargs": kwargs},
        "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
        "data": {"shape": list(SHAPE), "num_classes": num_classes},
        "command": "edm train --tiny (test fixture)",
    })
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {"cond": str(make_checkpoint(root / "tiny", CLASSES)),
            "uncond": str(make_checkpoint(root / "tiny_uncond", 0))}


@pytest.fixture(scope="module")
def tiny(models) -> str:
    return models["cond"]


def generate(*args):
    result = invoke(generate_cli.generate, "--no-progress", "--device", "cpu", *args)
    return result


def ok(*args) -> str:
    result = generate(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*.png"))}


def complete(path: Path) -> bool:
    with Image.open(path) as image:
        image.load()  # raises on a truncated file
    return True


# ---------------------------------------------------------------------------------------------------
# Seeds


def test_parse_seeds():
    assert parse_seeds("0-63,100") == [*range(64), 100]
    assert parse_seeds("5") == [5]
    assert parse_seeds(" 3 , 1-2 ") == [3, 1, 2]
    assert parse_seeds("7-7") == [7]
    assert parse_seeds(12) == [12]
    assert parse_seeds([4, 2]) == [4, 2]
    assert format_seeds(parse_seeds("0-63,100,65-66")) == "0-63,100,65-66"


@pytest.mark.parametrize("text, match", [
    ("", "no seeds"), (" ", "no seeds"), ("a", "bad seed"), ("1,,2", "bad seed"), ("1,", "bad seed"),
    ("-3", "non-negative"), ("1--3", "bad seed"), ("5-1", "reversed"), ("1-2-3", "bad seed"),
    ("1.5", "bad seed"), ("0-3,2", "twice"), ("0-99999999999", "too many"), (str(1 << 63), "too large"),
    (True, "string"), (None, "string"),
])
def test_parse_seeds_errors(text, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_seeds(text)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Per-seed reproducibility


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde"])
@pytest.mark.slow
def test_batch_size_and_position_do_not_change_the_images(tiny, tmp_path, sampler):
    common = ["--model", tiny, "--sampler", sampler, "--steps", 8, "--dtype", "float64"]
    ok(*common, "--seeds", "0-9", "--batch", 1, "--outdir", tmp_path / "b1")
    ok(*common, "--seeds", "0-9", "--batch", 7, "--outdir", tmp_path / "b7")
    ok(*common, "--seeds", "6-9,0-5", "--batch", 4, "--outdir", tmp_path / "shuffled")
    one = pngs(tmp_path / "b1")
    assert sorted(one) == [f"{s:06d}.png" for s in range(10)]
    assert len(set(one.values())) == 10  # different seeds, different images
    assert pngs(tmp_path / "b7") == one
    assert pngs(tmp_path / "shuffled") == one


def test_images_are_nvlabs_uint8_of_the_sample(tiny, tmp_path):
    """The PNG is round(-ish) x * 127.5 + 128 of samplers.sample's output, truncated as NVlabs does."""
    plan = plan_of(tiny, "3,11", tmp_path / "out", sampler="euler_ancestral", steps=5, progress=False)
    labels = pipeline.class_labels([3, 11], CLASSES, SHAPE)
    sigmas = plan.sampling.sigmas
    x = samplers.noise.latents([3, 11], SHAPE) * float(sigmas[0])
    cond = {"class_labels": torch.nn.functional.one_hot(labels, CLASSES).float()}
    images = samplers.sample(plan.sampling.model.denoiser, x, sigmas, "euler_ancestral", seeds=[3, 11],
                             cond=cond)
    expected = (images * 127.5 + 128).clip(0, 255).to(torch.uint8)[:, 0].numpy()
    pipeline.run(plan)
    for seed, image in zip([3, 11], expected):
        with Image.open(tmp_path / "out" / f"{seed:06d}.png") as png:
            assert png.mode == "L" and png.size == (8, 8)
            assert np.array_equal(np.asarray(png), image)


def test_class_labels_follow_nvlabs_and_the_seed():
    seeds = [0, 1, 2, 3, 4, 5, 6, 7, 1000, 123456789]
    labels = pipeline.class_labels(seeds, CLASSES, SHAPE)
    for seed, label in zip(seeds, labels.tolist()):  # NVlabs' StackedRandomGenerator: randn, then randint
        gen = torch.Generator().manual_seed(seed)
        torch.randn(SHAPE, generator=gen)
        assert label == int(torch.randint(CLASSES, size=[], generator=gen))
    assert pipeline.class_labels(seeds[::-1], CLASSES, SHAPE).tolist() == labels.tolist()[::-1]
    assert pipeline.class_labels(seeds[3:5], CLASSES, SHAPE).tolist() == labels.tolist()[3:5]
    assert len(set(labels.tolist())) > 3


@pytest.mark.slow
def test_class_and_guidance_change_the_images(tiny, tmp_path):
    common = ["--model", tiny, "--sampler", "heun", "--steps", 6, "--seeds", "0-3"]
    ok(*common, "--outdir", tmp_path / "plain")
    ok(*common, "--outdir", tmp_path / "class", "--class", 3)
    ok(*common, "--outdir", tmp_path / "guided", "--class", 3, "--guidance", 2)
    plain, cls, guided = (pngs(tmp_path / d) for d in ("plain", "class", "guided"))
    assert plain.keys() == cls.keys() == guided.keys()
    assert plain != cls and cls != guided


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs(tiny, tmp_path, dtype):
    ok("--model", tiny, "--steps", 4, "--seeds", "0-1", "--dtype", dtype, "--outdir", tmp_path)
    assert all(complete(p) for p in tmp_path.glob("*.png")) and len(list(tmp_path.glob("*.png"))) == 2


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny, tmp_path):
    args = ["--model", tiny, "--sampler", "dpmpp_2m_sde", "--steps", 6, "--seeds", "0-10", "--batch", 3,
            "--dtype", "float64", "--device", "cpu", "--no-progress"]
    ok(*args[:-3], "--outdir", tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tools.generate.cli", *map(str, args), "--outdir", str(tmp_path / "two"),
               "--grid", str(tmp_path / "grid.png")]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [  # the summary, from rank 0 only, with the totals
        f"11 images written, 0 skipped (already there), in {tmp_path / 'two'}; "
        f"grid 32x24 in {tmp_path / 'grid.png'}"]
    assert pngs(tmp_path / "two") == pngs(tmp_path / "one")
    assert len(pngs(tmp_path / "one")) == 11


# ---------------------------------------------------------------------------------------------------
# Files: names, atomic writes, resume


def test_subdirs_and_names(tiny, tmp_path):
    ok("--model", tiny, "--steps", 3, "--seeds", "999-1001,2000", "--subdirs", "--outdir", tmp_path)
    assert sorted(pngs(tmp_path)) == ["000000/000999.png", "001000/001000.png", "001000/001001.png",
                                      "002000/002000.png"]
    assert images.image_path("o", 1234567, True) == Path("o/1234000/1234567.png")


def test_existing_images_are_skipped_unless_overwrite(tiny, tmp_path):
    args = ["--model", tiny, "--steps", 3, "--seeds", "0-2", "--outdir", tmp_path]
    ok(*args)
    reference = pngs(tmp_path)
    (tmp_path / "000001.png").write_bytes(b"placeholder")
    out = ok(*args)
    assert out.strip() == f"0 images written, 3 skipped (already there), in {tmp_path}"
    assert (tmp_path / "000001.png").read_bytes() == b"placeholder"
    out = ok(*args, "--overwrite")
    assert out.startswith("3 images written, 0 skipped")
    assert pngs(tmp_path) == reference


def test_png_files_have_the_usual_permissions(tiny, tmp_path):
    ok("--model", tiny, "--steps", 3, "--seeds", "0", "--outdir", tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "000000.png").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_resume_after_a_failure(tiny, tmp_path, monkeypatch):
    """A run that dies after 3 images leaves 3 complete PNGs; the rerun completes the same set."""
    args = dict(sampler="euler_ancestral", steps=5, batch=2, progress=False)
    pipeline.generate(tiny, "0-8", tmp_path / "reference", **args)

    real_write, written = runner.write_png, []

    def write_then_fail(path, image):
        if len(written) == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C
        real_write(path, image)
        written.append(path)

    monkeypatch.setattr(runner, "write_png", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(tiny, "0-8", tmp_path / "run", **args)
    assert sorted(os.listdir(tmp_path / "run")) == ["000000.png", "000001.png", "000002.png", RECORD_NAME]
    monkeypatch.setattr(runner, "write_png", real_write)

    summary = pipeline.generate(tiny, "0-8", tmp_path / "run", **args)
    assert (summary.written, summary.skipped, summary.total) == (6, 3, 9)
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")


def test_a_write_that_fails_midway_leaves_no_png(tiny, tmp_path, monkeypatch):
    """Failing inside the PNG encoder after some bytes: no partial PNG, and no temporary file left."""
    real_save, saves = Image.Image.save, []

    def save_half(self, fp, *a, **k):
        saves.append(1)
        if len(saves) == 3:
            with open(fp, "wb") as f:  # the writer is handed the temporary file's path
                f.write(b"\x89PNG\r\n\x1a\n partial")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save_half)
    result = generate("--model", tiny, "--steps", 3, "--seeds", "0-5", "--outdir", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert error_lines(result) == [
        "Error: [Errno 28] No space left on device"]
    assert sorted(os.listdir(tmp_path)) == ["000000.png", "000001.png", RECORD_NAME]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_files(tiny, tmp_path):
    """SIGKILL part-way (as an OOM kill or a pre-empted job): every *.png is complete at every moment,
    the leftover temporary files never match *.png and are cleaned up, and the rerun completes the set."""
    args = ["--model", tiny, "--sampler", "dpmpp_2s_ancestral", "--steps", 10, "--seeds", "0-29",
            "--batch", 1, "--device", "cpu", "--no-progress"]
    ok(*args[:-3], "--outdir", tmp_path / "reference")
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "tools.generate.cli", *map(str, args),
                                "--outdir", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            done = list(out.glob("*.png")) if out.is_dir() else []
            for path in done:  # complete whenever it is visible
                try:
                    assert complete(path)
                except FileNotFoundError:  # pragma: no cover - no file is ever removed
                    raise
            if len(done) >= 3:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    finished = sorted(out.glob("*.png"))
    print(f"killed after {len(finished)} of 30 images")
    assert finished and all(complete(p) for p in finished)
    # A temporary file the kill could have left (made here for certain): hidden, never *.png.
    stale = out / ".000029.png.k1ll3d.tmp"
    stale.write_bytes(b"\x89PNG partial")
    assert stale not in set(out.glob("*.png"))

    result = ok(*args[:-3], "--outdir", out)
    assert result.startswith(f"{30 - len(finished)} images written, {len(finished)} skipped")
    assert pngs(out) == pngs(tmp_path / "reference")
    assert sorted(p.name for p in out.iterdir()) == [f"{s:06d}.png" for s in range(30)] + [RECORD_NAME]


def test_grid(tiny, tmp_path):
    ok("--model", tiny, "--steps", 3, "--seeds", "4,0-3,5-9", "--outdir", tmp_path / "out",
       "--grid", tmp_path / "g" / "grid.png")
    with Image.open(tmp_path / "g" / "grid.png") as grid:
        assert grid.size == (4 * 8, 3 * 8) and grid.mode == "L"  # 10 images: 4 columns, 3 rows
        cells = np.asarray(grid)
    order = [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    for i, seed in enumerate(order):
        r, c = divmod(i, 4)
        with Image.open(tmp_path / "out" / f"{seed:06d}.png") as png:
            assert np.array_equal(cells[8 * r:8 * r + 8, 8 * c:8 * c + 8], np.asarray(png))
    assert not cells[16:, 16:].any()  # the two empty cells are black
    assert sorted(os.listdir(tmp_path / "g")) == ["grid.png"]
    assert [images.grid_shape(n) for n in (1, 2, 4, 5, 64, 65)] == [(1, 1), (1, 2), (2, 2), (2, 3), (8, 8),
                                                                       (8, 9)]


# ---------------------------------------------------------------------------------------------------
# Steps and NFE


class Counting:
    """A LoadedModel whose denoiser counts its calls."""

    def __init__(self, loaded):
        self.__dict__.update(vars(loaded))
        inner, self.calls = loaded.denoiser, []

        def denoiser(x, sigma, **cond):
            self.calls.append(x.shape[0])
            return inner(x, sigma, **cond)

        self.denoiser = denoiser


@pytest.mark.parametrize("sampler, budget", [("heun", 20), ("euler", 7), ("dpm_2", 10), ("dpmpp_sde", 9),
                                             ("dpmpp_3m_sde", 5), ("lms", 12)])
@pytest.mark.slow
def test_nfe_budget(tiny, tmp_path, sampler, budget):
    from tools.models import load_model

    model = Counting(load_model(tiny))
    plan = plan_of(model, "0-4", tmp_path, sampler=sampler, nfe=budget, batch=5, progress=False,
                   guidance=1.0)
    setup = plan.sampling
    assert setup.steps == samplers.steps_for_nfe(sampler, budget)
    assert setup.nfe == samplers.get(sampler).nfe(setup.steps) <= budget
    assert samplers.get(sampler).nfe(setup.steps + 1) > budget
    model.calls.clear()
    pipeline.run(plan)
    assert model.calls == [10] * setup.nfe  # one guided call of 2 x 5 per evaluation


def test_nfe_flag(tiny, tmp_path):
    result = generate("--model", tiny, "--nfe", 20, "--seeds", "0", "--outdir", tmp_path, "--progress")
    assert result.exit_code == 0, result.output
    assert "10 steps (19 NFE)" in result.output


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def bad_inputs(models, tmp: Path):
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for suffix in (".json", ".safetensors"):
        (corrupt / ("c" + suffix)).write_bytes(Path(models["cond"] + suffix).read_bytes())
    with open(corrupt / "c.safetensors", "r+b") as f:
        f.truncate(100)
    (tmp / "bad.json").write_text("{ not json")
    (tmp / "afile").write_text("")
    (tmp / "net.pkl").write_bytes(b"not really")
    m, u = models["cond"], models["uncond"]
    return {
        "missing checkpoint": ["--model", tmp / "nope.json"],
        "corrupt weights": ["--model", corrupt / "c.json"],
        "corrupt config": ["--model", tmp / "bad.json"],
        "unknown model": ["--model", "no-such-model"],
        "pickle without --trust-pickle": ["--model", tmp / "net.pkl"],
        "unknown sampler": ["--model", m, "--sampler", "nope"],
        "unknown schedule": ["--model", m, "--schedule", "nope"],
        "table schedule, continuous model": ["--model", m, "--schedule", "simple"],
        "rho on exponential": ["--model", m, "--schedule", "exponential", "--rho", 2],
        "bad sigma range": ["--model", m, "--sigma-min", 5, "--sigma-max", 1],
        "bad seeds": ["--model", m, "--seeds", "1,x"],
        "reversed seeds": ["--model", m, "--seeds", "9-3"],
        "negative seed": ["--model", m, "--seeds", "-1"],
        "empty seeds": ["--model", m, "--seeds", ""],
        "steps 0": ["--model", m, "--steps", 0],
        "nfe 0": ["--model", m, "--nfe", 0],
        "negative sigma": ["--model", m, "--sigma-min", -1],
        "guidance nan": ["--model", m, "--guidance", "nan"],
        "option nan": ["--model", m, "--sampler", "dpmpp_sde", "--r", "nan"],
        "degenerate option": ["--model", m, "--sampler", "dpmpp_sde", "--r", 0],
        "steps and nfe": ["--model", m, "--steps", 5, "--nfe", 9],
        "nfe on adaptive": ["--model", m, "--sampler", "dpm_adaptive", "--nfe", 20],
        "batch 0": ["--model", m, "--batch", 0],
        "class out of range": ["--model", m, "--class", CLASSES],
        "negative class": ["--model", m, "--class", -1],
        "class on unconditional": ["--model", u, "--class", 0],
        "guidance on unconditional": ["--model", u, "--guidance", 1.5],
        "option the sampler lacks": ["--model", m, "--sampler", "heun", "--eta", 0.5],
        "bad option value": ["--model", m, "--sampler", "euler_ancestral", "--eta", -1],
        "bad option choice": ["--model", m, "--sampler", "dpmpp_2m_sde", "--solver-type", "rk4"],
        "outdir under a file": ["--model", m, "--outdir", tmp / "afile" / "out"],
        "outdir is a file": ["--model", m, "--outdir", tmp / "afile"],
        "grid under a file": ["--model", m, "--grid", tmp / "afile" / "grid.png"],
        "unknown dtype": ["--model", m, "--dtype", "float8"],
        "unknown device": ["--model", m, "--device", "tpu"],
        **({} if torch.cuda.is_available() else {"cuda without a GPU": ["--model", m, "--device", "cuda"]}),
    }


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_bad_inputs(models, tmp_path):
    cases = bad_inputs(models, tmp_path)
    before = snapshot(tmp_path)
    failures = []
    for name, args in cases.items():
        if "--outdir" not in args:
            args = [*args, "--outdir", tmp_path / "out"]
        result = invoke(generate_cli.generate, "--no-progress", *args)
        errors = error_lines(result)
        if result.exit_code != 2 or len(errors) != 1 or "Traceback" in result.output:
            failures.append(f"{name}: exit {result.exit_code}: {result.output!r}")
        if snapshot(tmp_path) != before:
            failures.append(f"{name}: wrote {sorted(set(snapshot(tmp_path)) - set(before))}")
    assert not failures, "\n".join(failures)


def test_unwritable_outdir(tiny, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(common.os, "access",
                            lambda path, mode: Path(path) != locked and real_access(path, mode))
    try:
        result = generate("--model", tiny, "--outdir", locked / "out")
        assert result.exit_code == 2 and "Traceback" not in result.output
        expected = f"cannot write to {locked / 'out'}: {locked} is not writable"
        assert f"Error: Invalid value for '--outdir': {expected}" in result.output.splitlines()
        assert not (locked / "out").exists()
    finally:
        locked.chmod(0o700)


def test_api_errors_name_the_parameter(tiny, tmp_path):
    cases = [(dict(seeds="x"), "seeds"), (dict(sampler="nope"), "sampler"), (dict(steps=0), "steps"),
             (dict(nfe=-3), "nfe"), (dict(batch=0), "batch"), (dict(class_label=99), "class_label"),
             (dict(options={"eta": 1.0}), "options"), (dict(dtype="half"), "dtype"),
             (dict(guidance=float("inf")), "guidance"), (dict(model="nope"), "model")]
    for kwargs, param in cases:
        kwargs = {"model": tiny, "seeds": "0", **kwargs}
        with pytest.raises(pipeline.GenerateError) as info:
            plan_of(kwargs.pop("model"), kwargs.pop("seeds"), tmp_path / "out", **kwargs)
        assert info.value.param == param, (kwargs, str(info.value))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# Help and info


def test_help_lists_every_sampler_option():
    result = invoke(generate_cli.generate, "--help")
    assert result.exit_code == 0
    for name in samplers.list():
        for option in samplers.get(name).options:
            assert "--" + option.replace("_", "-") in result.output
    for section in ("Model:", "Sampling:", "Sampler options:", "Seeds and classes:", "Output:", "Device:"):
        assert section in result.output
    assert "Examples:" in result.output


def test_info(tiny):
    result = invoke(models_cli.info, tiny)
    assert result.exit_code == 0, result.output
    from edm.networks import build_network

    parameters = sum(p.numel() for p in build_network("unet", **NETWORK, num_classes=CLASSES).parameters())
    fields = dict(line.split(None, 1) if "  " not in line else [s.strip() for s in line.split("  ", 1)]
                  for line in result.output.splitlines())
    assert fields["kind"] == "checkpoint"
    assert fields["image shape"].startswith("1 x 8 x 8")
    assert fields["classes"].startswith("10 ")
    assert fields["sigma range"] == "0.002 .. 80"
    assert fields["parameters"] == f"{parameters:,}"
    assert fields["training command"] == "edm train --tiny (test fixture)"
    assert "EDM" in fields["preconditioning"] and "sigma_data=0.5" in fields["preconditioning"]

    import json

    record = json.loads(invoke(models_cli.info, tiny, "--json").output)
    assert record["shape"] == [1, 8, 8] and record["num_classes"] == 10 and record["parameters"] == parameters
    assert record["command"] == "edm train --tiny (test fixture)"

    result = invoke(models_cli.info, tiny + "-missing")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_default_model_smoke(tmp_path):
    out = ok("--seeds", "0-3", "--steps", 4, "--outdir", tmp_path, "--grid", tmp_path / "grid.png")
    assert out.startswith("4 images written")
    assert invoke(models_cli.info).exit_code == 0

"""Super-resolution sampling of our checkpoints: ``--low-res`` (one PNG or a folder of one per seed) and
``--noise-aug``, on a tiny 4x4 -> 8x8 model (``sr_models``, whose checkpoint records ``noise_aug`` 0.2).

The oracle recomputes a run from its parts: the checkpoint's network called directly, the low-res PNGs read
with PIL, the augmentation noise drawn from ``AUGMENT_STREAM`` and ``edm.conditions.low_res_condition``,
through ``samplers.sample``. Byte-identity checks run in float64 (see test_generate.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import samplers
from _support import assert_usage_error, invoke
from edm.checkpoint import load_checkpoint
from edm.conditions import low_res_condition
from samplers.noise import AUGMENT_STREAM, stream_seed
from tools.generate import cli as generate_cli
from tools.generate import generate, prepare_sampling
from tools.models import cli as models_cli
from tools.request import SamplingRequest

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = list(range(6))


@pytest.fixture(scope="module")
def low_res(sr_models, tmp_path_factory):
    """A folder of 1x4x4 PNGs, seeds 0-5, from the base model (as `edm generate` writes them)."""
    base, _ = sr_models
    folder = tmp_path_factory.mktemp("low-res")
    generate(base, SEEDS, folder, steps=3, progress=False)
    return folder


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def run(sr, low, outdir, seeds=SEEDS, **fields):
    fields = {"steps": 4, "sampler": "euler", "dtype": "float64", **fields}
    return generate(sr, seeds, outdir, progress=False, low_res=low, **fields)


def test_same_bytes_whatever_the_batch_and_position(sr_models, low_res, tmp_path):
    _, sr = sr_models
    run(sr, low_res, tmp_path / "one", batch=1, sampler="euler_ancestral")
    run(sr, low_res, tmp_path / "four", batch=4, sampler="euler_ancestral")
    run(sr, low_res, tmp_path / "reversed", seeds=SEEDS[::-1], batch=4, sampler="euler_ancestral")
    assert len(pngs(tmp_path / "one")) == len(SEEDS)
    assert pngs(tmp_path / "one") == pngs(tmp_path / "four") == pngs(tmp_path / "reversed")


def _oracle(sr, low_folder, seeds, level, sigmas) -> torch.Tensor:
    """The images recomputed from the parts (see the module doc)."""
    network = load_checkpoint(sr, dtype=torch.float64).denoiser
    low = np.stack([np.asarray(Image.open(low_folder / f"{seed:06d}.png")) for seed in seeds])
    low = torch.from_numpy(low).to(torch.float64)[:, None] / 127.5 - 1
    noise = torch.cat([torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(
        stream_seed(seed, AUGMENT_STREAM))) for seed in seeds]).to(torch.float64)
    cond = low_res_condition(low, 2, level, noise)
    latents = samplers.noise.latents(seeds, (1, 8, 8), dtype=torch.float64)
    with torch.no_grad():
        return samplers.sample(network, latents * sigmas[0], sigmas, "dpmpp_2m_sde", seeds=seeds, cond=cond)


@pytest.mark.parametrize("level", [None, 0.0, 0.5])
def test_images_equal_an_independent_recomputation(sr_models, low_res, level):
    _, sr = sr_models
    setup = prepare_sampling(SamplingRequest(model=sr, low_res=low_res, noise_aug=level,
                                             sampler="dpmpp_2m_sde", steps=5, dtype="float64"))
    expected = _oracle(sr, low_res, SEEDS[:3], 0.2 if level is None else level, setup.sigmas)
    with torch.no_grad():
        torch.testing.assert_close(setup.images(SEEDS[:3]), expected, rtol=0, atol=1e-10)
    assert setup.settings()["low_res"] == {"source": str(low_res.resolve()),
                                           "noise_aug": 0.2 if level is None else level}


def test_an_explicit_low_res_tensor_overrides_the_files(sr_models, low_res, tmp_path):
    _, sr = sr_models
    setup = prepare_sampling(SamplingRequest(model=sr, low_res=low_res, steps=3, dtype="float64"))
    flipped = -setup.low_res.images.for_seeds(SEEDS[:2], "cpu", torch.float64)
    Image.fromarray(((flipped[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()).save(tmp_path / "a.png")
    single = prepare_sampling(SamplingRequest(model=sr, low_res=tmp_path / "a.png", steps=3, dtype="float64"))
    with torch.no_grad():
        torch.testing.assert_close(setup.images([0], low_res=flipped[:1]), single.images([0]), rtol=0, atol=0)
        assert not torch.equal(setup.images([0]), single.images([0]))
    assert single.settings()["low_res"]["source"].startswith(f"{(tmp_path / 'a.png').resolve()} (sha256 ")


def test_noise_aug_default_is_the_recorded_level(sr_models, low_res, tmp_path):
    _, sr = sr_models
    run(sr, low_res, tmp_path / "default")
    run(sr, low_res, tmp_path / "same", noise_aug=0.2)
    run(sr, low_res, tmp_path / "clean", noise_aug=0)
    assert pngs(tmp_path / "default") == pngs(tmp_path / "same")
    record = json.loads((tmp_path / "clean" / "edm-generate.json").read_text())
    assert record["low_res"] == {"source": str(low_res.resolve()), "noise_aug": 0.0}

    def images(level):
        setup = prepare_sampling(SamplingRequest(model=sr, low_res=low_res, noise_aug=level, sampler="euler",
                                                 steps=4, dtype="float64"))
        with torch.no_grad():
            return setup.images(SEEDS)

    default, clean = images(None), images(0)
    assert torch.equal(default, images(0.2))
    assert (default - clean).abs().amax(dim=(1, 2, 3)).min() > 1e-6  # every seed's input was noised
    out = invoke(models_cli.info, str(sr)).output
    assert ("super-resolution: a 1x4x4 low-resolution image (--low-res), upsampled 2x; --noise-aug "
            "default 0.2") in out


def test_cli_low_res_run(sr_models, low_res, tmp_path):
    _, sr = sr_models
    result = invoke(generate_cli.generate, "--model", sr, "--low-res", low_res, "--noise-aug", 0.1,
                    "--steps", 3, "--seeds", "0-2", "--outdir", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(pngs(tmp_path)) == ["000000.png", "000001.png", "000002.png"]


def _bad_inputs(base, sr, low, tmp: Path):
    wrong_size = tmp / "big.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(wrong_size)
    wrong_mode = tmp / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(wrong_mode)
    return {
        "no low-res": (["--model", sr], ["super-resolution model", "--low-res PATH", "1x4x4"]),
        "low-res on a plain model": (["--model", base, "--low-res", low], ["not a super-resolution model"]),
        "noise-aug on a plain model": (["--model", base, "--noise-aug", 0.1], ["--noise-aug",
                                                                                "not a super-resolution"]),
        "other level flag": (["--model", sr, "--low-res", low, "--noise-level", 20], ["takes --noise-aug",
                                                                                       "not --noise-level"]),
        "negative level": (["--model", sr, "--low-res", low, "--noise-aug", -1], ["--noise-aug", ">= 0"]),
        "wrong size": (["--model", sr, "--low-res", wrong_size], [str(wrong_size), "1x8x8", "are 1x4x4"]),
        "wrong mode": (["--model", sr, "--low-res", wrong_mode], [str(wrong_mode), "3x4x4", "are 1x4x4"]),
        "missing file": (["--model", sr, "--low-res", tmp / "nope.png"], ["nope.png", "does not exist"]),
        "missing seed": (["--model", sr, "--low-res", low, "--seeds", "5-7"], ["no low-res image for seed 6",
                                                                               "000006.png"]),
    }


@pytest.mark.parametrize("case", ["no low-res", "low-res on a plain model", "noise-aug on a plain model",
                                  "other level flag", "negative level", "wrong size", "wrong mode",
                                  "missing file", "missing seed"])
def test_bad_inputs_are_one_line_usage_errors_and_write_nothing(sr_models, low_res, tmp_path, case):
    base, sr = sr_models
    args, fragments = _bad_inputs(base, sr, low_res, tmp_path)[case]
    outdir = tmp_path / "out"
    result = invoke(generate_cli.generate, *args, "--steps", 2, "--outdir", outdir, "--no-progress")
    assert_usage_error(result, *fragments)
    assert not outdir.exists()

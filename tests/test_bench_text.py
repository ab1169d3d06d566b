"""``edm bench`` on a text-to-image latent model (a tiny random-weight Stable Diffusion pipeline from
``pipelines_tiny``): each seed gets its prompt as in ``edm generate``, CFG's negative is the negative
prompt, the guidance defaults to the pipeline's, and fd scores the decoded images, i.e. exactly the images
``edm generate`` writes. Nothing touches the network (``HF_HUB_OFFLINE``).

The FD checks use a small detector object (pooled pixels) and random reference statistics, through the
library API, which takes a loaded detector: the shipped digits detector takes only 1x8x8 images and the
Inception weights are not on a test machine. The command line is checked with ``--metrics time``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _support import error_lines, invoke, plan_of
from tools import cli
from tools.compare import BenchError, run_bench
from tools.compare.runner import BenchRequest, prepare_bench
from tools.fid.detectors import Detector
from tools.images import to_uint8
from tools.request import Prompting

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

PROMPTS = ("a red bicycle", "a blue car", "sunset over the sea")
NEGATIVE = "blurry"
SEEDS = [3, 7, 11, 12]  # not 0..N-1: the k-th seed of the list gets prompt k


@pytest.fixture(scope="module")
def sd(tiny_pipeline, tmp_path_factory):
    """A saved tiny SD 1.x pipeline (16x16 images, 4x8x8 latents) and a prompts file."""
    root = tmp_path_factory.mktemp("sd")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")  # a blank line is skipped
    return tiny_pipeline("sd"), prompts


@pytest.fixture(scope="module")
def model(sd):
    """The pipeline loaded once (float32, CPU), as ``edm generate`` loads ``diffusers:DIR``."""
    from tools.models.pipelines import load_pipeline

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return load_pipeline(sd[0], device="cpu", dtype=torch.float32)


class Pooled(Detector):
    """A cheap detector: 4x4 average-pooled pixels (48 features of a 3x16x16 image); records its input."""

    name = "pooled"
    dim = 48

    def __init__(self):
        super().__init__("cpu")
        self.seen: list[torch.Tensor] = []

    def _features(self, images):
        if images.shape[0] > 1 or images.any():  # not the blank check batch of the FID library
            self.seen.append(images.cpu())
        return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)


def reference() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(48, 48)) * 0.05
    return rng.uniform(0.3, 0.7, 48), a @ a.T + 1e-3 * np.eye(48)


def generate_images(model, sampler: str, steps: int, prompt: str, seeds, outdir, **kwargs) -> torch.Tensor:
    """``edm generate``'s images of ``seeds``, all with ``prompt`` (its plan, as the command builds it;
    nothing is written)."""
    plan = plan_of(model, list(seeds), outdir, sampler=sampler, steps=steps, device="cpu",
                   prompting=Prompting(prompt=prompt, negative_prompt=NEGATIVE), **kwargs)
    return plan.sampling.images(list(seeds))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.slow
def test_fd_images_are_edm_generates_images(model, sd, sampler, tmp_path):
    """The images one cell scores are, seed by seed, those ``edm generate`` writes with the same sampler,
    schedule, steps, seed, prompt, negative prompt and (default) guidance: the latents decoded."""
    _, prompts = sd
    detector = Pooled()
    text = Prompting(prompts=str(prompts), negative_prompt=NEGATIVE)
    bench = prepare_bench(BenchRequest.of(model, samplers=sampler, nfe=[3], metrics="fd", seeds=SEEDS,
                                          batch=3, device="cpu", detector=detector, ref=reference(),
                                          prompting=text))
    (cell,) = bench.run()
    assert cell["status"] == "ok" and cell["detector"] == "pooled" and math.isfinite(cell["fd"])
    ours = torch.cat(detector.seen)  # uint8 NCHW, batches of 3 then 1
    assert ours.shape == (len(SEEDS), 3, 16, 16)
    assert bench.settings["guidance"] == model.default_guidance  # the pipeline's default (6.5)
    for k, seed in enumerate(SEEDS):  # the k-th seed gets prompt k, cycling
        theirs = generate_images(model, sampler, cell["steps"], PROMPTS[k % len(PROMPTS)], [seed], tmp_path)
        assert theirs.shape == (1, 3, 16, 16)  # pixels, not latents
        expected = torch.from_numpy(to_uint8(theirs)).permute(0, 3, 1, 2)
        assert (ours[k].int() - expected[0].int()).abs().max().item() <= 1  # float32 batch round-off
    assert (ours[0] != ours[1]).any()  # other seeds, other prompts


def test_guidance_and_negative_prompt_are_generates(model, tmp_path):
    """An explicit --guidance and the negative prompt reach the cell as in ``edm generate``."""
    detector = Pooled()
    run_bench(model, samplers="euler", nfe=[2], metrics="fd", seeds=SEEDS[:2], guidance=1.5, device="cpu",
              detector=detector, ref=reference(),
              prompting=Prompting(prompt=PROMPTS[0], negative_prompt=NEGATIVE))
    ours = torch.cat(detector.seen)
    theirs = generate_images(model, "euler", 2, PROMPTS[0], SEEDS[:2], tmp_path, guidance=1.5)
    expected = torch.from_numpy(to_uint8(theirs)).permute(0, 3, 1, 2)
    assert (ours.int() - expected.int()).abs().max().item() <= 1
    default = generate_images(model, "euler", 2, PROMPTS[0], SEEDS[:2], tmp_path)  # w 6.5: other images
    assert (torch.from_numpy(to_uint8(default)).permute(0, 3, 1, 2) != ours).any()


def test_ode_metric_is_in_latent_space(model):
    """ode compares latents (the decoder is not involved); one cheap cell on one seed."""
    bench = prepare_bench(BenchRequest.of(model, samplers="euler", nfe=[2], metrics="ode", seeds=[0, 1],
                                          ode_num=1, guidance=0.0, device="cpu",
                                          prompting=Prompting(prompt=PROMPTS[0])))
    assert bench.settings["shape"] == [4, 8, 8] and bench.settings["image_shape"] == [3, 16, 16]
    assert bench.settings["guidance"] is None and bench.settings["text"]["prompts"] == [PROMPTS[0]]


def test_a_text_model_needs_a_prompt(model):
    with pytest.raises(BenchError, match="--prompt") as info:
        prepare_bench(BenchRequest.of(model, samplers="euler", nfe=[2], metrics="time", num=1, device="cpu"))
    assert info.value.param == "prompt"


def test_the_diffusers_schedule_is_refused():
    from edm.gaussian_mixture import GaussianMixture

    gm = GaussianMixture.random((1, 4, 4), k=2, seed=0, dtype=torch.float64)
    with pytest.raises(BenchError, match="--schedule diffusers") as info:
        run_bench(gm, shape=(1, 4, 4), sigma_min=0.01, sigma_max=20.0, samplers="euler",
                  schedules="diffusers", nfe=[2], metrics="time", num=1, device="cpu")
    assert info.value.param == "schedules"


# ---------------------------------------------------------------------------------------------------
# The command


def bench_args(pipe, out, *more):
    return ["bench", "--model", f"diffusers:{pipe}", "--out", str(out), "--metrics", "time", "--nfe", "2",
            "--sampler", "euler,dpmpp_2m", "--num", "3", "--device", "cpu", "--no-progress", *more]


@pytest.mark.slow
def test_command_takes_the_text_flags_and_resumes_only_the_same_prompts(sd, tmp_path):
    pipe, prompts = sd
    out = tmp_path / "out"
    args = bench_args(pipe, out, "--prompts", str(prompts), "--negative-prompt", NEGATIVE,
                      "--width", "16", "--height", "16")
    result = invoke(cli.main, *args)
    assert result.exit_code == 0, result.output
    assert "2 cells (2 computed" in result.output
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["text"] == {"prompts": list(PROMPTS), "height": 16, "width": 16,
                                "negative_prompt": NEGATIVE}
    assert settings["shape"] == [4, 8, 8] and settings["image_shape"] == [3, 16, 16]
    assert settings["guidance"] == 6.5  # the pipeline's default guidance_scale 7.5, as w

    again = invoke(cli.main, *args)  # the same settings: nothing to compute
    assert again.exit_code == 0, again.output
    assert "0 computed, 2 already done" in again.output

    other = invoke(cli.main, *bench_args(pipe, out, "--prompt", "a cat"))
    assert other.exit_code == 2
    assert "other settings" in other.output and "text" in other.output


def test_command_without_a_prompt_fails_in_one_line(sd, tmp_path):
    pipe, _ = sd
    result = invoke(cli.main, *bench_args(pipe, tmp_path / "out"))
    assert result.exit_code == 2
    error = error_lines(result)
    assert len(error) == 1 and "--prompt" in error[0], result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_prompt_flags_are_refused_for_a_class_model_and_by_tune_schedule(tmp_path):
    result = invoke(cli.main, "bench", "--out", str(tmp_path / "out"), "--prompt", "a cat",
                    "--metrics", "time", "--nfe", "2", "--sampler", "euler", "--num",
                    "1", "--device", "cpu", "--no-progress")
    assert result.exit_code == 2 and "--prompt" in result.output and "takes no text" in result.output
    result = invoke(cli.main, "tune-schedule", "--sampler", "euler", "--nfe", "3", "--prompt",
                    "x", "--out", str(tmp_path / "t.json"))
    assert result.exit_code == 2 and "does not take --prompt" in result.output

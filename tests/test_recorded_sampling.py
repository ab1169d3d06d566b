"""A checkpoint's recorded sampling default (``config["sampling"]``: a distilled student's sampler, steps
and schedule) and a network that takes the guidance weight as an input (``guidance_embed``): what runs
when flags are left out, what flags override, and the weight reaching the network in one evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _support import assert_usage_error, invoke
from tools.generate.cli import generate
from tools.generate.sampling import prepare_sampling
from tools.models.cli import info
from tools.request import SamplingRequest
from tools.steering import Steering

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD = {"sampler": "euler", "steps": 2, "schedule": "karras", "sigma_min": 0.5, "sigma_max": 80, "rho": 7}


def _digits_copy(tmp_path, sampling: dict):
    """The shipped digits checkpoint under tmp_path, its config given ``sampling``."""
    import edm

    src = edm.__file__.rsplit("/", 1)[0] + "/weights/digits"
    folder = tmp_path / "student"
    folder.mkdir()
    shutil.copy(src + ".safetensors", folder / "digits.safetensors")
    config = json.loads(open(src + ".json").read())
    config["sampling"] = sampling
    (folder / "digits.json").write_text(json.dumps(config))
    return folder


def _images(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def _run(tmp_path, name, *args):
    out = tmp_path / name
    result = invoke(generate, "--outdir", out, "--seeds", "0-2", "--no-progress", *args)
    assert result.exit_code == 0, result.output
    return _images(out), json.loads((out / "edm-generate.json").read_text())


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return _digits_copy(tmp_path_factory.mktemp("recorded"), RECORD)


def test_the_recorded_default_runs_as_the_explicit_flags_do(student, tmp_path):
    recorded, record = _run(tmp_path, "recorded", "--model", student)
    explicit, _ = _run(tmp_path, "explicit", "--model", "digits", "--sampler", "euler", "--steps", 2,
                       "--schedule", "karras", "--sigma-min", 0.5, "--sigma-max", 80, "--rho", 7)
    assert len(recorded) == 3
    assert all((a == b).all() for a, b in zip(recorded, explicit, strict=True))
    settings = record.get("settings", record)
    assert settings["sampler"] == "euler" and settings["steps"] == 2
    assert settings["sigmas"][0] == pytest.approx(80) and settings["sigmas"][-2] == pytest.approx(0.5)


def test_flags_override_the_recorded_default(student):
    setup = prepare_sampling(SamplingRequest(model=str(student), sampler="heun", steps=3, device="cpu"))
    assert (setup.sampler, setup.steps) == ("heun", 3)
    # the recorded range and schedule still apply to another sampler; its steps do not
    assert float(setup.sigmas[0]) == pytest.approx(80) and float(setup.sigmas[-2]) == pytest.approx(0.5)
    other = prepare_sampling(SamplingRequest(model=str(student), sampler="dpmpp_2m", device="cpu"))
    assert other.steps == 18
    nfe = prepare_sampling(SamplingRequest(model=str(student), nfe=4, device="cpu"))
    assert (nfe.sampler, nfe.steps) == ("euler", 4)
    ranged = prepare_sampling(SamplingRequest(model=str(student), sigma_max=10.0, device="cpu"))
    assert float(ranged.sigmas[0]) == pytest.approx(10) and ranged.steps == 2


def test_a_distilled_students_record_runs_on_its_own_levels(tmp_path):
    from edm.distill import student_levels, student_sampling

    record = student_sampling(4, 0.002, 80.0, 7.0)
    setup = prepare_sampling(SamplingRequest(model=str(_digits_copy(tmp_path, record)), device="cpu"))
    assert (setup.sampler, setup.steps) == ("euler", 4)
    torch.testing.assert_close(setup.sigmas[:-1], student_levels(4, 0.002, 80.0, 7.0)[:4].to(setup.sigmas))


def test_models_without_a_record_keep_heun_18_karras():
    setup = prepare_sampling(SamplingRequest(model="digits", device="cpu"))
    assert (setup.sampler, setup.steps, setup.schedule) == ("heun", 18, "karras")
    euler = prepare_sampling(SamplingRequest(model="digits", sampler="euler", device="cpu"))
    assert (euler.sampler, euler.steps) == ("euler", 18)


def test_info_shows_the_recorded_default(student):
    result = invoke(info, student)
    assert result.exit_code == 0, result.output
    assert "sampling default  euler, 2 steps, karras sigma 0.5...80 rho 7" in result.output


def test_a_malformed_record_is_one_error_line(tmp_path):
    folder = _digits_copy(tmp_path, {"sampler": "euler", "steps": "two"})
    result = invoke(generate, "--outdir", tmp_path / "out", "--model", folder, "--no-progress")
    assert_usage_error(result, "sampling.steps")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# The guidance weight as a network input


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    """A digits network with a guidance embedding (random, so that w matters), saved as a checkpoint."""
    from edm.checkpoint import load_checkpoint, save_checkpoint
    from edm.networks import build_network

    folder = _digits_copy(tmp_path_factory.mktemp("weighted"), {"guidance": 1.5, "guidance_range": [0, 3]})
    config = json.loads((folder / "digits.json").read_text())
    config["network"]["kwargs"]["guidance_embed"] = True
    net = build_network(config["network"]["name"], **config["network"]["kwargs"])
    state = load_checkpoint(folder / "digits").denoiser.backbone.state_dict()
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["map_guidance.bias", "map_guidance.weight"]
    torch.manual_seed(0)
    torch.nn.init.normal_(net.map_guidance.weight, std=0.5)
    torch.nn.init.normal_(net.map_guidance.bias, std=0.5)
    for path in folder.iterdir():
        path.unlink()
    save_checkpoint(folder / "student", net, config)
    return folder


def _hand_euler(stem, setup, seeds, w):
    """Euler on the setup's sigmas, calling the checkpoint's Precond itself with ``guidance=w``."""
    from edm.checkpoint import load_checkpoint
    from samplers.noise import latents

    precond = load_checkpoint(stem).denoiser
    sigmas = setup.sigmas.to(torch.float32)
    x = latents(seeds, setup.model.shape) * sigmas[0]
    labels = torch.nn.functional.one_hot(torch.full((len(seeds),), setup.class_label), 10).float()
    with torch.no_grad():
        for s, t in zip(sigmas[:-1], sigmas[1:], strict=True):
            d = precond(x, s.expand(len(seeds)), class_labels=labels,
                        guidance=torch.full((len(seeds),), float(w)))
            x = x + (t - s) * (x - d) / s
    return x


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_the_weight_reaches_the_network_in_one_evaluation(weighted, w):
    setup = prepare_sampling(SamplingRequest(model=str(weighted), sampler="euler", steps=4, class_label=3,
                                             guidance=w, device="cpu"))
    assert setup.evaluations == setup.nfe == 4  # one network pass per step: no classifier-free guidance
    ours = setup.sample([5, 9])
    assert torch.allclose(ours, _hand_euler(weighted / "student", setup, [5, 9], w), atol=1e-5)
    alone = setup.sample([9])
    assert torch.allclose(alone[0], ours[1], atol=1e-6)


def test_the_weight_changes_the_image_and_defaults_to_the_recorded_one(weighted):
    def sample(w):
        return prepare_sampling(SamplingRequest(model=str(weighted), sampler="euler", steps=4, class_label=3,
                                                guidance=w, device="cpu")).sample([1])

    assert not torch.allclose(sample(0.0), sample(2.5), atol=1e-3)
    default = prepare_sampling(SamplingRequest(model=str(weighted), steps=2, device="cpu"))
    assert default.guidance == 1.5
    assert default.settings()["guidance_input"] is True and "(a network input)" in default.describe()


@pytest.mark.parametrize(("flags", "named"), [
    (("--guidance-interval", "0.3,5"), "--guidance-interval"),
    (("--guidance-rescale", "0.5"), "--guidance-rescale"),
    (("--cfg-pp",), "--cfg-pp"),
    (("--negative-class", "2"), "--negative-class"),
    (("--guide-model", "digits-weak"), "--guide-model"),
])
def test_flags_of_two_evaluation_guidance_are_refused(weighted, tmp_path, flags, named):
    result = invoke(generate, "--outdir", tmp_path / "out", "--model", weighted, "--guidance", 1,
                    "--no-progress", *flags)
    assert_usage_error(result, named, "takes the guidance weight as an input")
    assert not (tmp_path / "out").exists()


def test_a_weight_outside_the_trained_range_warns(weighted, tmp_path):
    result = invoke(generate, "--outdir", tmp_path / "out", "--model", weighted, "--guidance", 5,
                    "--seeds", 0, "--steps", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "outside the weights" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")


def test_info_says_the_model_takes_the_weight(weighted):
    result = invoke(info, weighted)
    assert result.exit_code == 0, result.output
    assert "takes the guidance weight w as an input" in result.output


def test_the_steering_value_is_accepted_as_well(weighted):
    # the API's Steering with nothing of CFG in it is fine
    setup = prepare_sampling(SamplingRequest(model=str(weighted), steps=2, guidance=1.0, device="cpu",
                                             steering=Steering()))
    assert setup.steer.evaluations_per_call == 1

"""The Diffusion Transformer backbone: shapes, adaLN-Zero, patches, positions, sampling through Precond."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edm
import samplers
from _support import error_lines, invoke
from edm import Precond
from edm.dit import DiT, patchify, sincos_2d, unpatchify
from edm.networks import build_network

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 2, "width": 32, "heads": 2}


def _onehot(labels, num_classes=10):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).float()


def _randomize(net, seed=1):
    """A fresh DiT outputs exactly 0 (adaLN-Zero); give every weight a seeded perturbation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def _zero_init_layers(net):
    return [b.adaLN for b in net.blocks] + [net.final.adaLN, net.final.linear]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("patch", [2, 4])
def test_output_has_the_input_shape(channels, patch):
    torch.manual_seed(0)
    net = DiT(in_channels=channels, resolution=8, patch_size=patch, num_classes=10, **TINY)
    x = torch.randn(2, channels, 8, 8)
    assert net(x, torch.tensor([-1.0, 0.5]), _onehot([3, 7])).shape == x.shape
    out = _randomize(net)(x, torch.tensor(0.3))  # a scalar noise label, no class: unconditional
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_out_channels_and_registry():
    net = build_network("dit", in_channels=3, out_channels=6, resolution=8, **TINY)
    assert isinstance(net, DiT)
    assert _randomize(net)(torch.randn(1, 3, 8, 8), torch.zeros(1)).shape == (1, 6, 8, 8)


def test_adaln_zero_outputs_zero_and_gradients_reach_the_zero_layers():
    torch.manual_seed(0)
    net = DiT(in_channels=1, resolution=8, num_classes=10, **TINY)
    x, noise, labels = torch.randn(4, 1, 8, 8), torch.randn(4), _onehot([0, 1, 2, 3])
    out = net(x, noise, labels)
    assert torch.count_nonzero(out) == 0
    (out - x).square().sum().backward()
    # At init only the final linear sees a gradient (everything else is behind its zero weights) ...
    assert net.final.linear.weight.grad.abs().sum() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    net.zero_grad()
    (net(x, noise, labels) - x).square().sum().backward()
    # ... and after one step the gradient flows into every zero-initialised modulation.
    for layer in _zero_init_layers(net):
        assert layer.weight.grad.abs().sum() > 0


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    assert torch.equal(unpatchify(tokens, 4, 3, 8, 12), x)
    # token 1 is the patch in the first patch row, second patch column (row-major order)
    assert torch.equal(tokens[:, 1].reshape(2, 4, 4, 3).permute(0, 3, 1, 2), x[:, :, 0:4, 4:8])


def test_positions_are_distinguishable():
    pos = sincos_2d(4, 4, 32)
    assert pos.shape == (16, 32)
    distances = torch.cdist(pos, pos) + torch.eye(16)
    assert distances.min() > 1e-3  # every patch position has its own vector
    # so the same patch content at two positions gives two different outputs
    torch.manual_seed(0)
    net = _randomize(DiT(in_channels=1, resolution=8, patch_size=2, **TINY))
    x = torch.zeros(1, 1, 8, 8)
    a, b = x.clone(), x.clone()
    a[..., 0:2, 0:2] = 1.0
    b[..., 4:6, 4:6] = 1.0
    out_a, out_b = net(a, torch.zeros(1)), net(b, torch.zeros(1))
    assert not torch.allclose(out_a[..., 0:2, 0:2], out_b[..., 4:6, 4:6])


def test_class_label_changes_the_output():
    torch.manual_seed(0)
    net = DiT(in_channels=1, resolution=8, num_classes=10, **TINY)
    x, noise = torch.randn(2, 1, 8, 8), torch.zeros(2)
    assert torch.equal(net(x, noise, _onehot([1, 1])), net(x, noise, _onehot([2, 2])))  # both zero at init
    _randomize(net)
    assert not torch.allclose(net(x, noise, _onehot([1, 1])), net(x, noise, _onehot([2, 2])))
    with pytest.raises(ValueError, match="one-hot"):
        net(x, noise, _onehot([1, 2], 5))


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "euler_ancestral"])
def test_samplers_run_on_a_preconditioned_dit(sampler):
    torch.manual_seed(0)
    denoiser = Precond(_randomize(DiT(in_channels=1, resolution=8, num_classes=10, **TINY)).eval())
    seeds = [0, 1, 2]
    sigmas = samplers.schedules.get("karras")(5, 0.002, 80.0)
    x = samplers.noise.latents(seeds, (1, 8, 8)) * sigmas[0]
    with torch.no_grad():
        cond = {"class_labels": _onehot([0, 1, 2])}
        out = samplers.sample(denoiser, x, sigmas, sampler, seeds=seeds, cond=cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_fresh_dit_denoises_to_c_skip_x():
    denoiser = Precond(DiT(in_channels=1, resolution=8, **TINY))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0])
    expected = denoiser.scheme.c_skip(sigma).reshape(-1, 1, 1, 1) * x
    assert torch.equal(denoiser(x, sigma), expected)


@pytest.mark.parametrize("patch", [3, 0])
def test_bad_patch_size_is_a_one_line_value_error(patch):
    with pytest.raises(ValueError, match="patch_size") as info:
        DiT(in_channels=1, resolution=8, patch_size=patch, **TINY)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# edm train --arch dit, and the checkpoint it writes


DIT_FLAGS = ["--arch", "dit", "--steps", "3", "--batch", "8", "--width", "32", "--depth", "1", "--heads", "2",
             "--patch", "2", "--no-progress"]


def test_cli_trains_a_dit_that_generate_samples_and_resume_continues(tmp_path):
    from PIL import Image

    from tools.generate import cli as generate_cli
    from tools.train_cli import train as train_command

    run = tmp_path / "run"
    result = invoke(train_command, "--data", "digits", "--outdir", run, *DIT_FLAGS)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "network.json").read_text())
    assert config["network"]["name"] == "dit"
    assert config["network"]["kwargs"] == {"in_channels": 1, "out_channels": 1, "resolution": 8,
                                           "num_classes": 10, "patch_size": 2, "depth": 1, "width": 32,
                                           "heads": 2, "label_dropout": 0.1}
    assert "--arch dit" in config["command"] and "--channels" not in config["command"]

    out = tmp_path / "images"
    result = invoke(generate_cli.generate, "--no-progress", "--device", "cpu",
                    "--model", run / "network.json", "--outdir", out, "--seeds", "0-2", "--steps", "3",
                    "--sampler", "heun")
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and all(Image.open(p).size == (8, 8) for p in pngs)

    result = invoke(train_command, "--resume", run, "--steps", "4", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "network.json").read_text())["training"]["step"] == 4


@pytest.mark.parametrize("args, flag", [(["--arch", "dit", "--channels", "8"], "--channels"),
                                        (["--arch", "dit", "--channel-mult", "1"], "--channel-mult"),
                                        (["--patch", "2"], "--patch"),
                                        (["--arch", "unet", "--width", "32"], "--width")])
def test_cli_refuses_the_other_architectures_flags(tmp_path, args, flag):
    from tools.train_cli import train as train_command

    result = invoke(train_command, "--outdir", tmp_path / "run", "--steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert [line.startswith(f"Error: {flag} ") for line in error_lines(result)] == [True]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sizes, named", [
    (["--patch", "3", "--width", "32", "--heads", "2"], "by --patch 3"),
    (["--width", "30"], "(--width 30, --heads 4)"),
    (["--width", "32", "--heads", "3"], "(--width 32, --heads 3)"),
])
def test_cli_bad_sizes_are_usage_errors_naming_the_flags(tmp_path, sizes, named):
    from tools.train_cli import train as train_command

    result = invoke(train_command, "--outdir", tmp_path / "run", "--steps", "1", "--arch", "dit", *sizes,
                    "--no-progress")
    assert result.exit_code == 2 and named in result.output, result.output
    assert "patch_size" not in result.output
    assert len(error_lines(result)) == 1 and not (tmp_path / "run").exists()


def test_checkpoints_without_a_dit_load_as_before():
    from edm.checkpoint import load_checkpoint
    from tools.models.checkpoint import builtin_path

    assert load_checkpoint(builtin_path("digits")).config["network"]["name"] == "unet"


# ---------------------------------------------------------------------------------------------------
# The embedded class-conditional DiT, digits-dit


def test_shipped_digits_dit_is_documented_and_matches_digits_budget():
    """digits-dit was trained by `edm train --arch dit` on the same data, batch and EMA as digits, to the end
    of its recorded length."""
    weights = Path(edm.__file__).parent / "weights"
    dit_config, unet_config = (json.loads((weights / f"{name}.json").read_text())
                               for name in ("digits-dit", "digits"))
    assert dit_config["command"].startswith("edm train --data digits ")
    assert "--arch dit" in dit_config["command"]
    assert dit_config["network"]["name"] == "dit" and dit_config["data"] == unet_config["data"]
    for key in ("batch", "ema_halflife_kimg", "sigma_data", "seed"):
        assert dit_config["training"][key] == unet_config["training"][key], key
    assert dit_config["training"]["step"] == dit_config["training"]["total_steps"]
    assert f"--steps {dit_config['training']['step']} " in dit_config["command"]
    size = sum((weights / f"digits-dit.{suffix}").stat().st_size for suffix in ("json", "safetensors"))
    assert size < 5_000_000


@pytest.mark.slow
def test_shipped_digits_dit_samples_have_the_requested_class():
    """500 samples (50 per class, heun 18 steps, no guidance) classified by an SVM fitted on the real digits;
    bench/results/digits_dit.md measures the same on 2000 seeds."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    from tools.models import load_model

    digits = load_digits()
    classifier = SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target)
    model = load_model("digits-dit")
    seeds = list(range(500))
    classes = torch.tensor([s // 50 for s in seeds])
    sigmas = samplers.schedules.get("karras")(18, model.sigma_min, model.sigma_max, rho=7.0)
    x = samplers.noise.latents(seeds, model.shape) * sigmas[0]
    with torch.no_grad():
        images = samplers.sample(model.denoiser, x, sigmas, "heun", seeds=seeds,
                                 cond={"class_labels": torch.nn.functional.one_hot(classes, 10).float()})
    pixels = ((images.double() + 1.0) * 8.0).clamp(0, 16).flatten(1).numpy()
    accuracy = float((classifier.predict(pixels) == classes.numpy()).mean())
    assert accuracy >= 0.93, accuracy


def test_a_resumed_run_records_its_own_recipe_which_retrains_it_bit_for_bit(tmp_path):
    """`--resume RUN --steps N` records the run's command with --steps N (not the resuming line, whose
    unset flags are the defaults of another network), and that command trains the same weights."""
    from safetensors.torch import load_file

    from tools.train_cli import train as train_command

    run, fresh = tmp_path / "run", tmp_path / "fresh"
    assert invoke(train_command, "--data", "digits", "--outdir", run, *DIT_FLAGS).exit_code == 0
    first = json.loads((run / "network.json").read_text())["command"]
    result = invoke(train_command, "--resume", run, "--steps", "5", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "network.json").read_text())["command"]
    assert recorded == first.replace("--steps 3", "--steps 5") and "--arch dit" in recorded
    args = recorded.split()[2:]
    args[args.index("--outdir") + 1] = str(fresh)
    assert invoke(train_command, *args, "--no-progress").exit_code == 0
    a, b = (load_file(folder / "network.safetensors") for folder in (run, fresh))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

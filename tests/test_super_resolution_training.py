"""Training super-resolution models (``edm train --cond low-res --factor F``): the digits split the SR
models keep, the low-resolution condition and its noise augmentation, the second noise-level embedding,
and whole runs (checkpoint record, bit-exact resume, 2 processes = 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from _support import invoke
from edm import dit  # noqa: F401  (registers the DiT)
from edm.conditions import (
    AUGMENT_FLOOR,
    NoiseAugmentation,
    augment_label,
    batch_condition,
    check_kind,
    downsample,
    low_res_condition,
    upsample,
)
from edm.data import DIGITS_TRAIN, load_dataset, load_digits
from edm.networks import build_network
from edm.train import load_training_state, train
from tools.train_cli import DATA_NAMES
from tools.train_cli import train as train_command

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}


# ---------------------------------------------------------------------------------------------------
# The split and the low-resolution images


def test_the_split_keeps_index_order_and_the_held_out_digits_apart():
    digits = load_digits()
    train_set, held_out = load_dataset("digits-train"), load_dataset("digits-held-out")
    assert len(train_set) == DIGITS_TRAIN == 1400 and len(held_out) == 1797 - 1400
    assert torch.equal(torch.cat([train_set.images, held_out.images]), digits.images)
    assert torch.equal(torch.cat([train_set.labels, held_out.labels]), digits.labels)
    small = load_dataset("digits-4x4-held-out")
    assert small.shape == (1, 4, 4) and torch.equal(small.labels, held_out.labels)
    # each 4x4 pixel is the mean of its 2x2 block of the 8x8 digit
    block = held_out.images[5, 0, 2:4, 6:8].mean()
    assert math.isclose(float(small.images[5, 0, 1, 3]), float(block), abs_tol=1e-6)


def test_the_named_datasets_of_the_cli_are_the_library_ones():
    import edm.train  # noqa: F401  (registers digits-text)
    from edm.data import named_datasets

    assert tuple(named_datasets()) == DATA_NAMES


def test_nearest_upsampling_is_a_right_inverse_of_average_pooling():
    low = torch.randn(3, 2, 4, 5)
    assert torch.equal(downsample(upsample(low, 2), 2), low)  # a mean of 4 equal floats is exact
    torch.testing.assert_close(downsample(upsample(low, 3), 3), low, rtol=1e-6, atol=1e-7)
    assert upsample(low, 2).shape == (3, 2, 8, 10)


def test_the_condition_is_the_noised_low_res_image_upsampled_and_the_level_label():
    low, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    cond = low_res_condition(low, 2, torch.tensor([0.0, 0.5]), noise)
    assert torch.equal(cond["cond_image"][0], upsample(low, 2)[0])  # sigma_aug 0: the clean image
    torch.testing.assert_close(cond["cond_image"][1], upsample(low + 0.5 * noise, 2)[1])
    labels = torch.tensor([math.log(AUGMENT_FLOOR), math.log(0.5)]) / 4
    torch.testing.assert_close(cond["augment_labels"], labels)
    one = low_res_condition(low, 2, 0.3, noise)  # one level for the batch
    assert one["augment_labels"].shape == (2,) and torch.allclose(one["augment_labels"], augment_label(0.3))


def test_noise_augmentation_draws_clean_inputs_and_log_uniform_levels():
    levels = NoiseAugmentation(high=2.0, low=0.01, zero=0.25).draw(40_000, torch.Generator().manual_seed(0))
    clean = levels == 0
    assert abs(float(clean.float().mean()) - 0.25) < 0.01
    logs = levels[~clean].log()
    assert float(levels.max()) <= 2.0 and float(levels[~clean].min()) >= 0.01
    # log-uniform: ln sigma uniform on [ln 0.01, ln 2], mean at the midpoint, variance width^2 / 12
    width = math.log(2.0) - math.log(0.01)
    assert abs(float(logs.mean()) - (math.log(0.01) + width / 2)) < 0.03
    assert abs(float(logs.var()) - width ** 2 / 12) < 0.05
    with pytest.raises(ValueError, match="0 < low < high"):
        NoiseAugmentation(high=0.01, low=0.1)


def test_a_minibatch_of_low_res_training_is_its_images_pooled_and_noised():
    data = load_dataset("digits-train")
    gen = torch.Generator().manual_seed(3)
    images, cond = batch_condition(data, "low-res", 16, gen, factor=2,
                                   augmentation=NoiseAugmentation(zero=1.0))
    assert set(cond) == {"cond_image", "augment_labels"}
    assert torch.equal(cond["cond_image"], upsample(downsample(images, 2), 2))  # zero = 1: all clean
    images, cond = batch_condition(data, "low-res", 16, torch.Generator().manual_seed(3), factor=2,
                                   augmentation=NoiseAugmentation(zero=0.0))
    assert not torch.equal(cond["cond_image"], upsample(downsample(images, 2), 2))
    assert bool((cond["augment_labels"] > math.log(AUGMENT_FLOOR) / 4).all())


@pytest.mark.parametrize("kind, factor, message", [
    ("low-res", None, "factor >= 2"),
    ("low-res", 3, "not divisible by factor 3"),
    ("class", 2, "factor applies to conditioning 'low-res' only"),
])
def test_kind_checks(kind, factor, message):
    with pytest.raises(ValueError, match=message):
        check_kind(load_dataset("digits"), kind, factor)


# ---------------------------------------------------------------------------------------------------
# The second noise-level embedding


@pytest.mark.parametrize("arch, kwargs", [("unet", TINY), ("dit", {"patch_size": 2, "depth": 1, "width": 16,
                                                                   "heads": 2})])
def test_the_augmentation_level_reaches_the_output_and_is_required(arch, kwargs):
    torch.manual_seed(0)
    net = build_network(arch, in_channels=1, resolution=8, cond_channels=1, noise_aug=True, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    x, image = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    a = net(x, torch.zeros(2), cond_image=image, augment_labels=torch.full((2,), -1.0))
    b = net(x, torch.zeros(2), cond_image=image, augment_labels=torch.full((2,), 0.0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="takes augment_labels"):
        net(x, torch.zeros(2), cond_image=image)
    plain = build_network(arch, in_channels=1, resolution=8, **kwargs)
    assert not any("augment" in key for key in plain.state_dict())  # old checkpoints load unchanged
    with pytest.raises(ValueError, match="without noise augmentation"):
        plain(x, torch.zeros(2), augment_labels=torch.zeros(2))


# ---------------------------------------------------------------------------------------------------
# Whole runs


def _sr_run(outdir, steps, **extra):
    return train("digits-train", outdir, steps=steps, batch=12, warmup=2, cond="low-res", factor=2,
                 network_kwargs=TINY, progress=False, seed=5, **extra)


def test_the_checkpoint_records_the_condition_and_a_resumed_run_is_bit_exact(tmp_path):
    whole = _sr_run(tmp_path / "whole", 4, noise_aug={"high": 2.0, "zero": 0.5})
    _sr_run(tmp_path / "resumed", 2, noise_aug={"high": 2.0, "zero": 0.5})
    resumed = train(resume=tmp_path / "resumed", steps=4, progress=False)
    a, b = load_training_state(whole.state)[1], load_training_state(resumed.state)[1]
    for key in (k for k in a if k.startswith(("net.", "ema."))):
        assert torch.equal(a[key], b[key]), key
    config = json.loads(whole.checkpoint.with_suffix(".json").read_text())
    assert config["condition"] == {"kind": "low-res", "factor": 2, "low_res_shape": [1, 4, 4],
                                   "noise_aug": {"high": 2.0, "low": 0.01, "zero": 0.5}}
    kwargs = config["network"]["kwargs"]
    assert kwargs["cond_channels"] == 1 and kwargs["noise_aug"] is True and kwargs["num_classes"] == 0
    assert "map_augment.weight" in load_file(whole.checkpoint.with_suffix(".safetensors"))


def test_a_run_without_super_resolution_records_none_of_its_options(tmp_path):
    result = train("digits", tmp_path, steps=1, batch=4, network_kwargs=TINY, progress=False)
    config = json.loads(result.checkpoint.with_suffix(".json").read_text())
    assert "factor" not in config["training"] and "noise_aug" not in config["training"]
    assert config["condition"] == {"kind": "class"}


@pytest.mark.parametrize("flags, message", [
    (["--factor", "2"], "--factor belongs to --cond low-res"),
    (["--noise-aug-max", "2"], "--noise-aug-max belongs to --cond low-res"),
    (["--cond", "low-res"], "--cond low-res needs --factor"),
    (["--cond", "low-res", "--factor", "3"], "not divisible by factor 3"),
    (["--cond", "low-res", "--factor", 2, "--noise-aug-min", 2, "--noise-aug-max", 1], "0 < low < high"),
    (["--data", "digits-text", "--cond", "low-res", "--factor", "2"], "needs an image dataset"),
])
def test_bad_super_resolution_flags_are_usage_errors_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "run"
    result = invoke(train_command, *flags, "--outdir", out, "--steps", 1, "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_train_the_super_resolution_model_of_one(tmp_path):
    from test_distributed_training import _max_difference, _state, _torchrun

    flags = ["--data", "digits-train", "--cond", "low-res", "--factor", 2, "--channels", 8, "--blocks", 1,
             "--batch", 9, "--warmup", 2, "--seed", 2, "--threads", 1, "--no-progress", "--steps", 3]
    one, two = tmp_path / "one", tmp_path / "two"
    result = invoke(train_command, *flags, "--outdir", one)
    assert result.exit_code == 0, result.output
    _torchrun(2, *flags, "--outdir", two, cwd=tmp_path)
    a, b = _state(one), _state(two)
    for prefix in ("net.", "ema."):
        assert _max_difference(a, b, prefix) <= 1e-5, prefix

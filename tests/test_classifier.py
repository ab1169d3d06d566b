"""The noise-aware classifier for classifier guidance: network, files, training, shipped weights, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _support import error_lines, invoke
from edm.classifier import (
    ClassifierError,
    NoiseAwareClassifier,
    accuracy_at_sigma,
    builtin_classifier_path,
    load_classifier,
    save_classifier,
)
from edm.train_classifier import held_out_data, holdout_split, sample_sigma
from tools.models.base import ModelError
from tools.models.classifier import load_classifier_spec
from tools.train_classifier_cli import train_classifier as train_classifier_command

TINY = {"in_channels": 1, "resolution": 8, "num_classes": 10, "sigma_data": 0.752, "model_channels": 8,
        "channel_mult": [1, 2], "num_blocks": 1}
TINY_ARGS = ["--steps", "3", "--batch", "16", "--channels", "4", "--channel-mult", "1,2", "--warmup", "1",
             "--no-progress", "--threads", "1"]


def _random_classifier(seed=0, **kwargs) -> NoiseAwareClassifier:
    torch.manual_seed(seed)
    net = NoiseAwareClassifier(**{**TINY, **kwargs})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def shipped():
    return load_classifier("digits-classifier")


def _inputs(batch, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=gen, dtype=dtype)
    sigma = (torch.randn(batch, generator=gen, dtype=dtype) * 2).exp()
    return x, sigma


def test_shapes_attributes_and_sigma_forms():
    net = _random_classifier()
    assert net.num_classes == 10 and net.shape == (1, 8, 8) and net.sigma_data == 0.752
    x, sigma = _inputs(5)
    logits = net(x, sigma)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    same = net(x, torch.full((5,), 0.5))
    torch.testing.assert_close(net(x, 0.5), same, rtol=0, atol=0)
    torch.testing.assert_close(net(x, torch.tensor(0.5)), same, rtol=0, atol=0)
    assert torch.isfinite(net(x, 0.0)).all()  # below sigma_min: embedded as sigma_min, no ln(0)
    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="sigma has 3 entries"):
        net(x, torch.ones(3))


def test_differentiable_in_x_with_frozen_parameters(shipped):
    assert not any(p.requires_grad for p in shipped.parameters()) and not shipped.training
    x, sigma = _inputs(4)
    x.requires_grad_(True)
    labels = torch.tensor([0, 3, 5, 9])
    log_p = torch.log_softmax(shipped(x, sigma), dim=1)[torch.arange(4), labels]
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.slow
def test_batch_invariance(shipped, dtype):
    """Sample i's logits depend on sample i's input only: the batch it is in does not matter."""
    net = shipped.to(dtype)
    try:
        x, sigma = _inputs(13, dtype)
        full = net(x, sigma)
        single = torch.cat([net(x[i:i + 1], sigma[i:i + 1]) for i in range(13)])
        perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
        permuted = net(x[perm], sigma[perm])
        pairs = torch.cat([net(x[i:i + 2], sigma[i:i + 2]) for i in range(0, 12, 2)])
    finally:
        shipped.to(torch.float32)
    if dtype == torch.float64:
        assert torch.equal(full, single) and torch.equal(full[perm], permuted)
        assert torch.equal(full[:12], pairs)
    else:  # bit-identical here too; the promise is 1e-6
        for other in (single, pairs):
            torch.testing.assert_close(other, full[:len(other)], rtol=0, atol=1e-6)
        torch.testing.assert_close(permuted, full[perm], rtol=0, atol=1e-6)


def test_eval_mode_per_sample_convolutions_match_the_batched_ones():
    net = _random_classifier()
    x, sigma = _inputs(6)
    per_sample = net.eval()(x, sigma)
    batched = net.train()(x, sigma)  # no dropout: only the convolution kernels differ
    torch.testing.assert_close(per_sample, batched, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    net = _random_classifier(embedding="fourier")
    record = {"network": {"kwargs": dict(TINY, embedding="fourier")}, "note": "kept"}
    weights, config = save_classifier(tmp_path / "clf", net, record)
    assert weights.name == "clf.safetensors" and config.name == "clf.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.json", "clf.safetensors"]  # no temporaries
    loaded = load_classifier(tmp_path / "clf.safetensors", dtype=torch.float64)
    assert loaded.config["note"] == "kept" and loaded.config["format"] == "edm-samplers/classifier-1"
    x, sigma = _inputs(6, torch.float64)
    assert torch.equal(loaded(x, sigma), net.double()(x, sigma))
    assert torch.equal(load_classifier_spec(str(tmp_path), dtype=torch.float64)(x, sigma), loaded(x, sigma))


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(ClassifierError, match=r"not found: .*nope\.json"):
        load_classifier(tmp_path / "nope")
    with pytest.raises(ModelError, match="unknown classifier") as info:
        load_classifier_spec(str(tmp_path / "nope"))
    assert info.value.param == "classifier"
    save_classifier(tmp_path / "clf", _random_classifier(), {"network": {"kwargs": TINY}})
    (tmp_path / "clf.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"corrupt classifier weights .*clf\.safetensors") as info:
        load_classifier_spec(str(tmp_path / "clf.json"))
    assert "\n" not in str(info.value)
    (tmp_path / "clf.safetensors").unlink()
    with pytest.raises(ClassifierError, match=r"weights not found: .*clf\.safetensors"):
        load_classifier(tmp_path / "clf")
    (tmp_path / "clf.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"corrupt classifier config .*clf\.json"):
        load_classifier_spec(str(tmp_path / "clf"))
    (tmp_path / "other.json").write_text(json.dumps({"format": "edm-samplers/checkpoint-1"}))
    with pytest.raises(ClassifierError, match=r"other\.json is not an edm-samplers classifier config"):
        load_classifier(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty must hold exactly one classifier"):
        load_classifier_spec(str(tmp_path / "empty"))


def test_holdout_split_and_sigma_distribution():
    labels = torch.arange(100) % 10
    train, held = holdout_split(labels, 0.2, seed=0)
    assert len(held) == 20 and len(train) == 80 and not set(train.tolist()) & set(held.tolist())
    assert (torch.bincount(labels[held], minlength=10) == 2).all()
    assert torch.equal(holdout_split(labels, 0.2, seed=0)[1], held)
    assert not torch.equal(holdout_split(labels, 0.2, seed=1)[1], held)
    sigma = sample_sigma(20000, torch.Generator().manual_seed(0))
    assert sigma.min() >= 0.002 * (1 - 1e-6) and sigma.max() <= 80 * (1 + 1e-6)
    assert (sigma > 10).float().mean() > 0.05 and (sigma < 0.01).float().mean() > 0.05


@pytest.mark.slow
def test_shipped_classifier(shipped):
    path = builtin_classifier_path("digits-classifier")
    files = [path.with_name(path.name + s) for s in (".safetensors", ".json")]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    config = shipped.config
    assert config["command"].startswith("edm train-classifier ")
    assert config["data"]["name"] == "digits" and config["split"]["held_out"] == 359
    assert shipped.sigma_data == pytest.approx(0.752)
    images, labels = held_out_data(config)  # the split the JSON records, never trained on
    assert len(images) == 359
    accuracy = accuracy_at_sigma(shipped, images, labels, [0.25], draws=2)
    assert accuracy[0.25] >= 0.95
    assert load_classifier_spec("digits-classifier") is not None


@pytest.mark.slow
def test_cli_trains_a_tiny_classifier_that_loads(tmp_path):
    outdir = tmp_path / "run"
    result = invoke(train_classifier_command, "--outdir", str(outdir), *TINY_ARGS)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    assert sorted(p.name for p in outdir.iterdir()) == ["classifier.json", "classifier.safetensors"]
    loaded = load_classifier_spec(str(outdir))
    config = loaded.config
    assert config["command"].startswith("edm train-classifier --data digits --outdir ")
    assert "--channels 4" in config["command"] and config["network"]["kwargs"]["model_channels"] == 4
    assert config["split"] == {**config["split"], "holdout": 0.2, "seed": 0, "train": 1438, "held_out": 359}
    assert set(config["held_out_accuracy"]) == {"0.002", "0.1", "0.25", "0.5", "1", "2", "5", "10", "80"}
    assert loaded(torch.zeros(2, 1, 8, 8), 1.0).shape == (2, 10)
    again = tmp_path / "again"
    invoke(train_classifier_command, "--outdir", str(again), *TINY_ARGS)
    first = (outdir / "classifier.safetensors").read_bytes()
    assert (again / "classifier.safetensors").read_bytes() == first  # seeded: reproducible on CPU


@pytest.mark.parametrize("args, message", [
    (["--channels", "3"], "must be even"),
    (["--holdout", "1.5"], "--holdout"),
    (["--channel-mult", "1,x"], "comma-separated positive integers"),
    (["--sigma-data", "-1"], "positive number or 'auto'"),
    (["--data", "no/such/dir"], "neither 'digits'"),
    (["--device", "tpu"], "unknown device"),
    (["--steps", "0"], "--steps"),
])
def test_cli_bad_options_exit_2_with_one_line(tmp_path, args, message):
    result = invoke(train_classifier_command, "--outdir", str(tmp_path / "run"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(error_lines(result)) == 1
    assert not (tmp_path / "run").exists()


def test_cli_unusable_outdir_and_unlabelled_data_exit_2_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    args = ["--outdir", str(tmp_path / "file" / "run"), *TINY_ARGS]
    result = invoke(train_classifier_command, *args)
    assert result.exit_code == 2 and "not a directory" in result.output and "Traceback" not in result.output
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((4, 8, 8), np.uint8))
    args = ["--data", str(tmp_path / "unlabelled.npz"), "--outdir", str(tmp_path / "run"), *TINY_ARGS]
    result = invoke(train_classifier_command, *args)
    assert result.exit_code == 2 and "no class labels" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()

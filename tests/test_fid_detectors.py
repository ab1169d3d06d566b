"""FID detectors: registry, the shipped `digits` detector, `inception` from a local file only, and
the `train-detector` command."""

from __future__ import annotations

import urllib.request

import pytest
import torch

from _support import invoke
from tools.fid import detectors
from tools.fid.detectors import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    DetectorWeightsMissing,
    get_detector,
    list_detectors,
)
from tools.fid.train_detector import digits_split, digits_uint8, train_detector, train_digits_detector


@pytest.fixture(scope="module")
def digits():
    images, labels = digits_uint8()
    _, held = digits_split(labels)
    return images, labels, held


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to download fails the test."""
    import pytorch_fid.inception
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    return refuse


# ------------------------------------------------------------------------------------------- registry


def test_registry():
    assert list_detectors() == ["digits", "inception"]
    with pytest.raises(ValueError, match="unknown detector 'nope'.*digits, inception"):
        get_detector("nope")


# --------------------------------------------------------------------------------------------- digits


def test_digits_shape_and_determinism(digits):
    images, _, _ = digits
    detector = get_detector("digits")
    assert detector.name == "digits" and detector.dim == 64 and "127.5" in detector.description
    features = detector(images[:16])
    assert features.shape == (16, 64) and features.dtype == torch.float32
    assert not features.requires_grad
    assert torch.equal(features, detector(images[:16]))
    assert torch.allclose(features[3:4], detector(images[3:4]), atol=1e-5)  # batch-independent
    for bad in (images[:2].float(), images[:2, :, :4], images[0], images[:2].repeat(1, 3, 1, 1)):
        with pytest.raises(ValueError, match="digits"):
            detector(bad)


def test_digits_images_use_the_generator_mapping(digits):
    from edm.data import load_digits

    images, _, _ = digits
    x = load_digits().images
    assert images.dtype == torch.uint8 and images.shape == (1797, 1, 8, 8)
    assert torch.equal(images, (x * 127.5 + 128).clip(0, 255).to(torch.uint8))


def test_digits_classifies_held_out_split(digits):
    images, labels, held = digits
    logits = get_detector("digits").classify(images[held])
    assert logits.shape == (len(held), 10)
    accuracy = (logits.argmax(1) == labels[held]).float().mean().item()
    assert accuracy >= 0.95, accuracy


def _frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    import numpy as np
    import scipy.linalg

    a, b = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_digits_features_separate_real_from_noise(digits):
    images, labels, held = digits
    train, _ = digits_split(labels)
    detector = get_detector("digits")
    gen = torch.Generator().manual_seed(0)
    noise = (torch.randn(len(held), 1, 8, 8, generator=gen) * 127.5 + 128).clip(0, 255).to(torch.uint8)
    real = detector(images[held])
    fd_real = _frechet(real, detector(images[train[: len(held)]]))  # held-out vs training digits
    fd_noise = _frechet(real, detector(noise))
    assert fd_noise > 20 * fd_real, (fd_noise, fd_real)


def test_digits_missing_weights(tmp_path):
    with pytest.raises(DetectorWeightsMissing, match="digits detector weights not found"):
        get_detector("digits", weights=tmp_path / "absent")


# ------------------------------------------------------------------------------------------ inception


def test_inception_without_weights_says_what_to_fetch(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(detectors.INCEPTION_WEIGHTS_ENV, str(tmp_path / "env" / INCEPTION_WEIGHTS_FILE))
    with pytest.raises(DetectorWeightsMissing) as info:
        get_detector("inception")
    message = str(info.value)
    assert "\n" not in message
    assert INCEPTION_WEIGHTS_FILE in message and INCEPTION_WEIGHTS_URL in message
    assert str(tmp_path / "env" / INCEPTION_WEIGHTS_FILE) in message
    assert str(tmp_path / ".cache" / "edm-samplers" / INCEPTION_WEIGHTS_FILE) in message
    assert isinstance(info.value, ValueError)

    monkeypatch.delenv(detectors.INCEPTION_WEIGHTS_ENV)
    with pytest.raises(DetectorWeightsMissing, match="missing.pth"):
        get_detector("inception", weights=tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def fake_inception_weights(tmp_path_factory):
    """A randomly initialised FID Inception's plain state dict, saved with torch.save."""
    import pytorch_fid.inception as fid_inception
    import torchvision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(torchvision.models.inception.Inception3, "load_state_dict", lambda self, sd, **k: None)
        torch.manual_seed(0)
        model = fid_inception.fid_inception_v3()
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_loads_local_file_with_weights_only(
    fake_inception_weights, tmp_path, monkeypatch, no_network
):
    import pytorch_fid.inception as fid_inception

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(detectors.INCEPTION_WEIGHTS_ENV, str(fake_inception_weights))
    detector = get_detector("inception")  # found through the environment variable
    assert calls == [True]
    assert fid_inception.load_state_dict_from_url is no_network  # the loader is restored
    assert detector.name == "inception" and detector.dim == 2048
    assert detector.weights_path == fake_inception_weights
    assert "299" in detector.description and "[-1, 1]" in detector.description

    gen = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (2, 1, 8, 8), generator=gen, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    outputs = [detector(images) for images in (gray, rgb, gray.repeat(1, 3, 1, 1))]
    for features in outputs:
        assert features.shape == (2, 2048) and features.dtype == torch.float32
        assert torch.isfinite(features).all()
    assert torch.allclose(outputs[0], outputs[2])  # a gray image is its RGB repetition
    with pytest.raises(ValueError, match="1- or 3-channel"):
        detector(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))


def test_inception_weights_argument_wins(fake_inception_weights, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(detectors.INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    detector = get_detector("inception", weights=str(fake_inception_weights))
    assert detector.weights_path == fake_inception_weights


def test_inception_bad_file_is_a_clear_error(tmp_path, no_network):
    bad = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="could not load Inception FID weights"):
        get_detector("inception", weights=bad)


# ------------------------------------------------------------------------------------- train-detector


def test_train_detector_cli_writes_loadable_weights(tmp_path, digits):
    images, _, _ = digits
    out = tmp_path / "det"
    result = invoke(train_detector, "--out", str(out), "--epochs", "1", "--limit", "64")
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    assert (tmp_path / "det.safetensors").is_file() and (tmp_path / "det.json").is_file()
    detector = get_detector("digits", weights=out)
    assert detector(images[:4]).shape == (4, 64)
    assert detector.config["training"]["epochs"] == 1 and detector.config["training"]["limit"] == 64
    assert detector.config["command"].startswith("edm fid train-detector --out ")
    assert not list(tmp_path.glob(".*tmp"))


def test_train_detector_is_reproducible(tmp_path):
    a = train_digits_detector(seed=3, epochs=1, limit=32, out=tmp_path / "a")
    b = train_digits_detector(seed=3, epochs=1, limit=32, out=tmp_path / "b")
    assert a["held_out_accuracy"] == b["held_out_accuracy"]
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "1"],  # --out missing
        ["--out", "x", "--epochs", "0"],
        ["--out", "x", "--epochs", "many"],
        ["--out", "x", "--limit", "0"],
        ["--out", "x", "--device", "tpu"],
        ["--out", "x", "--device", "not a device"],
        ["--out", "x", "--seed", "zero"],
    ],
)
def test_train_detector_bad_options_exit_2(tmp_path, args):
    args = [str(tmp_path / "x") if a == "x" else a for a in args]
    result = invoke(train_detector, *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_train_detector_cuda_unavailable_exits_2(tmp_path):
    result = invoke(train_detector, "--out", str(tmp_path / "x"), "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output

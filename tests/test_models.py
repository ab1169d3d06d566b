"""``tools.models.load_model``: checkpoints, the built-in name, NVlabs pickles and every failure as a
one-line ``ModelError`` (diffusers models are in test_interop_diffusers.py)."""

from __future__ import annotations

import importlib.machinery
import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import edm
from edm.checkpoint import save_checkpoint
from tools import models
from tools.models import LoadedModel, ModelError, list_builtin, load_model

SHAPE = (1, 8, 8)
NUM_CLASSES = 3


def small_unet(num_classes=NUM_CLASSES) -> nn.Module:
    from edm.networks import build_network

    torch.manual_seed(0)
    net = build_network("unet", **network_kwargs(num_classes))
    with torch.no_grad():  # a fresh UNet predicts F = 0 (zero output conv): make it say something
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def network_kwargs(num_classes=NUM_CLASSES) -> dict:
    return {"in_channels": SHAPE[0], "resolution": SHAPE[1], "model_channels": 8, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [], "num_classes": num_classes}


def config(num_classes=NUM_CLASSES) -> dict:
    return {"network": {"name": "unet", "kwargs": network_kwargs(num_classes)},
            "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
            "data": {"shape": list(SHAPE), "num_classes": num_classes}}


@pytest.fixture
def checkpoint(tmp_path):
    net = small_unet()
    save_checkpoint(tmp_path / "model", net, config())
    return tmp_path / "model", net


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message and message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip(checkpoint):
    stem, net = checkpoint
    reference = edm.Precond(net.double(), "edm", sigma_data=0.5)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2.0
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([2, 0]), NUM_CLASSES).double()

    for spec in (stem, stem.with_suffix(".json"), stem.with_suffix(".safetensors"), stem.parent):
        model = load_model(str(spec), dtype=torch.float64)
        assert isinstance(model, LoadedModel)
        assert (model.kind, model.shape, model.num_classes) == ("checkpoint", SHAPE, NUM_CLASSES)
        assert (model.sigma_min, model.sigma_max, model.sigmas) == (0.002, 80.0, None)
        assert model.source == str(stem)
        assert model.info["parameters"] == sum(p.numel() for p in net.parameters())
        assert model.info["config"]["data"]["num_classes"] == NUM_CLASSES
        out = model.denoiser(x, sigma, class_labels=labels)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, reference(x, sigma, class_labels=labels), rtol=0, atol=1e-12)
        # None is the unconditional (all-zero) input
        torch.testing.assert_close(model.denoiser(x, sigma), reference(x, sigma, class_labels=0 * labels))
        assert not torch.allclose(out, model.denoiser(x, sigma))
    assert float(model.denoiser.round_sigma(torch.tensor(0.3))) == pytest.approx(0.3)
    single = load_model(str(stem))  # float32 weights, float64 state: the call is cast, the output is not
    out32 = single.denoiser(x, sigma, class_labels=labels)
    assert out32.dtype == torch.float64
    torch.testing.assert_close(out32, out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="one-hot"):
        model.denoiser(x, sigma, class_labels=labels[:, :2])


def test_unconditional_checkpoint_takes_no_labels(tmp_path):
    net = small_unet(num_classes=0)
    save_checkpoint(tmp_path / "uncond", net, config(num_classes=0))
    model = load_model(str(tmp_path / "uncond"))
    assert model.num_classes == 0
    x = torch.randn(2, *SHAPE)
    out = model.denoiser(x, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(out, edm.Precond(net, "edm", sigma_data=0.5)(x, torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match="unconditional"):
        model.denoiser(x, torch.tensor([1.0, 2.0]), class_labels=torch.eye(2))


def test_builtin_names(tmp_path, monkeypatch):
    assert list_builtin() == ["digits", "digits-4x4", "digits-cd", "digits-dit", "digits-pd1", "digits-pd2",
                              "digits-pd2-guided", "digits-pd4", "digits-pd8", "digits-sr", "digits-text",
                              "digits-weak"]
    monkeypatch.setitem(models.BUILTIN, "digits", tmp_path / "absent")
    with pytest.raises(ModelError) as error:
        load_model("digits")
    assert_one_line(error, "'digits'", "not installed")
    save_checkpoint(tmp_path / "packaged", small_unet(), config())
    monkeypatch.setitem(models.BUILTIN, "digits", tmp_path / "packaged")
    model = load_model("digits")
    assert (model.source, model.shape, model.num_classes) == ("digits", SHAPE, NUM_CLASSES)


def test_shipped_digits_model_loads():
    model = load_model("digits")
    assert model.kind == "checkpoint" and len(model.shape) == 3
    x = torch.zeros(1, *model.shape)
    assert model.denoiser(x, torch.tensor([1.0])).shape == x.shape


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelError) as error:
        load_model(str(tmp_path / "nothing.json"))
    assert_one_line(error, "nothing.json")
    with pytest.raises(ModelError) as error:
        load_model(str(tmp_path))
    assert_one_line(error, str(tmp_path), "exactly one")


def test_missing_weights_or_config(checkpoint):
    stem, _ = checkpoint
    stem.with_suffix(".json").rename(stem.parent / "moved.json")
    with pytest.raises(ModelError) as error:
        load_model(str(stem))
    assert_one_line(error, "config not found", "model.json")
    (stem.parent / "moved.json").rename(stem.with_suffix(".json"))
    stem.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelError) as error:
        load_model(str(stem.with_suffix(".json")))
    assert_one_line(error, "model.safetensors")


def test_truncated_weights(checkpoint):
    stem, _ = checkpoint
    weights = stem.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError) as error:
        load_model(str(stem))
    assert_one_line(error, "corrupt", "model.safetensors")


@pytest.mark.parametrize("text, fragment", [
    ('{"format": "edm-samplers/checkpoint-1", "network": ', "corrupt"),
    (json.dumps({"_class_name": "UNet2DModel", "in_channels": 3}), "not an edm-samplers checkpoint"),
    (json.dumps([1, 2, 3]), "not an edm-samplers checkpoint"),
    (json.dumps({"format": "edm-samplers/checkpoint-1", "network": {}, "precond": {}}), "'data'"),
])
def test_bad_config(checkpoint, text, fragment):
    stem, _ = checkpoint
    stem.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError) as error:
        load_model(str(stem))
    assert_one_line(error, fragment, "model.json")


def test_config_that_does_not_fit_the_weights(checkpoint):
    stem, _ = checkpoint
    bad = config()
    bad["network"]["kwargs"]["model_channels"] = 16
    save_checkpoint(stem.parent / "other", small_unet(), config())
    stem.with_suffix(".json").write_text(json.dumps({"format": "edm-samplers/checkpoint-1", **bad}))
    with pytest.raises(ModelError) as error:
        load_model(str(stem))
    assert_one_line(error, "does not fit")
    with pytest.raises(ModelError) as error:  # now two checkpoints in the directory
        load_model(str(stem.parent))
    assert_one_line(error, "exactly one", "model", "other")


def test_unknown_spec(tmp_path):
    with pytest.raises(ModelError) as error:
        load_model("no-such-model")
    assert_one_line(error, "'no-such-model'", "digits", "diffusers:DIR")
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(ModelError) as error:
        load_model(str(stray))
    assert_one_line(error, "notes.txt")


# ----------------------------------------------------------------------------------------------
# NVlabs pickles


class MarkerOnLoad:
    """Unpickling this creates the file ``path`` (as a malicious pickle could run anything)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class FakeEDMPrecond(nn.Module):
    """The surface of NVlabs' ``EDMPrecond``: float32 compute, ``net(x, sigma, class_labels)``."""

    img_channels, img_resolution, label_dim = 1, 4, 2
    sigma_min, sigma_max, sigma_data = 0.0, float("inf"), 0.5

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        shift = 0 if class_labels is None else class_labels.to(torch.float32).argmax(1).reshape(-1, 1, 1, 1)
        return x * self.scale / (1 + sigma**2) + shift

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@pytest.fixture
def fake_nvlabs(monkeypatch):
    for name in ("dnnlib", "torch_utils"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)


def test_pickle_needs_trust_and_is_not_opened(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "network.pkl"
    path.write_bytes(pickle.dumps({"ema": MarkerOnLoad(marker)}))
    for spec in (str(path), f"nvlabs:{path}"):
        with pytest.raises(ModelError) as error:
            load_model(spec)
        assert_one_line(error, f"refusing to unpickle {path}", "--trust-pickle")
    assert not marker.exists()


def test_trusted_pickle_without_nvlabs_code(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dnnlib", None)  # not importable, whatever is installed
    marker = tmp_path / "unpickled"
    path = tmp_path / "network.pickle"
    path.write_bytes(pickle.dumps({"ema": MarkerOnLoad(marker)}))
    with pytest.raises(ModelError) as error:
        load_model(str(path), trust_pickle=True)
    assert_one_line(error, "dnnlib", "NVlabs")
    assert not marker.exists()


def test_trusted_nvlabs_pickle_loads(tmp_path, fake_nvlabs):
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps({"ema": FakeEDMPrecond(), "loss_fn": None}))
    model = load_model(str(path), trust_pickle=True)
    assert (model.kind, model.shape, model.num_classes, model.sigmas) == ("nvlabs", (1, 4, 4), 2, None)
    assert model.info["parameters"] == 1 and model.source == str(path)
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)  # as NVlabs' generate.py clips (0, inf)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([1.0, 3.0], dtype=torch.float64)
    out = model.denoiser(x, sigma, class_labels=torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert out.dtype == torch.float64
    expected = (x.float() * 0.5 / (1 + sigma.float().reshape(-1, 1, 1, 1) ** 2)).double()
    unconditional = expected.clone()
    expected[0] += 1
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(model.denoiser(x, sigma), unconditional)  # None -> zeros -> argmax 0


def test_trusted_pickle_that_is_not_a_network(tmp_path, fake_nvlabs):
    path = tmp_path / "junk.pkl"
    path.write_bytes(pickle.dumps({"ema": [1, 2, 3]}))
    with pytest.raises(ModelError) as error:
        load_model(str(path), trust_pickle=True)
    assert_one_line(error, "junk.pkl", "EDMPrecond")
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ModelError) as error:
        load_model(str(path), trust_pickle=True)
    assert_one_line(error, "cannot unpickle", "junk.pkl")


def test_the_weak_guide_model_is_small_documented_and_a_weaker_digits():
    """digits-weak (autoguidance's guide): shipped under 2 MB, trained by `edm train` on the same data and
    conditioning as digits, with fewer parameters."""
    weights = Path(edm.__file__).parent / "weights"
    files = [weights / "digits-weak.safetensors", weights / "digits-weak.json"]
    assert sum(f.stat().st_size for f in files) < 2_000_000
    weak, main = (json.loads((weights / f"{n}.json").read_text()) for n in ("digits-weak", "digits"))
    assert weak["command"].startswith("edm train --data digits ")
    assert weak["data"] == main["data"] and weak["precond"] == main["precond"]
    strong, guide = load_model("digits"), load_model("digits-weak")
    count = lambda m: sum(p.numel() for p in m.denoiser.parameters())  # noqa: E731
    assert (guide.shape, guide.num_classes) == (strong.shape, strong.num_classes)
    assert count(guide) < count(strong) / 3

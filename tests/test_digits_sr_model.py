"""The embedded super-resolution models in fact: ``digits-sr`` upsamples 4x4 digits it never saw (the
held-out indices 1400-1796) into 8x8 digits that pool back to their input and keep its class, and the
cascade ``digits-4x4`` -> ``digits-sr`` draws the digit the base stage was asked for.

The class is read by the ``digits`` FD detector. A 4x4 digit carries less of its class than an 8x8 one: an
SVM trained on the 4x4 training digits classifies the held-out 4x4 inputs right 90% of the time, nearest
upsampling reads about 65%; the SR output must be read far better than its nearest-neighbour upsampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edm
from edm.conditions import downsample
from edm.data import load_dataset
from tools.fid.detectors import get_detector
from tools.generate.cascade import prepare_stages
from tools.generate.sampling import prepare_sampling
from tools.images import from_uint8, to_uint8
from tools.labels import class_labels
from tools.request import SamplingRequest

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = Path(edm.__file__).parent / "weights"
#: half a step of the digits' grid (pixel values 0..16 -> x / 8 - 1)
TOLERANCE = 0.0625


def as_written(images: torch.Tensor) -> torch.Tensor:
    """Images through the uint8 PNG round trip, as ``edm generate`` writes them."""
    return from_uint8(to_uint8(images))


def detector_accuracy(images: torch.Tensor, classes) -> float:
    logits = get_detector("digits").classify(torch.from_numpy(to_uint8(images).transpose(0, 3, 1, 2)))
    return float((logits.argmax(1) == torch.as_tensor(classes)).float().mean())


def test_both_models_trained_on_the_training_digits_only():
    for name, data in (("digits-sr", "digits-train"), ("digits-4x4", "digits-4x4-train")):
        config = json.loads((WEIGHTS / f"{name}.json").read_text())
        assert config["data"]["name"] == data and config["data"]["size"] == 1400
        assert f"--data {data} " in config["command"]
    sr = json.loads((WEIGHTS / "digits-sr.json").read_text())
    assert sr["condition"]["kind"] == "low-res" and sr["condition"]["low_res_shape"] == [1, 4, 4]


def test_digits_sr_upsamples_held_out_digits_consistently_and_keeps_their_class():
    truth = load_dataset("digits-held-out")
    rows = list(range(0, len(truth), 4))  # 100 held-out digits
    low = as_written(downsample(truth.images[rows], 2))
    setup = prepare_sampling(SamplingRequest(model="digits-sr", steps=10, noise_aug=0.0), staged=True)
    out = as_written(setup.images(rows, low_res=low))
    gap = (downsample(out, 2) - low).abs()
    assert float(gap.mean()) <= TOLERANCE / 2
    classes = truth.labels[rows]
    sr = detector_accuracy(out, classes)
    nearest = detector_accuracy(F.interpolate(low, scale_factor=2, mode="nearest"), classes)
    assert sr >= 0.85 and sr >= nearest + 0.15, (sr, nearest)


def test_the_cascade_draws_the_class_the_base_stage_was_asked_for():
    seeds = list(range(60))
    cascade = prepare_stages(SamplingRequest(model="digits-4x4", steps=10),
                             sr=SamplingRequest(model="digits-sr", steps=10))
    base = as_written(cascade.base.images(seeds))
    final = cascade.images(seeds)
    assert final.shape == (60, 1, 8, 8)
    assert float((downsample(as_written(final), 2) - base).abs().mean()) <= TOLERANCE
    assert detector_accuracy(final, class_labels(seeds, 10, (1, 4, 4))) >= 0.9

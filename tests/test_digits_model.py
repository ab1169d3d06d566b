"""The embedded ``digits`` model: small, documented, and class-conditional in fact.

Its samples (heun, 18 steps, Karras schedule 0.002..80, rho 7, no guidance; 50 per class, seeds
0..499) must be recognised as the requested digit by a classifier fitted here on scikit-learn's
digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edm
import samplers
from edm.checkpoint import load_checkpoint, paths

WEIGHTS = Path(edm.__file__).parent / "weights" / "digits"
SEEDS = list(range(500))
CLASSES = [seed // 50 for seed in SEEDS]  # 50 samples per class


def digit_classifier():
    """An RBF SVM on raw pixel values 0..16 (about 99% accurate on held-out real digits)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Model space [-1, 1] back to the data's 0..16 pixel values, flattened."""
    return ((images.double() + 1.0) * 8.0).clamp(0, 16).flatten(1).numpy()


def test_files_small_and_documented():
    weights, config_path = paths(WEIGHTS)
    assert weights.stat().st_size + config_path.stat().st_size < 5_000_000
    config = json.loads(config_path.read_text())
    assert config["command"].startswith("edm train --data digits ")
    assert f"--seed {config['seed']}" in config["command"]
    assert config["data"]["name"] == "digits" and config["data"]["num_classes"] == 10
    assert config["data"]["shape"] == [1, 8, 8]
    assert config["training"]["step"] == config["training"]["total_steps"]


@pytest.mark.slow
def test_samples_have_the_requested_class():
    classifier = digit_classifier()
    ckpt = load_checkpoint(WEIGHTS)
    assert ckpt.shape == (1, 8, 8) and ckpt.num_classes == 10
    sigmas = samplers.schedules.get("karras")(18, 0.002, 80.0, rho=7.0)
    x = samplers.noise.latents(SEEDS, ckpt.shape) * sigmas[0]
    onehot = torch.nn.functional.one_hot(torch.tensor(CLASSES), 10).float()
    with torch.no_grad():
        images = samplers.sample(ckpt.denoiser, x, sigmas, "heun", seeds=SEEDS, cond={"class_labels": onehot})
    assert images.shape == (500, 1, 8, 8) and torch.isfinite(images).all()
    predicted = classifier.predict(to_pixels(images))
    accuracy = float(np.mean(predicted == np.array(CLASSES)))
    per_class = [float(np.mean(predicted[c * 50:(c + 1) * 50] == c)) for c in range(10)]
    assert accuracy >= 0.90, f"accuracy {accuracy:.3f}, per class {per_class}"

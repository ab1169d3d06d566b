"""Feature detectors for FID / FD: uint8 images in, one float32 embedding per image out.

``get_detector(name, device=..., weights=...)`` returns a :class:`Detector`; ``list_detectors()``
names them. A detector takes uint8 images ``[B, C, H, W]`` (values 0..255, as ``edm generate``
writes them) and does its own preprocessing, so real and generated images always go through the
same steps. Features come back as float32 ``[B, dim]`` on the detector's device, without autograd.

``inception``
    The standard FID network: Inception-v3 with the TensorFlow 2015-12-05 weights, as ported by
    pytorch-fid (``pytorch_fid.inception.InceptionV3``, ``use_fid_inception=True``), 2048-d pool3
    features. Preprocessing is exactly pytorch-fid's: uint8 -> float32 ``x / 255`` in [0, 1];
    a grayscale (1-channel) image is repeated to 3 channels; the network then resizes to 299x299
    (bilinear, ``align_corners=False``) and maps [0, 1] to [-1, 1]. The weights are never
    downloaded: they load (``torch.load(..., weights_only=True)``, so no pickled code runs) from
    the ``weights`` argument, else ``$EDM_FID_INCEPTION_WEIGHTS``, else
    ``~/.cache/edm-samplers/pt_inception-2015-12-05-6726825d.pth``; when none exists,
    :class:`DetectorWeightsMissing` says which file to fetch and from where. Numbers are those of
    pytorch-fid; NVlabs' ``fid.py`` uses a different port of the same network (its own resize), so
    its FIDs differ slightly from pytorch-fid's.

``digits``
    A small CNN classifier trained by the project (``tools/fid/train_detector.py``) on the 8x8
    scikit-learn digits; weights ship in ``tools/fid/weights/digits.safetensors`` + ``digits.json``.
    Input: 1-channel 8x8 uint8. Preprocessing ``x / 127.5 - 1`` (uint8 -> [-1, 1], the inverse of the
    generator's ``x * 127.5 + 128``); its training images went through that same uint8 round trip.
    Features: the 64-d penultimate layer (after its ReLU); ``classify`` gives the class logits.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "Detector",
    "DetectorWeightsMissing",
    "DigitsNet",
    "get_detector",
    "list_detectors",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "INCEPTION_WEIGHTS_ENV",
    "DIGITS_WEIGHTS",
    "DIGITS_FORMAT",
]

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_WEIGHTS_ENV = "EDM_FID_INCEPTION_WEIGHTS"
DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits"
DIGITS_FORMAT = "edm-samplers/fid-detector-1"


class DetectorWeightsMissing(ValueError):
    """A detector's weights file is not on this machine; the one-line message says what to fetch."""


class Detector:
    """A feature extractor: ``detector(uint8 [B, C, H, W]) -> float32 [B, dim]`` on ``detector.device``.

    Subclasses set ``name``, ``dim``, ``description`` and implement :meth:`_features` on a checked
    uint8 batch already on the detector's device.
    """

    name: str = ""
    dim: int = 0
    description: str = ""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def _check(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images)
            raise ValueError(f"detector {self.name!r} takes uint8 images [B, C, H, W]; got {got}")
        return images.to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self._features(self._check(images))
        return features.to(torch.float32).reshape(images.shape[0], self.dim)

    def _features(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} dim={self.dim} device={self.device}>"


# --------------------------------------------------------------------------------------------- digits


class DigitsNet(nn.Module):
    """A small CNN for 1x8x8 images in [-1, 1]: three 3x3 convolutions -> ``features`` -d -> 10 logits."""

    def __init__(self, channels: int = 32, features: int = 64, num_classes: int = 10):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 8x8 -> 4x4
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 4x4 -> 2x2
            nn.Flatten(),
            nn.Linear(2 * c * 4, features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(features, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 1, 8, 8]`` -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return images.to(torch.float32) / 127.5 - 1.0


class DigitsDetector(Detector):
    name = "digits"
    description = (
        "Small CNN classifier trained by this project on scikit-learn's 8x8 digits "
        "(tools/fid/train_detector.py); input 1-channel 8x8 uint8 images, scaled by x / 127.5 - 1 to "
        "[-1, 1] (the inverse of the generator's x * 127.5 + 128; the training images went through that "
        "same uint8 round trip, so real and generated digits are preprocessed identically); features are "
        "the penultimate layer after its ReLU, and classify() returns the 10 class logits."
    )

    def __init__(self, net: DigitsNet, config: dict, device="cpu"):
        super().__init__(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.dim = net.head.in_features
        self.description = f"{self.description} Feature dimension {self.dim}."

    def _check(self, images) -> torch.Tensor:
        images = super()._check(images)
        if tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"detector 'digits' takes 1-channel 8x8 images; got {tuple(images.shape)}")
        return images

    def _features(self, images):
        return self.net.embed(digits_preprocess(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits float32 ``[B, 10]`` of uint8 images ``[B, 1, 8, 8]``."""
        return self.net(digits_preprocess(self._check(images)))


def digits_paths(weights) -> tuple[Path, Path]:
    path = Path(weights) if weights is not None else DIGITS_WEIGHTS
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def load_digits_net(weights=None) -> tuple[DigitsNet, dict]:
    """The network and JSON config of a digits detector checkpoint (default: the shipped one)."""
    from safetensors.torch import load_file

    tensors, config_path = digits_paths(weights)
    for path in (tensors, config_path):
        if not path.is_file():
            raise DetectorWeightsMissing(
                f"digits detector weights not found: {path} (train them with `edm fid train-detector`)"
            )
    config = json.loads(config_path.read_text())
    if config.get("format") != DIGITS_FORMAT:
        raise ValueError(f"{config_path} is not a digits detector config (format {config.get('format')!r})")
    net = DigitsNet(**config["network"]["kwargs"])
    net.load_state_dict(load_file(str(tensors)))
    return net, config


def _digits(device, weights) -> DigitsDetector:
    net, config = load_digits_net(weights)
    return DigitsDetector(net, config, device)


# ------------------------------------------------------------------------------------------ inception


def inception_weight_candidates(weights=None) -> list[Path]:
    """Where the Inception weights are looked for, in order: ``weights``, the env variable, the cache."""
    if weights is not None:
        return [Path(weights).expanduser()]
    places = []
    if os.environ.get(INCEPTION_WEIGHTS_ENV):
        places.append(Path(os.environ[INCEPTION_WEIGHTS_ENV]).expanduser())
    places.append(Path.home() / ".cache" / "edm-samplers" / INCEPTION_WEIGHTS_FILE)
    return places


def find_inception_weights(weights=None) -> Path:
    places = inception_weight_candidates(weights)
    for place in places:
        if place.is_file():
            return place
    looked = ", ".join(str(p) for p in places)
    raise DetectorWeightsMissing(
        f"Inception FID weights {INCEPTION_WEIGHTS_FILE} not found (looked at: {looked}); nothing is "
        f"downloaded: fetch {INCEPTION_WEIGHTS_URL} and put it at one of those paths, set "
        f"{INCEPTION_WEIGHTS_ENV}, or pass --detector-weights PATH"
    )


_LOADER_LOCK = threading.Lock()


def build_fid_inception(path) -> nn.Module:
    """pytorch-fid's FID ``InceptionV3`` (pool3, 2048-d) with weights read from the local ``path``.

    pytorch-fid's constructor fetches its weights with ``load_state_dict_from_url``; for the time of
    the construction that name is pointed at a loader of ``path`` (``weights_only=True``), so nothing
    is downloaded and no pickled code runs.
    """
    import pytorch_fid.inception as fid_inception

    path = Path(path)

    def load_local(*args, **kwargs):
        return torch.load(path, map_location="cpu", weights_only=True)

    with _LOADER_LOCK:
        original = fid_inception.load_state_dict_from_url
        fid_inception.load_state_dict_from_url = load_local
        try:
            model = fid_inception.InceptionV3(
                [fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                resize_input=True,
                normalize_input=True,
                use_fid_inception=True,
            )
        except Exception as error:
            raise ValueError(f"could not load Inception FID weights from {path}: {error}") from error
        finally:
            fid_inception.load_state_dict_from_url = original
    return model.eval()


class InceptionDetector(Detector):
    name = "inception"
    dim = 2048
    description = (
        "FID Inception-v3 with the TensorFlow 2015-12-05 weights (pytorch-fid's port, "
        f"{INCEPTION_WEIGHTS_FILE}), 2048-d pool3 features; preprocessing exactly as pytorch-fid: uint8 "
        "-> float32 x / 255 in [0, 1], 1-channel images repeated to RGB, then the network resizes to "
        "299x299 (bilinear, align_corners=False) and maps [0, 1] to [-1, 1]; the weights load from a "
        "local file only (weights_only, never downloaded)."
    )

    def __init__(self, model: nn.Module, weights_path: Path, device="cpu"):
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.weights_path = Path(weights_path)

    def _check(self, images) -> torch.Tensor:
        images = super()._check(images)
        if images.shape[1] not in (1, 3):
            raise ValueError(f"detector 'inception' takes 1- or 3-channel images; got {tuple(images.shape)}")
        return images

    def _features(self, images):
        x = images.to(torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.model(x)[0]


def _inception(device, weights) -> InceptionDetector:
    path = find_inception_weights(weights)
    return InceptionDetector(build_fid_inception(path), path, device)


# ------------------------------------------------------------------------------------------- registry

_DETECTORS = {"digits": _digits, "inception": _inception}


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def get_detector(name: str, *, device="cpu", weights=None) -> Detector:
    """The detector ``name`` on ``device``; ``weights`` overrides where its weights are read from."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(list_detectors())}")
    return _DETECTORS[name](device, weights)

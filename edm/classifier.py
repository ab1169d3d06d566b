"""A noise-aware classifier ``p(class | x; sigma)`` for classifier guidance (Dhariwal & Nichol 2021).

Classifier guidance adds ``scale * grad_x log p(y | x; sigma)`` to the score, so the classifier must
read *noisy* images ``x = y + sigma * n`` at every noise level a sampler visits (EDM variables,
sigma from 0.002 to 80), and must be differentiable in ``x``. It is preconditioned the way EDM's
denoisers are, for the same reason (inputs and conditioning of unit scale at every sigma):

* the network sees ``c_in(sigma) * x`` with ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``;
* the noise level enters as ``c_noise = ln(sigma) / 4`` through positional (or random Fourier)
  features and a two-layer MLP, which modulates every residual block (laid out as edm.networks.ResBlock).

Below the training range (sigma < ``sigma_min``, e.g. sigma = 0 at the end of a schedule) the noise
embedding is clamped to ``sigma_min``: the image counts as clean, and ``ln(0)`` never appears.

Normalisation is GroupNorm only (no BatchNorm, no batch statistics anywhere), and the linear maps
and (in eval mode) the convolutions are computed per sample (:class:`SampleLinear`,
:class:`SampleConv2d`), so the logits of sample ``i`` depend on sample ``i``'s input alone, as
samplers' per-seed guarantee needs, bit for bit in float32 and float64: a batched matrix product
rounds differently for different batch sizes.

A classifier ``NAME`` is two files, ``NAME.safetensors`` (the state dict) and ``NAME.json``:

    {"format": "edm-samplers/classifier-1",
     "network": {"kwargs": {...}},                   # NoiseAwareClassifier(**kwargs)
     "data": {"name": "digits", "shape": [1, 8, 8], "num_classes": 10, ...},
     "split": {...},                                 # the held-out images, never trained on
     "training": {...}, "command": "edm train-classifier ...",
     "held_out_accuracy": {"0.002": 0.99, ...}}      # per sigma

Loading never unpickles: :func:`load_classifier` reads the JSON, builds the network, loads the
safetensors. The built-in name ``digits-classifier`` is the pair shipped in ``edm/weights``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .checkpoint import atomic_write_all, paths, read_record
from .networks import noise_embedding

__all__ = ["NoiseAwareClassifier", "SampleLinear", "SampleConv2d", "ClassifierError", "CLASSIFIER_FORMAT",
           "BUILTIN_CLASSIFIERS", "classifier_files", "save_classifier", "load_classifier",
           "read_classifier_config", "builtin_classifier_path", "accuracy_at_sigma", "noise_draws"]

CLASSIFIER_FORMAT = "edm-samplers/classifier-1"

#: built-in name -> file stem relative to the edm package
BUILTIN_CLASSIFIERS = {"digits-classifier": Path("weights") / "digits-classifier"}


class ClassifierError(ValueError):
    """A classifier file that is missing, corrupt or not ours; the one-line message names the file."""


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as edm.networks' blocks have it: at most 32 groups of at least 4 channels."""
    groups = next(g for g in range(min(32, max(channels // 4, 1)), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class SampleLinear(nn.Linear):
    """``nn.Linear`` computed one sample at a time (a batched ``[1, K] x [K, N]`` product).

    A plain ``[B, K] x [K, N]`` GEMM blocks its sums differently for different ``B`` (a batch of one
    even takes a GEMV), so a sample's output changes in the last bits with the batch it is in. Here
    every sample gets the same product whatever ``B`` is: bit-identical in float64 and float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        out = torch.bmm(x[:, None, :], self.weight.t().expand(x.shape[0], -1, -1))[:, 0]
        return out + self.bias if self.bias is not None else out


class SampleConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, no groups or dilation) that, in eval mode, convolves one sample at a
    time: an im2col (``unfold``) and a batched ``[C_out, C_in k k] x [C_in k k, L]`` product, the same for
    every sample, so bit-identical whatever the batch (oneDNN's kernels round differently for different
    batch sizes: about 1e-6 relative in float32).

    In training mode it is the usual batched convolution, three times faster here; the two agree to
    rounding. Guidance evaluates the classifier in eval mode.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        B, _, H, W = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.bmm(self.weight.flatten(1).expand(B, -1, -1), cols)
        out = out.reshape(B, self.out_channels, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
        return out + self.bias[:, None, None] if self.bias is not None else out


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution (as edm.networks.Downsample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = SampleConv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Block(nn.Module):
    """A residual block modulated by the noise embedding, laid out as ``edm.networks.ResBlock``:
    ``x -> skip(x) + conv(silu(norm(h) * (1 + scale) + shift))``, ``h = conv(silu(norm(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = _norm(in_channels)
        self.conv0 = SampleConv2d(in_channels, out_channels, 3, padding=1)
        self.affine = SampleLinear(emb_channels, 2 * out_channels)
        self.norm1 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = SampleConv2d(out_channels, out_channels, 3, padding=1)
        self.skip = SampleConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        skip = x if self.skip is None else self.skip(x)
        return skip + self.conv1(self.dropout(h))


class NoiseAwareClassifier(nn.Module):
    """``logits = classifier(x, sigma)``: class logits ``[B, num_classes]`` of noisy images.

    Args:
        in_channels, resolution: image shape ``(in_channels, resolution, resolution)``.
        num_classes: number of classes (>= 2).
        sigma_data: the data's standard deviation, for ``c_in`` (0.752 for digits).
        model_channels: channels at the first resolution; level ``i`` has ``model_channels *
            channel_mult[i]``, each level after the first halves the resolution (strided conv).
        channel_mult, num_blocks: multipliers per level, residual blocks per level.
        embedding: ``"positional"`` (EDM's) or ``"fourier"`` features of ``c_noise``.
        dropout: dropout inside the residual blocks (training mode only).
        sigma_min: noise levels below this are embedded as ``sigma_min`` (the training range's floor).

    ``x`` is ``[B, C, H, W]`` in EDM variables (``y + sigma * n``, ``y`` in [-1, 1]); ``sigma`` a
    ``[B]`` tensor, a scalar tensor or a float. The logits come back in ``x``'s dtype.
    """

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 8,
        num_classes: int = 10,
        sigma_data: float = 0.5,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_blocks: int = 1,
        embedding: str = "positional",
        dropout: float = 0.0,
        sigma_min: float = 0.002,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, "
                             f"got {list(channel_mult)}")
        if min(in_channels, resolution, model_channels, num_blocks) < 1:
            raise ValueError("in_channels, resolution, model_channels and num_blocks must be >= 1")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        if not sigma_data > 0 or not sigma_min > 0:
            raise ValueError(f"sigma_data and sigma_min must be > 0, got {sigma_data} and {sigma_min}")
        if model_channels % 2:
            raise ValueError(f"model_channels must be even (noise features come in cos/sin pairs), "
                             f"got {model_channels}")
        self.in_channels, self.resolution = int(in_channels), int(resolution)
        self.num_classes = int(num_classes)
        self.sigma_data, self.sigma_min = float(sigma_data), float(sigma_min)

        emb_channels = 4 * model_channels
        self.map_noise = noise_embedding(embedding, model_channels)
        self.map_layer0 = SampleLinear(model_channels, emb_channels)
        self.map_layer1 = SampleLinear(emb_channels, emb_channels)

        channels = model_channels * channel_mult[0]
        self.conv_in = SampleConv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.blocks.append(Downsample(channels))
            for _ in range(num_blocks):
                self.blocks.append(Block(channels, model_channels * mult, emb_channels, dropout))
                channels = model_channels * mult
        self.norm_out = _norm(channels)
        self.head = SampleLinear(channels, num_classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def _sigma(self, sigma, x: Tensor) -> Tensor:
        """``sigma`` as a ``[B]`` tensor in the weights' dtype (a scalar is broadcast)."""
        dtype = self.head.weight.dtype
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1)
        if sigma.shape[0] == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
        return sigma

    def forward(self, x: Tensor, sigma) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected input [B, {', '.join(map(str, self.shape))}], got {list(x.shape)}")
        dtype = self.head.weight.dtype
        sigma = self._sigma(sigma, x)
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()
        c_noise = sigma.clamp(min=self.sigma_min).log() / 4

        emb = self.map_noise(c_noise).to(dtype)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        h = self.conv_in(x.to(dtype) * c_in[:, None, None, None])
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, Block) else block(h)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Files


def builtin_classifier_path(name: str) -> Path:
    """The file stem of the built-in classifier ``name`` (no suffix)."""
    return Path(__file__).parent / BUILTIN_CLASSIFIERS[name]


def classifier_files(path, classifier: NoiseAwareClassifier, record: dict):
    """``[(weights, writer), (json, writer)]`` for :func:`edm.checkpoint.atomic_write_all`, JSON last."""
    weights, config_path = paths(path)
    state = {k: v.detach().contiguous().cpu() for k, v in classifier.state_dict().items()}
    text = json.dumps({**record, "format": CLASSIFIER_FORMAT}, indent=2, sort_keys=True, allow_nan=False)
    return [(weights, lambda tmp: save_file(state, tmp)),
            (config_path, lambda tmp: Path(tmp).write_text(text + "\n"))]


def save_classifier(path, classifier: NoiseAwareClassifier, record: dict) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically (both in full before either replaces an
    old file; the JSON last). ``record`` holds ``network.kwargs`` and whatever else to keep."""
    files = classifier_files(path, classifier, record)
    atomic_write_all(files)
    return files[0][0], files[1][0]


def _stem(path_or_name) -> Path:
    if isinstance(path_or_name, str) and path_or_name in BUILTIN_CLASSIFIERS:
        return builtin_classifier_path(path_or_name)
    return Path(path_or_name)


def read_classifier_config(path_or_name) -> dict:
    """The JSON record of a classifier (built-in name, NAME, NAME.json or NAME.safetensors)."""
    _, config_path = paths(_stem(path_or_name))
    record = read_record(config_path, CLASSIFIER_FORMAT, "classifier config", ClassifierError)
    network = record.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("kwargs"), dict):
        raise ClassifierError(f"classifier config {config_path} lacks its network.kwargs section")
    return record


def load_classifier(path_or_name, *, device="cpu", dtype=torch.float32) -> NoiseAwareClassifier:
    """The classifier ``digits-classifier`` (built in) or at ``NAME[.json|.safetensors]``, in eval mode
    with frozen parameters, on ``device`` in ``dtype``; its JSON record is its ``config`` attribute.

    A missing, corrupt or mismatched file raises :class:`ClassifierError` with one line naming it.
    """
    stem = _stem(path_or_name)
    weights, config_path = paths(stem)
    record = read_classifier_config(stem)
    if not weights.is_file():
        raise ClassifierError(f"classifier weights not found: {weights}")
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as e:
        raise ClassifierError(f"corrupt classifier weights {weights}: {str(e).splitlines()[0]}") from None
    try:
        classifier = NoiseAwareClassifier(**record["network"]["kwargs"])
        classifier.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ClassifierError(f"classifier {weights} does not fit its config {config_path}: "
                              f"{str(e).strip().splitlines()[0]}") from None
    classifier.config = record
    return classifier.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# Evaluation


def noise_draws(shape: Sequence[int], sigmas: Sequence[float], draws: int, seed: int):
    """``(k, sigma, noise)`` for draw ``d`` at the ``k``-th sigma: standard normals of ``shape`` from a
    generator seeded ``seed + 1000 * k + d`` (float32, on the CPU): the one noise of the accuracy tables,
    whoever classifies it."""
    for k, sigma in enumerate(sigmas):
        for d in range(draws):
            gen = torch.Generator().manual_seed(seed + 1000 * k + d)
            yield k, float(sigma), torch.randn(tuple(shape), generator=gen)


@torch.no_grad()
def accuracy_at_sigma(classifier, images: Tensor, labels: Tensor, sigmas: Sequence[float], *,
                      draws: int = 5, seed: int = 0, batch: int = 1024) -> dict[float, float]:
    """Accuracy on ``images + sigma * n`` for each ``sigma``, over ``draws`` noise draws per image.

    The noise is :func:`noise_draws`' (the whole set per draw, then cast), so the numbers do not depend
    on ``batch`` or the device.
    """
    weight = next(classifier.parameters())
    correct = [0] * len(sigmas)
    for k, sigma, noise in noise_draws(images.shape, sigmas, draws, seed):
        for start in range(0, len(images), batch):
            y = images[start:start + batch]
            x = (y + sigma * noise[start:start + batch]).to(weight.device, weight.dtype)
            logits = classifier(x, sigma)
            correct[k] += int((logits.argmax(1).cpu() == labels[start:start + batch]).sum())
    return {float(sigma): c / (draws * len(images)) if len(images) else math.nan
            for sigma, c in zip(sigmas, correct)}

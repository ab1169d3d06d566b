"""Conditioning kinds of the networks and of training: ``none``, ``class``, ``text``, and the image one.

* ``none``: the network gets no condition;
* ``class``: a one-hot ``class_labels [B, num_classes]`` (all zeros: no class), embedded by a bias-free
  linear map into the conditioning vector (:func:`edm.networks.condition_vector`);
* ``text``: a string, tokenized by :func:`tokenize` into ``text_tokens [B, L]`` (int64; one id per
  character, padded on the right with :data:`PAD`), read by a small :class:`TextEncoder` trained jointly
  with the network (token embedding + learned position embedding + a few transformer layers). Its token
  features are pooled (mean) into the conditioning vector *and* attended to by every block of the UNet
  (cross-attention), so each region of the image can read its own character. The all-pad string is the
  "null" text: a condition-dropped sample during training, the empty prompt at sampling time, and what
  classifier-free guidance pushes away from;
* image (``cond_channels`` of a network): a conditioning image ``cond_image [B, C', H, W]`` of the
  input's size, concatenated to the network's input channels;
* ``low-res``: super-resolution (SR3, CDM): the image average-pooled ``factor`` x ``factor``, noised to a
  level ``sigma_aug`` (conditioning augmentation; CDM's non-truncated Gaussian variant), upsampled back by
  nearest neighbour and concatenated as ``cond_image``; the network also gets ``augment_labels``, the
  level's label :func:`augment_label`, through a second noise-level embedding. Training draws
  ``sigma_aug`` per sample (:class:`NoiseAugmentation`); sampling fixes it (the model's recorded best).

Condition dropout: a network's ``label_dropout`` replaces, in training mode only, a sample's class by
"no class" or its text by the null text with that probability, so one model serves conditional,
unconditional and classifier-free-guided sampling.

:func:`batch_condition` is the one place the training loop asks for a minibatch and its condition: it
returns the images and the network's keyword arguments for the condition kind being trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import sample_rand

__all__ = ["KINDS", "ALPHABET", "PAD", "tokenize", "null_tokens", "TextEncoder", "default_kind",
           "check_kind", "batch_condition", "LOW_RES", "NoiseAugmentation", "downsample", "upsample",
           "augment_label", "low_res_condition"]

#: the super-resolution kind: conditioned on the image pooled ``factor`` times
LOW_RES = "low-res"
#: the conditioning kinds training knows
KINDS = ("none", "class", "text", LOW_RES)

#: characters of the text tokenizer; character ``ALPHABET[i]`` has id ``i``
ALPHABET = "0123456789"
#: the padding id (after the characters); a string of only pads is the null text
PAD = len(ALPHABET)


def tokenize(texts: Sequence[str | None], length: int, alphabet: str = ALPHABET) -> Tensor:
    """``[len(texts), length]`` int64 ids of the characters of each text, padded on the right with the
    pad id ``len(alphabet)``; ``None`` or ``""`` is the null text (all pads). ValueError naming the text
    when it is longer than ``length`` or has a character outside ``alphabet``."""
    pad = len(alphabet)
    ids = torch.full((len(texts), length), pad, dtype=torch.int64)
    for row, text in enumerate(texts):
        text = text or ""
        if len(text) > length:
            raise ValueError(f"text {text!r} has {len(text)} characters; at most {length} fit")
        for col, char in enumerate(text):
            index = alphabet.find(char)
            if index < 0 or len(char) != 1:
                raise ValueError(f"text {text!r} has the character {char!r}, not among {alphabet!r}")
            ids[row, col] = index
    return ids


def null_tokens(batch: int, length: int, pad: int = PAD) -> Tensor:
    """The null text (all pads) for ``batch`` samples."""
    return torch.full((batch, length), pad, dtype=torch.int64)


class TextEncoder(nn.Module):
    """``text_tokens [B, L] -> features [B, L, width]``: token embedding + learned position embedding, then
    ``layers`` pre-norm transformer layers (self-attention over the tokens + MLP) and a final LayerNorm.

    ``vocab`` counts every id including the pad, so the null text has features of its own.
    """

    def __init__(self, vocab: int, length: int, width: int = 64, layers: int = 1, heads: int = 2):
        super().__init__()
        if min(vocab, length, width, heads) < 1 or layers < 0 or width % heads:
            raise ValueError(f"TextEncoder needs vocab, length, width, heads >= 1, layers >= 0 and width "
                             f"divisible by heads (width {width}, heads {heads})")
        self.vocab, self.length, self.width = int(vocab), int(length), int(width)
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.length or tokens.is_floating_point():
            raise ValueError(f"text_tokens must be an integer tensor [B, {self.length}], "
                             f"got {tokens.dtype} {list(tokens.shape)}")
        h = self.token(tokens) + self.position
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


def drop_text(tokens: Tensor, probability: float, pad: int) -> Tensor:
    """``tokens`` with each row replaced by the null text with ``probability`` (condition dropout)."""
    drop = sample_rand((tokens.shape[0], 1), device=tokens.device) < probability  # rows of a global draw
    return torch.where(drop, torch.full_like(tokens, pad), tokens)


# ---------------------------------------------------------------------------------------------------
# Super-resolution: the low-resolution image and its noise augmentation

#: levels below this one share its label (a clean low-resolution image: ``sigma_aug = 0``)
AUGMENT_FLOOR = 1e-3


def downsample(images: Tensor, factor: int) -> Tensor:
    """``images`` average-pooled ``factor`` x ``factor`` (the low-resolution version)."""
    return F.avg_pool2d(images, int(factor))


def upsample(low: Tensor, factor: int) -> Tensor:
    """``low`` upsampled ``factor`` times by nearest neighbour (so ``downsample(upsample(x))`` is ``x``,
    to round-off)."""
    return F.interpolate(low, scale_factor=int(factor), mode="nearest")


def augment_label(sigma_aug: Tensor) -> Tensor:
    """The second noise label: ``ln(max(sigma_aug, AUGMENT_FLOOR)) / 4``, EDM's ``c_noise`` of the level."""
    return torch.as_tensor(sigma_aug).clamp_min(AUGMENT_FLOOR).log() / 4


def low_res_condition(low: Tensor, factor: int, sigma_aug, noise: Tensor) -> dict[str, Tensor]:
    """The network's keyword arguments for low-resolution images ``low [B, C, h, w]`` noised to
    ``sigma_aug`` (a number or ``[B]``) with ``noise`` (standard normal, ``low``'s shape):
    ``{"cond_image": upsample(low + sigma_aug noise), "augment_labels": augment_label(sigma_aug)}``."""
    sigma_aug = torch.as_tensor(sigma_aug, dtype=low.dtype, device=low.device).reshape(-1)
    sigma_aug = sigma_aug.expand(low.shape[0]) if sigma_aug.numel() == 1 else sigma_aug
    noised = low + sigma_aug.reshape(-1, 1, 1, 1) * noise.to(low.dtype)
    return {"cond_image": upsample(noised, factor), "augment_labels": augment_label(sigma_aug)}


class NoiseAugmentation:
    """The training distribution of ``sigma_aug``: 0 (a clean input) with probability ``zero``, else
    log-uniform on ``[low, high]``, so one model serves every level from clean to heavily noised."""

    def __init__(self, high: float = 1.0, low: float = 0.01, zero: float = 0.25):
        if not 0 < low < high or not 0 <= zero <= 1:
            raise ValueError(f"noise augmentation needs 0 < low < high and zero in [0, 1] (low {low:g}, "
                             f"high {high:g}, zero {zero:g})")
        self.high, self.low, self.zero = float(high), float(low), float(zero)

    def record(self) -> dict:
        return {"high": self.high, "low": self.low, "zero": self.zero}

    def draw(self, batch: int, generator: torch.Generator) -> Tensor:
        """``[batch]`` levels (float32, on the generator's device)."""
        clean = torch.rand(batch, generator=generator, device=generator.device) < self.zero
        u = torch.rand(batch, generator=generator, device=generator.device)
        levels = torch.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return torch.where(clean, torch.zeros_like(levels), levels)


# ---------------------------------------------------------------------------------------------------
# Training: which kind a dataset trains, and the condition of a minibatch


def default_kind(dataset) -> str:
    """The kind a dataset trains by default: ``text`` for a text dataset, ``class`` for a labelled one,
    else ``none``."""
    if getattr(dataset, "text_length", 0):
        return "text"
    return "class" if dataset.labels is not None and dataset.num_classes else "none"


def check_kind(dataset, kind: str, factor: int | None = None) -> None:
    """ValueError (one line) when ``dataset`` cannot train conditioning ``kind`` (``low-res``: pooled
    ``factor`` times)."""
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning {kind!r}; valid: {', '.join(KINDS)}")
    if kind == LOW_RES:
        _check_factor(dataset, factor)
        return
    if factor is not None:
        raise ValueError(f"factor applies to conditioning {LOW_RES!r} only, not {kind!r}")
    own = default_kind(dataset)
    if kind == "none" or kind == own:
        return
    has = {"text": "texts", "class": "class labels", "none": "no labels"}[own]
    raise ValueError(f"conditioning {kind!r} needs a dataset with "
                     f"{'texts' if kind == 'text' else 'class labels'}; {dataset.name} has {has}")


def _check_factor(dataset, factor) -> None:
    if getattr(dataset, "text_length", 0):
        raise ValueError(f"conditioning {LOW_RES!r} needs an image dataset; {dataset.name} is a text one")
    if factor is None or int(factor) < 2:
        raise ValueError(f"conditioning {LOW_RES!r} needs a factor >= 2, got {factor}")
    _, height, width = dataset.shape
    if height % factor or width % factor:
        raise ValueError(f"{dataset.name}'s images are {height}x{width}, not divisible by factor {factor}")


def batch_condition(dataset, kind: str, batch: int, generator: torch.Generator, device=None,
                    factor: int | None = None, augmentation: NoiseAugmentation | None = None
                    ) -> tuple[Tensor, dict]:
    """``(images, cond)``: a random minibatch of ``batch`` training images and the network's keyword
    arguments for conditioning ``kind`` (``{}``, ``{"class_labels": one-hot}``, ``{"text_tokens": ids}``,
    or for ``low-res`` :func:`low_res_condition` of the images pooled ``factor`` times, each noised to a
    level drawn from ``augmentation``).

    Image datasets draw ``batch`` distinct samples with ``torch.randperm`` from ``generator``; a text
    dataset draws (renders) its own strings with ``dataset.draw(batch, generator)``; the levels and noise
    of the augmentation come from ``generator`` too, after the samples.
    """
    if getattr(dataset, "text_length", 0):
        images, texts = dataset.draw(batch, generator)
        cond = {"text_tokens": tokenize(texts, dataset.text_length).to(device)} if kind == "text" else {}
        return images.to(device), cond
    index = torch.randperm(len(dataset), generator=generator)[:batch].to(device)
    images = dataset.images.to(device)[index]
    cond = {}
    if kind == "class":
        labels = dataset.labels.to(device)[index]
        cond["class_labels"] = F.one_hot(labels, dataset.num_classes).to(images.dtype)
    if kind == LOW_RES:
        low = downsample(images, factor)
        sigma_aug = (augmentation or NoiseAugmentation()).draw(batch, generator)
        noise = torch.randn(low.shape, generator=generator, device=generator.device)
        cond = low_res_condition(low, factor, sigma_aug.to(images.device), noise.to(images.device))
    return images, cond

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
  input's size, concatenated to the network's input channels (super-resolution's low-resolution image).

Condition dropout: a network's ``label_dropout`` replaces, in training mode only, a sample's class by
"no class" or its text by the null text with that probability, so one model serves conditional,
unconditional and classifier-free-guided sampling.

:func:`batch_condition` is the one place the training loop asks for a minibatch and its condition: it
returns the images and the network's keyword arguments for the condition kind being trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import sample_rand

__all__ = ["KINDS", "ALPHABET", "PAD", "tokenize", "null_tokens", "TextEncoder", "default_kind",
           "check_kind", "batch_condition"]

#: the conditioning kinds training knows
KINDS = ("none", "class", "text")

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
# Training: which kind a dataset trains, and the condition of a minibatch


def default_kind(dataset) -> str:
    """The kind a dataset trains by default: ``text`` for a text dataset, ``class`` for a labelled one,
    else ``none``."""
    if getattr(dataset, "text_length", 0):
        return "text"
    return "class" if dataset.labels is not None and dataset.num_classes else "none"


def check_kind(dataset, kind: str) -> None:
    """ValueError (one line) when ``dataset`` cannot train conditioning ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning {kind!r}; valid: {', '.join(KINDS)}")
    own = default_kind(dataset)
    if kind == "none" or kind == own:
        return
    has = {"text": "texts", "class": "class labels", "none": "no labels"}[own]
    raise ValueError(f"conditioning {kind!r} needs a dataset with "
                     f"{'texts' if kind == 'text' else 'class labels'}; {dataset.name} has {has}")


def batch_condition(dataset, kind: str, batch: int, generator: torch.Generator,
                    device=None) -> tuple[Tensor, dict]:
    """``(images, cond)``: a random minibatch of ``batch`` training images and the network's keyword
    arguments for conditioning ``kind`` (``{}``, ``{"class_labels": one-hot}``, ``{"text_tokens": ids}``).

    Image datasets draw ``batch`` distinct samples with ``torch.randperm`` from ``generator``; a text
    dataset draws (renders) its own strings with ``dataset.draw(batch, generator)``.
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
    return images, cond

"""``digits-text``: strings of 1 to 5 digits drawn with the 8x8 digits glyphs, for text-to-image training.

A string of ``k`` characters is rendered left to right, one 8x8 glyph per character, centred in a
``1 x 8 x 40`` canvas filled with the background value -1: character ``i`` occupies columns
``4 (5 - k) + 8 i`` to ``4 (5 - k) + 8 i + 7`` (:func:`column_of`). Glyphs are images of
:func:`edm.data.load_digits` in pixel space [-1, 1].

Training draws strings on the fly (:meth:`DigitsText.draw`): length uniform in 1..5, digits uniform,
each character a random *training* glyph of its digit (indices ``< TRAIN_GLYPHS`` of the digits data;
the rest are held out), never one of the :data:`HELD_OUT` strings, which the evaluation uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .conditions import ALPHABET
from .data import DIGITS_TRAIN, load_digits, register_dataset

__all__ = ["DigitsText", "HELD_OUT", "TRAIN_GLYPHS", "MAX_LENGTH", "HEIGHT", "WIDTH", "GLYPH",
           "column_of", "render", "is_digit_string", "load_digits_text"]

MAX_LENGTH = 5
GLYPH = 8
HEIGHT, WIDTH = GLYPH, GLYPH * MAX_LENGTH
#: digits images with an index below this are training glyphs; the others are held out
TRAIN_GLYPHS = DIGITS_TRAIN
#: strings never drawn in training, one of each length (the evaluation's prompts)
HELD_OUT = ("7", "38", "905", "2024", "61537")
BACKGROUND = -1.0


def is_digit_string(text) -> bool:
    """True for a string of 1 to :data:`MAX_LENGTH` characters among '0'-'9'."""
    return isinstance(text, str) and 1 <= len(text) <= MAX_LENGTH and all(c in ALPHABET for c in text)


def column_of(length: int, position: int) -> int:
    """First canvas column of character ``position`` of a string of ``length`` characters."""
    return (GLYPH // 2) * (MAX_LENGTH - length) + GLYPH * position


def render(glyphs: Sequence[Tensor]) -> Tensor:
    """The ``[1, 8, 40]`` canvas holding the ``[1, 8, 8]`` (or ``[8, 8]``) ``glyphs`` left to right,
    centred."""
    if not 1 <= len(glyphs) <= MAX_LENGTH:
        raise ValueError(f"a canvas holds 1 to {MAX_LENGTH} glyphs, got {len(glyphs)}")
    canvas = torch.full((1, HEIGHT, WIDTH), BACKGROUND)
    for i, glyph in enumerate(glyphs):
        start = column_of(len(glyphs), i)
        canvas[0, :, start:start + GLYPH] = glyph.reshape(GLYPH, GLYPH)
    return canvas


class DigitsText:
    """The ``digits-text`` training set: renders random strings of training glyphs (see the module doc).

    Quacks like :class:`edm.data.Dataset` where training needs it (``name``, ``shape``, ``labels``,
    ``num_classes``, ``std``, ``len``), plus ``text_length`` (the tokenizer's length) and
    :meth:`draw`.
    """

    name = "digits-text"
    labels = None
    num_classes = 0
    class_names = None
    text_length = MAX_LENGTH
    held_out = HELD_OUT

    def __init__(self, glyphs: Tensor, glyph_labels: Tensor):
        self.glyphs = glyphs  # [N, 1, 8, 8] training glyphs
        self.by_digit = [torch.nonzero(glyph_labels == d).reshape(-1) for d in range(10)]
        self._std = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, HEIGHT, WIDTH)

    def __len__(self) -> int:  # distinct training strings
        return sum(10**k for k in range(1, MAX_LENGTH + 1)) - len(HELD_OUT)

    def render_text(self, text: str, generator: torch.Generator | None = None) -> Tensor:
        """``text`` drawn with a random training glyph per character."""
        picks = []
        for char in text:
            pool = self.by_digit[int(char)]
            picks.append(self.glyphs[pool[torch.randint(len(pool), (), generator=generator)]])
        return render(picks)

    def random_text(self, generator: torch.Generator | None = None) -> str:
        """A random training string: length uniform in 1..5, digits uniform, never a held-out string."""
        while True:
            length = int(torch.randint(1, MAX_LENGTH + 1, (), generator=generator))
            digits = torch.randint(10, (length,), generator=generator)
            text = "".join(ALPHABET[int(d)] for d in digits)
            if text not in HELD_OUT:
                return text

    def draw(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, list[str]]:
        """``(images [batch, 1, 8, 40], texts)`` of ``batch`` random training strings."""
        texts = [self.random_text(generator) for _ in range(batch)]
        return torch.stack([self.render_text(t, generator) for t in texts]), texts

    def std(self) -> float:
        """Standard deviation of the pixels of 4096 strings drawn with a fixed seed."""
        if self._std is None:
            images, _ = self.draw(4096, torch.Generator().manual_seed(0))
            self._std = float(images.double().std())
        return self._std


@register_dataset("digits-text")
def load_digits_text() -> DigitsText:
    digits = load_digits()
    return DigitsText(digits.images[:TRAIN_GLYPHS], digits.labels[:TRAIN_GLYPHS])

"""Text models of our own checkpoints (``"condition": {"kind": "text", ...}`` in the JSON, as
``edm train`` writes it for a text dataset such as ``digits-text``): prompts are strings of characters
of the model's alphabet, one token per character (:func:`edm.conditions.tokenize`).

:class:`CharacterConditioner` implements :class:`tools.models.base.TextConditioner`:
``encode(prompts, height=, width=)`` gives ``{"text_tokens": [B, length]}``; a prompt of ``None`` (no
``--negative-prompt``) or ``""`` is the null text the model was trained with for condition dropout,
as the empty prompt is Stable Diffusion's default negative. :class:`TextDenoiser` is the model's
``D(x, sigma, text_tokens=None)`` (None: the null text).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tools.common import BadInput

from .base import ClasslessDenoiser

__all__ = ["CharacterConditioner", "TextDenoiser"]

_FLAG_PARAMS = {"prompt": "prompt", "prompts": "prompts", "negative_prompt": "negative prompt"}


class CharacterConditioner:
    """Prompts of 1 to ``length`` characters of ``alphabet`` -> ``{"text_tokens": ids}``."""

    keys = ("text_tokens",)

    def __init__(self, alphabet: str, length: int, min_length: int = 1):
        self.alphabet, self.length, self.min_length = str(alphabet), int(length), int(min_length)

    def describe(self) -> str:
        """What a prompt must be, e.g. ``1 to 5 digits``."""
        what = "digits" if self.alphabet == "0123456789" else f"characters of {self.alphabet!r}"
        return f"{self.min_length} to {self.length} {what}"

    def problem(self, prompt: str | None) -> str | None:
        """Why ``prompt`` is not one this model draws (None when it is); None and ``""`` are the null text."""
        if not prompt:
            return None
        if not self.min_length <= len(prompt) <= self.length or any(c not in self.alphabet for c in prompt):
            return f"must be {self.describe()}"
        return None

    def check_prompt(self, prompt: str | None, param: str = "prompt") -> None:
        """BadInput (one line, naming ``param``'s flag) when ``prompt`` is not one this model draws."""
        why = self.problem(prompt)
        if why is not None:
            raise BadInput(f"{_FLAG_PARAMS.get(param, 'prompt')} {prompt!r} {why}", param)

    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]:
        from edm.conditions import tokenize

        for prompt in prompts:
            self.check_prompt(prompt)
        return {"text_tokens": tokenize(list(prompts), self.length, self.alphabet)}


class TextDenoiser(ClasslessDenoiser):
    """``D(x, sigma, text_tokens=None)`` of a text-conditioned checkpoint; ``text_tokens`` ``[B, length]``
    (or ``[1, length]``, broadcast), None for the null text; no class labels."""

    what = "text-to-image model"
    takes = "prompts"

    def __init__(self, inner, length: int, pad: int):
        super().__init__(inner)
        self.length, self.pad = int(length), int(pad)

    def forward(self, x: Tensor, sigma, class_labels=None, text_tokens=None, **network) -> Tensor:
        self.refuse_classes(class_labels)
        if text_tokens is None:
            text_tokens = torch.full((1, self.length), self.pad, dtype=torch.int64)
        text_tokens = torch.as_tensor(text_tokens, device=x.device)
        if text_tokens.ndim != 2 or text_tokens.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"text_tokens must be [{x.shape[0]}, {self.length}] (or [1, {self.length}]), "
                             f"got {list(text_tokens.shape)}")
        return self.evaluate(x, sigma, text_tokens=text_tokens.expand(x.shape[0], -1), **network)

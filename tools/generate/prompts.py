"""Text conditioning of a run: the prompt(s), the negative prompt and the image size of a text-to-image
model, checked once for every command that samples.

:class:`tools.request.Prompting` is the plain-data request (what ``--prompt``, ``--negative-prompt``,
``--prompts``, ``--width`` and ``--height`` say); :func:`check_prompting` turns it, for a loaded model,
into :class:`Prompts`, which gives each seed its prompt and encodes a batch with the model's own
conditioner (``LoadedModel.conditioner``).

Which prompt a seed gets: with ``--prompts FILE`` (one prompt per line, blank lines skipped) the k-th
seed of the run's seed list gets line k, cycling when there are more seeds than lines. The prompt is a
property of the seed's place in the list, not of the batch or the process, so images stay per-seed
reproducible under any ``--batch`` or ``torchrun``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tools.common import BadInput, existing_file, one_line
from tools.request import Prompting

__all__ = ["Prompting", "Prompts", "check_prompting", "guidance_or_default", "read_prompts"]


def read_prompts(path) -> list[str]:
    """The prompts of a file, one per line (blank lines skipped); BadInput names ``--prompts``."""
    path = existing_file(path, "prompt file", "prompts")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no part of a prompt
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the prompt file {path}: {one_line(e)}", "prompts") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise BadInput(f"prompt file {path} holds no prompt (one per line)", "prompts")
    return lines


@dataclass
class Prompts:
    """Checked prompts of a text model: the per-seed prompt and the encoded conditioning of a batch."""

    lines: list[str]
    negative: str | None  # None: the pipeline's own default negative (empty, or zeros for SDXL)
    height: int
    width: int
    conditioner: Any = field(repr=False)
    _position: dict[int, int] = field(default_factory=dict, repr=False)
    _cache: dict[tuple, dict] = field(default_factory=dict, repr=False)

    def assign(self, seeds: Sequence[int]) -> None:
        """Fix the run's seed list: the k-th seed gets prompt line k (cycling)."""
        self._position = {int(s): k for k, s in enumerate(seeds)}

    def prompt_of(self, seed: int) -> str:
        if len(self.lines) == 1:
            return self.lines[0]
        k = self._position.get(int(seed))
        if k is None:
            raise BadInput(f"seed {seed} has no place in this run's seed list, so no prompt from --prompts",
                           "seeds")
        return self.lines[k % len(self.lines)]

    def _encode(self, prompts: tuple, device, dtype) -> dict[str, torch.Tensor]:
        key = (prompts, str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            with torch.no_grad():
                encoded = self.conditioner.encode(list(prompts), height=self.height, width=self.width)
            cached = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                      for k, v in encoded.items()}
            if len(self._cache) > 64:  # a long --prompts file: keep memory bounded
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def cond(self, seeds: Sequence[int], device, dtype) -> dict[str, torch.Tensor]:
        """The conditioning of a batch: each seed's prompt, encoded (one encoder pass per distinct batch)."""
        return self._encode(tuple(self.prompt_of(s) for s in seeds), device, dtype)

    def first_cond(self, device, dtype) -> dict[str, torch.Tensor]:
        """The first prompt encoded (one sample): what a check of the model evaluates it with."""
        return self._encode((self.lines[0],), device, dtype)

    def negative_cond(self, device, dtype) -> dict[str, torch.Tensor]:
        """Classifier-free guidance's negative condition: the negative prompt encoded once, with a leading
        dimension of 1 that guidance broadcasts over the batch."""
        return self._encode((self.negative,), device, dtype)

    def truncated(self) -> list[str]:
        """The prompts (and negative prompt) the model's tokenizers cut short, as diffusers does."""
        check = getattr(self.conditioner, "truncated", None)
        texts = [*self.lines, *([self.negative] if self.negative else [])]
        return [] if check is None else [text for text in dict.fromkeys(texts) if check(text)]

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"prompts": list(self.lines), "height": self.height, "width": self.width}
        if self.negative is not None:
            record["negative_prompt"] = self.negative
        return record


def check_prompting(prompting: Prompting | None, model, resize) -> tuple[Any, Prompts | None]:
    """``(model, prompts)``: the model at the asked size (``resize(model, height, width)``) and its checked
    prompts (None for a model without text). BadInput, naming the flag, for a prompt given to a model
    without text, a text model without one, both --prompt and --prompts, or a size the model cannot take.
    """
    p = prompting or Prompting()
    conditioner = getattr(model, "conditioner", None)
    if conditioner is None:
        for key in ("prompt", "negative_prompt", "prompts"):
            if getattr(p, key) is not None:
                raise BadInput(f"this model takes no text (it is conditioned on "
                               f"{'a class' if model.num_classes else 'nothing'})", key)
        for key in ("width", "height"):
            if getattr(p, key) is not None:
                c, h, w = getattr(model, "image_shape", model.shape)  # a latent model's decoded size
                raise BadInput(f"this model makes {w}x{h} images only (width x height)", key)
        return model, None
    if p.prompt is not None and p.prompts is not None:
        raise BadInput("give --prompt or --prompts (a file of prompts), not both", "prompts")
    if p.prompt is None and p.prompts is None:
        raise BadInput("this is a text-to-image model: give --prompt TEXT or --prompts FILE", "prompt")
    lines = [p.prompt] if p.prompt is not None else read_prompts(p.prompts)
    check = getattr(conditioner, "check_prompt", None)
    if check is not None:  # a model that checks its prompts (our character models) says which is wrong
        for line in lines:
            check(line, "prompt" if p.prompt is not None else "prompts")
        check(p.negative_prompt, "negative_prompt")
    if p.width is not None or p.height is not None:
        model = resize(model, p.height, p.width)
    c, h, w = model.image_shape
    return model, Prompts(lines=lines, negative=p.negative_prompt, height=int(h), width=int(w),
                          conditioner=conditioner)


def guidance_or_default(guidance, model, prompts: Prompts | None, steering=None):
    """``guidance`` as given; None is the pipeline's own default (its guidance_scale - 1) for a text model,
    and for a class-conditional pipeline (DiT) sampled with its class (``steering`` asks for neither
    ``--unconditional`` nor ``--guide-model``), and for a model that takes the weight as an input (its
    recorded default); 0 (no guidance) for any other model."""
    if guidance is not None:
        return guidance
    default = getattr(model, "default_guidance", None)
    if default is not None and getattr(model, "guidance_input", None) is not None:
        return default
    with_class = bool(getattr(model, "num_classes", 0)) and not (
        steering is not None and (steering.unconditional or steering.guide_model is not None))
    return default if default is not None and (prompts is not None or with_class) else 0.0

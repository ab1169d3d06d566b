"""A super-resolution model's low-resolution input, checked once (``--low-res``, ``--noise-aug``,
``--noise-level``): :func:`check_low_res` -> :class:`LowResInput`, whose :meth:`LowResInput.cond` gives a
batch's keyword arguments through the model's conditioner (``tools.models.base.LowResConditioner``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tools.common import BadInput
from tools.steering.edit import SeedImages, load_seed_images
from tools.steering.given import file_identity

__all__ = ["LEVEL_FLAGS", "LowResInput", "check_low_res"]

#: the request fields that set a conditioner's level; a model takes the one its ``level_flag`` names
LEVEL_FLAGS = ("noise_aug", "noise_level")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class LowResInput:
    """The checked low-resolution input: the conditioner, its level, and the images per seed (None: a
    cascade's previous stage gives them to each batch)."""

    conditioner: Any
    level: float
    images: SeedImages | None

    def check_seeds(self, seeds: Sequence[int]) -> None:
        if self.images is not None:
            self.images.check_seeds(seeds)

    def cond(self, seeds: Sequence[int], device, dtype, low_res: torch.Tensor | None = None) -> dict:
        """The denoiser's keyword arguments of ``seeds``: their images (``low_res`` ``[B, C, h, w]`` in
        [-1, 1] when given, else the source's) encoded at the level with each seed's noise."""
        if low_res is None:
            if self.images is None:
                raise ValueError("this super-resolution stage needs its low-resolution images (low_res)")
            low_res = self.images.for_seeds(seeds, device, dtype)
        expected = (len(seeds), *self.conditioner.shape)
        if tuple(low_res.shape) != expected:
            raise ValueError(f"low_res must be {list(expected)}, got {list(low_res.shape)}")
        return self.conditioner.encode(low_res.to(device=device, dtype=dtype), self.level, list(seeds))

    def record(self) -> dict[str, Any]:
        """The record of settings' entry: the source (a PNG's path and content hash, a folder's path, or
        the previous stage) and the level under its flag's name."""
        if self.images is None:
            source = "the base stage's images"
        else:
            source = file_identity(self.images.path)
        return {"source": source, self.conditioner.level_flag: self.level}

    def describe(self) -> str:
        return f"low-res input, {_flag(self.conditioner.level_flag)} {self.level:g}"


def check_low_res(request, model, staged: bool = False) -> LowResInput | None:
    """The low-resolution input ``request`` gives ``model`` (after the model's size is final); BadInput
    naming the flag when a super-resolution model has none (unless ``staged``: a cascade's stage, fed by
    the stage before), when a model that takes none is given one or a level, or when the level flag is
    not the model's."""
    conditioner = getattr(model, "low_res", None)
    levels = {name: getattr(request, name) for name in LEVEL_FLAGS if getattr(request, name) is not None}
    if conditioner is None:
        given = ["low_res"] if request.low_res is not None else []
        given += list(levels)
        if given:
            raise BadInput(f"model {model.source} is not a super-resolution model: it takes no "
                           f"low-resolution image (drop {_flag(given[0])})", given[0])
        return None
    c, h, w = conditioner.shape
    wrong = [name for name in levels if name != conditioner.level_flag]
    if wrong:
        raise BadInput(f"model {model.source} takes {_flag(conditioner.level_flag)}, not {_flag(wrong[0])}, "
                       "for the level of its low-resolution input", wrong[0])
    level = conditioner.check_level(levels.get(conditioner.level_flag, conditioner.default_level))
    if staged:
        if request.low_res is not None:
            raise BadInput("--low-res and --sr-model exclude each other: the super-resolution stage's input "
                           "is the base model's images", "low_res")
        return LowResInput(conditioner, level, None)
    if request.low_res is None:
        raise BadInput(f"model {model.source} is a super-resolution model: give --low-res PATH (a "
                       f"{c}x{h}x{w} PNG for every seed, or a folder of NNNNNN.png per seed)", "low_res")
    images = load_seed_images(request.low_res, conditioner.shape, "low-res image", "low_res",
                              whose="the model's low-resolution inputs", hint=f"a {c}x{h}x{w} PNG, or a "
                              "folder of NNNNNN.png per seed")
    return LowResInput(conditioner, level, images)

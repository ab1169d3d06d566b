"""Super-resolution checkpoints of our own (``"condition": {"kind": "low-res", ...}`` in the JSON, as
``edm train --cond low-res --factor F`` writes it): the network sees the low-resolution image, noised to a
level ``sigma_aug`` (conditioning augmentation), upsampled ``factor`` times and concatenated to its input,
and the level's label through a second noise embedding (:func:`edm.conditions.low_res_condition`).

:class:`CheckpointLowRes` implements :class:`tools.models.base.LowResConditioner` for them (its level is
``--noise-aug``, default the checkpoint's recorded ``sampling.noise_aug``, else 0); :class:`LowResDenoiser`
is the model's ``D(x, sigma, cond_image=, augment_labels=)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from samplers.noise import AUGMENT_STREAM, stream_seed
from tools.common import BadInput

from .base import ClasslessDenoiser

__all__ = ["CheckpointLowRes", "LowResDenoiser", "augment_noise"]


def augment_noise(seeds: Sequence[int], shape: Sequence[int], device, dtype) -> Tensor:
    """``[len(seeds), *shape]`` standard normal noise, row ``i`` the first float32 draw of seed ``i``'s
    augmentation stream (``samplers.noise.AUGMENT_STREAM``), on the CPU (the same numbers on every device),
    then moved to ``device`` and cast to ``dtype``."""
    generators = [torch.Generator().manual_seed(stream_seed(int(s), AUGMENT_STREAM)) for s in seeds]
    rows = [torch.randn((1, *shape), generator=gen) for gen in generators]
    return torch.cat(rows).to(device=device, dtype=dtype)


class CheckpointLowRes:
    """The low-resolution input of our super-resolution checkpoints (``--low-res``, ``--noise-aug``)."""

    level_flag = "noise_aug"

    def __init__(self, shape: Sequence[int], factor: int, default_level: float = 0.0):
        self.shape = tuple(int(s) for s in shape)
        self.factor = int(factor)
        self.default_level = float(default_level)

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"a {c}x{h}x{w} low-resolution image (--low-res), upsampled {self.factor}x; --noise-aug "
                f"default {self.default_level:g}")

    def check_level(self, level) -> float:
        try:
            value = float(level)
        except (TypeError, ValueError):
            raise BadInput(f"--noise-aug must be a number, got {level!r}", self.level_flag) from None
        if not math.isfinite(value) or value < 0:
            raise BadInput(f"--noise-aug is the augmentation's sigma: a finite number >= 0, got {value:g}",
                           self.level_flag)
        return value

    def encode(self, images: Tensor, level: float, seeds: Sequence[int]) -> dict[str, Tensor]:
        from edm.conditions import low_res_condition

        if tuple(images.shape[1:]) != self.shape or images.shape[0] != len(seeds):
            expected = [len(seeds), *self.shape]
            raise ValueError(f"low-resolution images must be {expected}, got {list(images.shape)}")
        noise = augment_noise(seeds, self.shape, images.device, images.dtype)
        return low_res_condition(images, self.factor, level, noise)


class LowResDenoiser(ClasslessDenoiser):
    """``D(x, sigma, cond_image=, augment_labels=)`` of a super-resolution checkpoint (the keyword arguments
    of :meth:`CheckpointLowRes.encode`, both required); no class labels."""

    what = "super-resolution model"
    takes = "a low-resolution image"

    def forward(self, x: Tensor, sigma, class_labels=None, cond_image=None, augment_labels=None,
                **network) -> Tensor:
        self.refuse_classes(class_labels)
        if cond_image is None or augment_labels is None:
            raise ValueError("this super-resolution model needs its low-resolution image (cond_image and "
                             "augment_labels)")
        return self.evaluate(x, sigma, cond_image=cond_image, augment_labels=augment_labels, **network)

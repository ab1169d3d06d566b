"""``--mask PATH`` and ``--resample JUMP,COUNT``: inpainting of the init image's white mask region, with
RePaint's resampling (Lugmayr et al. 2022). The mask joins ``settings["edit"]``; the resampling is
``settings["resample"]``, which the run's sampler reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tools.common import BadInput, existing_file

from .kind import Checking, Flag, SteeringKind

__all__ = ["InpaintingKind", "parse_resample"]


def parse_resample(value) -> tuple[int, int]:
    """``"JUMP,COUNT"`` or a pair -> ``(jump, count)``, both positive; BadInput otherwise."""
    if isinstance(value, str):
        value = value.split(",")
    try:
        jump, count = (int(v) for v in value)
    except (TypeError, ValueError):
        raise BadInput(f"resample must be JUMP,COUNT (two positive integers), got {value!r}",
                       "resample") from None
    if jump < 1 or count < 1:
        raise BadInput(f"resample must be JUMP,COUNT (two positive integers), got {jump},{count}", "resample")
    return jump, count


class InpaintingKind(SteeringKind):
    """The mask (white generates, black keeps the init image) and RePaint's resampling."""

    name = "inpainting"
    flags = (
        Flag("mask", "Editing", type=Path, metavar="PATH",
             help="Inpainting mask PNG, same size as the images: white generates, black keeps the init "
                  "image."),
        Flag("resample", "Editing", metavar="JUMP,COUNT",
             help="RePaint resampling for --mask: solve each part of JUMP steps COUNT times, jumping back up "
                  "in noise in between (COUNT times the NFE)."),
    )

    def requires(self, c: Checking) -> None:
        c.requires("mask", c.given("init_image"),
                   "needs --init-image (the image whose black region it keeps)")
        c.requires("resample", c.given("mask"), "is RePaint's resampling for inpainting: it needs --mask")

    def check(self, c: Checking) -> None:
        edit = c.settings.get("edit")
        if c.given("mask") and edit is not None:
            from .edit import load_mask

            path = existing_file(c.steering.mask, "mask", "mask")
            c.settings["edit"] = dataclasses.replace(edit, mask=load_mask(path, edit.shape))
        if c.given("resample"):
            c.settings["resample"] = parse_resample(c.steering.resample)

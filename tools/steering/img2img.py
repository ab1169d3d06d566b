"""``--init-image PATH`` and ``--strength S``: img2img, the run starting part-way down the schedule from an
init image noised to that level (diffusers' rule); the images are ``settings["edit"]``
(:class:`tools.steering.edit.EditImages`), which the run's start reads."""

from __future__ import annotations

import math
from pathlib import Path

from tools.common import BadInput

from .kind import Checking, Flag, SteeringKind
from .parse import number

__all__ = ["Img2ImgKind", "check_run_steps"]


def check_run_steps(edit, steps: int, steps_flag: str) -> None:
    """BadInput naming --strength when an img2img ``edit`` (``tools.steering.edit.EditImages`` or None) of
    ``steps`` runs no step (floor(steps x strength) = 0), saying how far to raise --strength or the flag
    that set the steps (``steps_flag``: ``"steps"``, or ``"nfe"`` for a budget); the strength alone cannot
    say it, as the steps are known only once the schedule is."""
    if edit is None or int(steps * edit.strength) >= 1:
        return
    strength = edit.strength
    lowest = math.ceil(10_000 / steps) / 10_000  # rounded up: 1/steps shown rounded down would still fail
    needed = math.ceil(1 / strength)
    needed += int(needed * strength) < 1  # 1/strength may round below the count it stands for
    raise_steps = (f"--steps to at least {needed}" if steps_flag == "steps"
                   else f"--{steps_flag} until the sampler takes at least {needed} steps")
    floor = f"floor({steps} x {strength:g}) = 0"
    raise BadInput(f"strength {strength:g} of {steps} steps runs no step ({floor}): raise --strength to at "
                   f"least {lowest:g}, or {raise_steps}", "strength")


class Img2ImgKind(SteeringKind):
    """The init image (one PNG, or a folder of one per seed) and the strength."""

    name = "img2img"
    flags = (
        Flag("init_image", "Editing", type=Path, metavar="PATH",
             help="img2img / inpainting: one PNG for every seed, or a folder of NNNNNN.png per seed as `edm "
                  "generate` writes them; same size and channels as the model's images."),
        Flag("strength", "Editing", type=float, metavar="S",
             help="img2img strength in (0, 1]: run the last floor(S x steps) steps from the init image "
                  "noised to that level (diffusers' rule); 1 is plain generation.  [default: 1]"),
    )

    def requires(self, c: Checking) -> None:
        c.requires("strength", c.given("init_image"), "needs --init-image")

    def check(self, c: Checking) -> None:
        if not c.given("init_image"):
            return
        from .edit import load_init

        strength = c.steering.strength
        strength = 1.0 if strength is None else number(strength, "strength", "strength", 0, 1, low_open=True)
        shape = getattr(c.model, "image_shape", c.model.shape)
        c.settings["edit"] = load_init(c.steering.init_image, shape, strength)

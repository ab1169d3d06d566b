"""``--init-image PATH`` and ``--strength S``: img2img, the run starting part-way down the schedule from an
init image noised to that level (diffusers' rule); the images are ``settings["edit"]``
(:class:`tools.steering.edit.EditImages`), which the run's start reads."""

from __future__ import annotations

from pathlib import Path

from .kind import Checking, Flag, SteeringKind
from .parse import number

__all__ = ["Img2ImgKind"]


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

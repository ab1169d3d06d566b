"""``--guidance-rescale PHI``: classifier-free guidance's rescale (Lin et al. 2024), read by
:mod:`tools.steering.cfg`."""

from __future__ import annotations

from .cfg import classifier_free
from .kind import Checking, Flag, SteeringKind
from .parse import number

__all__ = ["GuidanceRescaleKind"]


class GuidanceRescaleKind(SteeringKind):
    """The rescale weight phi in [0, 1], as ``settings["rescale"]``."""

    name = "guidance-rescale"
    flags = (Flag("guidance_rescale", "Guidance", type=float, metavar="PHI",
                  help="CFG rescale (Lin et al. 2024): match the guided x0's std to the conditional one's, "
                       "mixed with weight PHI in [0, 1]."),)

    def requires(self, c: Checking) -> None:
        c.requires("guidance_rescale", classifier_free(c), "rescales classifier-free guidance: give "
                   "--guidance W > 0 (and no --guide-model)")

    def check(self, c: Checking) -> None:
        if c.given("guidance_rescale"):
            c.settings["rescale"] = number(c.steering.guidance_rescale, "guidance rescale phi",
                                           "guidance_rescale", 0, 1)

"""``--guidance-method NAME``: which guider combines the evaluations of ``--guidance`` (classifier-free
guidance by default). A minimal version: the kinds of the methods read the flag themselves."""

from __future__ import annotations

from .kind import GUIDANCE, Flag, SteeringKind

__all__ = ["METHODS", "GuidanceMethodKind"]

METHODS = ("cfg", "apg", "apg_mix", "cfg_zero_star", "tcfg", "fdg", "mambo", "pag", "slg", "seg")


class GuidanceMethodKind(SteeringKind):
    """The ``--guidance-method`` flag; the method's own kind builds its wrapper."""

    name = "guidance-method"
    layer = GUIDANCE
    flags = (Flag("guidance_method", "Guidance", metavar="NAME", choices=METHODS,
                  help="The guider: cfg (classifier-free, the default) or another method."),)

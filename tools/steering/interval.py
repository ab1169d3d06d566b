"""``--guidance-interval LO,HI``: guide only where ``LO < sigma <= HI`` (Kynkaanniemi et al. 2024); every
guidance wrapper (classifier-free, autoguidance, classifier guidance) reads the interval."""

from __future__ import annotations

from tools.common import BadInput, one_line

from .kind import Checking, Flag, SteeringKind

__all__ = ["GuidanceIntervalKind", "parse_interval"]


def parse_interval(interval) -> tuple[float, float]:
    """``"LO,HI"`` (HI may be inf) or a pair -> ``(lo, hi)`` with ``0 <= lo < hi``."""
    from samplers.guidance.wrapper import check_interval

    text = interval if isinstance(interval, str) else None
    try:
        return check_interval(text.split(",") if text is not None else interval)
    except ValueError as e:
        if text is not None and len(text.split(",")) != 2:  # shown as typed, not as the list it split into
            message = f"expected two sigmas LO,HI (e.g. 0.28,5.42), got {text}"
            raise BadInput(message, "guidance_interval") from None
        raise BadInput(f"{one_line(e)} (give LO,HI in sigma, e.g. 0.28,5.42)", "guidance_interval") from None


class GuidanceIntervalKind(SteeringKind):
    """The sigma interval of guidance, as ``settings["interval"]``."""

    name = "guidance-interval"
    flags = (Flag("guidance_interval", "Guidance", metavar="LO,HI",
                  help="Guide only where LO < sigma <= HI (Kynkaanniemi et al. 2024), e.g. 0.28,5.42; "
                       "elsewhere one plain call."),)

    def requires(self, c: Checking) -> None:
        c.requires("guidance_interval", bool(c.guidance) or c.given("classifier"),
                   "limits guidance: give --guidance W > 0 or --classifier")

    def check(self, c: Checking) -> None:
        if c.given("guidance_interval"):
            c.settings["interval"] = parse_interval(c.steering.guidance_interval)

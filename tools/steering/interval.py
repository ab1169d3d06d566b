"""``--guidance-interval LO,HI``: guide only where ``LO < sigma <= HI`` (Kynkaanniemi et al. 2024); every
guidance wrapper (classifier-free, autoguidance, classifier guidance) reads the interval.

``--guidance-start F --guidance-stop F``: diffusers' guiders' ``start``/``stop``, fractions of the run's
steps: step ``i`` of ``N`` is guided where ``int(F_start N) <= i < int(F_stop N)``. Once the run's sigmas
are known (:func:`steps_interval`) they become the sigma interval ``(sigmas[b], sigmas[a]]`` of those
steps, intersected with ``--guidance-interval``. A sampler's evaluations inside a step (Heun's second, at
the next step's sigma) follow the sigma, as with ``--guidance-interval``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.common import BadInput, one_line

from .kind import Checking, Flag, SteeringKind
from .parse import number

if TYPE_CHECKING:
    import torch

__all__ = ["GuidanceIntervalKind", "parse_interval", "steps_interval"]


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


def steps_interval(sigmas: torch.Tensor, window: tuple[float, float],
                   interval: tuple[float, float] | None) -> tuple[float, float]:
    """The sigma interval of the steps ``int(start N) <= i < int(stop N)`` of the schedule ``sigmas`` (``N``
    steps, ending in 0), intersected with ``interval``; BadInput when no step is left to guide."""
    steps = len(sigmas) - 1
    first, end = int(window[0] * steps), int(window[1] * steps)
    lo, hi = float(sigmas[end]), float(sigmas[min(first, steps)])  # steps first..end-1 have sigma in (lo, hi]
    if interval is not None:
        lo, hi = max(lo, interval[0]), min(hi, interval[1])
    if first >= end or lo >= hi:
        within = "" if interval is None else " inside --guidance-interval"
        raise BadInput(f"--guidance-start {window[0]:g} --guidance-stop {window[1]:g} guide no step of the "
                       f"{steps}{within}", "guidance_start")
    return lo, hi


class GuidanceIntervalKind(SteeringKind):
    """The sigma interval of guidance, as ``settings["interval"]``; ``--guidance-start/stop`` as
    ``settings["steps_window"]``, made an interval by :func:`steps_interval` once the run's sigmas are known.
    """

    name = "guidance-interval"
    flags = (Flag("guidance_interval", "Guidance", metavar="LO,HI",
                  help="Guide only where LO < sigma <= HI (Kynkaanniemi et al. 2024), e.g. 0.28,5.42; "
                       "elsewhere one plain call."),
             Flag("guidance_start", "Guidance", type=float, metavar="F",
                  help="Guide from step int(F * steps) on (diffusers' guiders' start; default 0)."),
             Flag("guidance_stop", "Guidance", type=float, metavar="F",
                  help="Guide only before step int(F * steps) (diffusers' guiders' stop; default 1)."))

    def requires(self, c: Checking) -> None:
        c.requires("guidance_interval", bool(c.guidance) or c.given("classifier"),
                   "limits guidance: give --guidance W > 0 or --classifier")
        for name in ("guidance_start", "guidance_stop"):
            c.requires(name, bool(c.guidance) or c.given("classifier"),
                       "limits guidance: give --guidance W > 0 or --classifier")

    def check(self, c: Checking) -> None:
        if c.given("guidance_interval"):
            c.settings["interval"] = parse_interval(c.steering.guidance_interval)
        if c.given("guidance_start") or c.given("guidance_stop"):
            start = number(c.steering.guidance_start or 0.0, "guidance start", "guidance_start", 0, 1)
            stop = number(1.0 if c.steering.guidance_stop is None else c.steering.guidance_stop,
                          "guidance stop", "guidance_stop", 0, 1)
            if start >= stop:
                raise BadInput(f"--guidance-start {start:g} must be below --guidance-stop {stop:g}",
                               "guidance_start")
            c.settings["steps_window"] = (start, stop)

"""``--threshold static|dynamic`` and ``--threshold-percentile P``: thresholding of the predicted x0 (a
model's own rule, diffusers' ``clip_sample`` / ``thresholding``, when the flag is not given)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tools.common import BadInput

from .kind import X0, Building, Checking, Flag, SteeringKind
from .parse import number

__all__ = ["DEFAULT_PERCENTILE", "THRESHOLD_KINDS", "ThresholdKind", "threshold_flags", "threshold_setting"]

THRESHOLD_KINDS = ("static", "dynamic")  # as samplers.guidance.THRESHOLDS (which imports torch)
DEFAULT_PERCENTILE = 0.995  # dynamic thresholding's, as samplers.guidance.Thresholded's


def threshold_setting(values: Mapping[str, Any]) -> tuple[str, float | None] | None:
    """The thresholding that flag values (name -> value, as ``Steering.given()`` records them) ask for, as
    ``(kind, percentile)`` with the default percentile filled in; None when none is asked (the model's
    own rule). What two runs must agree on to threshold alike."""
    kind = values.get("threshold")
    if kind is None:
        return None
    if kind != "dynamic":
        return str(kind), None
    percentile = values.get("threshold_percentile")
    return "dynamic", DEFAULT_PERCENTILE if percentile is None else float(percentile)


def threshold_flags(setting: tuple[str, float | None]) -> str:
    """A :func:`threshold_setting` as the flags that ask for it."""
    kind, percentile = setting
    return f"--threshold {kind}" + ("" if percentile is None else f" --threshold-percentile {percentile:g}")


class ThresholdKind(SteeringKind):
    """``samplers.guidance.Thresholded`` around the guided denoiser, with ``settings["threshold"]`` (its
    keyword arguments) the flags' or the model's own."""

    name = "threshold"
    layer = X0
    flags = (
        Flag("threshold", "Guidance", choices=THRESHOLD_KINDS,
             help="Threshold the predicted x0: static clips to [-1, 1]; dynamic (Imagen) divides each sample "
                  "by its percentile of |x0| when above 1.  [default: the model's own (diffusers' "
                  "clip_sample / thresholding), else none]"),
        Flag("threshold_percentile", "Guidance", type=float, metavar="P",
             help="Dynamic thresholding's percentile in (0, 1].  [default: 0.995]"),
    )

    def requires(self, c: Checking) -> None:
        c.requires("threshold_percentile", c.steering.threshold == "dynamic",
                   "is dynamic thresholding's: give --threshold dynamic")

    def check(self, c: Checking) -> None:
        kind = c.steering.threshold
        if kind is None:
            c.settings["threshold"] = getattr(c.model, "threshold", None)
        elif kind not in THRESHOLD_KINDS:
            raise BadInput(f"unknown thresholding {kind!r}; valid: {', '.join(THRESHOLD_KINDS)}", "threshold")
        elif kind == "static":
            c.settings["threshold"] = {"kind": "static"}
        else:
            percentile = c.steering.threshold_percentile
            percentile = DEFAULT_PERCENTILE if percentile is None else number(
                percentile, "threshold percentile", "threshold_percentile", 0, 1, low_open=True)
            c.settings["threshold"] = {"kind": "dynamic", "percentile": percentile}

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        threshold = b.settings.get("threshold")
        if threshold is None:
            return denoiser
        from samplers.guidance import Thresholded

        return Thresholded(denoiser, **threshold)

"""Numbers of the steering flags, checked: :func:`number`."""

from __future__ import annotations

import math

from tools.common import BadInput

__all__ = ["number"]


def number(value, what: str, param: str, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float within ``[low, high]`` (``(low, high]`` with ``low_open``); BadInput
    naming ``param`` otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be a number, got {value!r}", param) from None
    bad_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or bad_low or (high is not None and value > high):
        lo = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
        hi = "" if high is None else f" <= {high:g}"
        raise BadInput(f"{what} must satisfy {lo}value{hi}, got {value:g}", param)
    return value

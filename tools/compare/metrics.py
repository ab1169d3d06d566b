"""What the benchmark measures: metric names and the cell fields they fill, the denoiser stopwatch, and the
two traits of a sampler that decide how the ``ode`` metric treats it.

* ``ode``: RMS distance of the sampler's result from the exact probability-flow ODE solution from the same
  noise (``tools.ode``), in float64; only for deterministic samplers.
* ``fd``: Frechet distance of the samples' detector features from a reference (``tools.fid``).
* ``time``: wall time of the sampling per sample, and the share of it spent inside the denoiser.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

import samplers

__all__ = ["FIELDS", "METRICS", "SamplerTraits", "Stopwatch", "has_metric", "parse_metrics", "sampler_traits"]

METRICS = ("ode", "fd", "time")
ALIASES = {"fid": "fd"}  # FID is FD with the Inception detector; the detector is whichever is used
FIELDS = {"ode": ("ode_rmse",), "fd": ("fd", "detector"), "time": ("time_per_sample_s", "denoiser_share")}


def parse_metrics(value: str | Iterable[str]) -> tuple[str, ...]:
    """Metric names from ``"ode,fd,time"`` or a list (``fid`` means ``fd``), in METRICS order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [ALIASES.get(str(m).strip().lower(), str(m).strip().lower()) for m in items]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        what = ", ".join(unknown) or repr(value)
        raise ValueError(f"unknown metric {what}; valid: {', '.join(METRICS)} (fid is an alias of fd)")
    return tuple(m for m in METRICS if m in names)


def has_metric(cell: Mapping[str, Any], metric: str) -> bool:
    """Whether ``cell`` already holds ``metric`` (the ode metric of a stochastic sampler: nothing to hold)."""
    if metric == "ode" and cell.get("stochastic"):
        return True
    return cell.get("status") == "ok" and all(cell.get(key) is not None for key in FIELDS[metric])


# ---------------------------------------------------------------------------------------------------
# Timing


class Stopwatch:
    """Wall time of the sampling runs (``with watch.running():``) and of the denoiser calls inside them.

    On CUDA the clocks are read after ``torch.cuda.synchronize`` so that queued kernels count where they
    run, not where they were launched.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.total = 0.0
        self.inside = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def running(self):
        start = self._now()
        try:
            yield
        finally:
            self.total += self._now() - start

    def wrap(self, denoiser) -> _TimedDenoiser:
        """``denoiser`` with its calls timed into this stopwatch."""
        return _TimedDenoiser(denoiser, self)

    def metrics(self, samples: int) -> dict[str, float]:
        """The ``time`` fields for ``samples`` samples."""
        share = self.inside / self.total if self.total > 0 else 0.0
        return {"time_per_sample_s": self.total / samples, "denoiser_share": min(max(share, 0.0), 1.0)}


class _TimedDenoiser:
    """A denoiser whose calls add their wall time to a stopwatch; other attributes are the denoiser's
    (samplers look for ``round_sigma``)."""

    def __init__(self, denoiser, watch: Stopwatch):
        self.denoiser, self.watch = denoiser, watch

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma, **cond):
        start = self.watch._now()
        try:
            return self.denoiser(x, sigma, **cond)
        finally:
            self.watch.inside += self.watch._now() - start


# ---------------------------------------------------------------------------------------------------
# Sampler traits, measured on toy problems (so they hold for any options, not just the defaults)


@dataclass(frozen=True)
class SamplerTraits:
    """``stochastic``: its result depends on the seeds. ``lands_on_zero``: it ends with the denoising jump
    onto sigma = 0 (most samplers); else it stops at the last nonzero sigma (``dpm_fast``)."""

    stochastic: bool
    lands_on_zero: bool


def sampler_traits(name: str, options: Mapping[str, Any] | None = None) -> SamplerTraits:
    """The traits of sampler ``name`` with ``options``, from three runs on one-element problems."""
    options = dict(options or {})

    def result(denoiser, sigmas, seed: int) -> float:
        x = torch.full((1, 1), float(sigmas[0]), dtype=torch.float64)
        return float(samplers.sample(denoiser, x, sigmas, name, seeds=[seed], **options))

    def halve(x, sigma, **cond):
        return 0.5 * x

    def zero(x, sigma, **cond):
        return torch.zeros_like(x)

    # Passing x on (halved), the denoiser carries any injected noise into the result; dense levels over the
    # usual range leave no noise window (churn range, restart interval) out.
    dense = samplers.schedules.get("karras")(40, 0.002, 80.0)
    stochastic = result(halve, dense, 0) != result(halve, dense, 1)
    # With a zero denoiser the exact ODE from x = sigma = 10 reaches x = 0.5 at sigma = 0.5; the jump gives 0.
    short = torch.tensor([10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    lands_on_zero = abs(result(zero, short, 0)) < 0.25
    return SamplerTraits(stochastic=stochastic, lands_on_zero=lands_on_zero)

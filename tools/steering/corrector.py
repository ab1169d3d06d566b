"""``--corrector langevin``, ``--corrector-steps N`` and ``--snr R``: a predictor-corrector run (Song et al.
2021), Langevin steps at each step's noise level before the sampler's step; the corrector is
``settings["corrector"]``, which the run's sampler reads."""

from __future__ import annotations

from tools.common import BadInput, one_line

from .kind import Checking, Flag, SteeringKind

__all__ = ["CORRECTORS", "CorrectorKind"]

CORRECTORS = ("langevin",)


class CorrectorKind(SteeringKind):
    """``samplers.langevin.LangevinCorrector`` with the given steps and signal-to-noise ratio."""

    name = "corrector"
    flags = (
        Flag("corrector", "Sampling", choices=CORRECTORS,
             help="Predictor-corrector (Song et al. 2021): Langevin steps at each step's noise level before "
                  "the sampler's step; the sampler then runs step by step."),
        Flag("corrector_steps", "Sampling", type=int, min=1, metavar="N",
             help="Corrector steps per sampler step (each one NFE).  [default: 1]"),
        Flag("snr", "Sampling", type=float, metavar="R",
             help="The corrector's target signal-to-noise ratio, which sets its step size.  [default: "
                  "0.16]"),
    )

    def requires(self, c: Checking) -> None:
        c.requires("corrector_steps", c.given("corrector"), "needs --corrector langevin")
        c.requires("snr", c.given("corrector"), "is the corrector's: give --corrector langevin")

    def check(self, c: Checking) -> None:
        s = c.steering
        if s.corrector is None:
            return
        if s.corrector not in CORRECTORS:
            raise BadInput(f"unknown corrector {s.corrector!r}; valid: {', '.join(CORRECTORS)}", "corrector")
        from samplers.langevin import LangevinCorrector

        try:
            c.settings["corrector"] = LangevinCorrector(
                **{k: v for k, v in (("steps", s.corrector_steps), ("snr", s.snr)) if v is not None})
        except ValueError as e:
            raise BadInput(one_line(e), "corrector_steps" if "steps" in str(e) else "snr") from None

"""Noise-level schedules on the tools side: one home for everything about which sigmas a run visits.

:mod:`.steps` turns ``--steps`` / ``--nfe`` and ``--schedule`` into a run's sigmas (registered schedules,
schedule files, ``--schedule diffusers``); :mod:`.file` reads and writes schedule files; :mod:`.diffusers`
computes a diffusers scheduler's own timesteps for a model; :mod:`.tune` fits a sampler's noise levels to
the near-exact ODE solution (``edm tune-schedule``). The schedule formulas themselves are the
``samplers.schedules`` registry.

Names are imported on first use, so importing the package does not import torch.
"""

from tools.common import lazy_exports

_EXPORTS = {
    "DEFAULT_STEPS": ".steps", "resolve_steps": ".steps", "schedule_sigmas": ".steps",
    "ScheduleFile": ".file", "load_schedule": ".file", "save_schedule": ".file",
    "CALIBRATION_SEED": ".tune", "TuneResult": ".tune", "calibration_seeds": ".tune",
    "default_max_evals": ".tune", "tunable_steps": ".tune", "tune_schedule": ".tune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

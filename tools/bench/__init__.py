"""Benchmarks of samplers: every sampler x schedule x NFE budget on the same seeds (``edm bench``).

``run_bench(model, samplers=..., schedules=..., nfe=..., metrics=...)`` measures each cell's ``ode`` error
(against the exact probability-flow ODE), ``fd`` (Frechet distance through the FID tools' detectors) and
``time``, on a model spec, a ``tools.models.LoadedModel`` or any denoiser callable, and returns the cells as
flat dicts (``CELL_KEYS``); with ``out=`` it writes them (CSV, JSON, Markdown, plots) and resumes there.
``prepare_bench`` checks and plans without running; ``samplers.registry.nfe_on`` gives a cell's exact NFE.
"""

from .grid import CELL_KEYS, Cell, fit_budget, parse_budgets, plan_cells
from .inputs import BenchError
from .metrics import METRICS, SamplerTraits, Stopwatch, parse_metrics, sampler_traits
from .ode import ReferenceCache, rms_error
from .runner import DEFAULT_NFE, Bench, prepare_bench, run_bench
from .tune import (
                   CALIBRATION_SEED,
                   TuneResult,
                   calibration_seeds,
                   default_max_evals,
                   tunable_steps,
                   tune_schedule,
)

__all__ = ["CELL_KEYS", "DEFAULT_NFE", "METRICS", "Bench", "BenchError", "Cell", "ReferenceCache",
           "SamplerTraits", "Stopwatch", "fit_budget", "parse_budgets", "parse_metrics", "plan_cells",
           "prepare_bench", "rms_error", "run_bench", "sampler_traits", "CALIBRATION_SEED", "TuneResult",
           "calibration_seeds", "default_max_evals", "tunable_steps", "tune_schedule"]

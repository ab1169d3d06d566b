"""Benchmarks of samplers: every sampler x schedule x NFE budget on the same seeds (``edm bench``).

``run_bench(model, samplers=..., schedules=..., nfe=..., metrics=...)`` measures each cell's ``ode`` error
(against the exact probability-flow ODE), ``fd`` (Frechet distance through the FID tools' detectors) and
``time``, on a model spec, a ``tools.models.LoadedModel`` or any denoiser callable, and returns the cells as
flat dicts (``CELL_KEYS``); with ``out=`` it writes them (CSV, JSON, Markdown, plots) and resumes there.
``prepare_bench`` checks and plans without running; ``samplers.registry.nfe_on`` gives a cell's exact NFE.
``tune_schedule`` fits a sampler's noise levels to the exact ODE (:mod:`.tune`). The ``edm bench`` and
``edm tune-schedule`` commands are :mod:`.cli`. (The repository's top-level ``bench/`` folder holds the
recorded benchmark scripts and their results, which use this library.)

Names are imported on first use, so the CLI module loads without torch.
"""

from tools.common import lazy_exports

_EXPORTS = {
    "CELL_KEYS": ".grid", "Cell": ".grid", "fit_budget": ".grid", "parse_budgets": ".grid",
    "plan_cells": ".grid",
    "BenchError": ".inputs",
    "METRICS": ".metrics", "SamplerTraits": ".metrics", "Stopwatch": ".metrics", "parse_metrics": ".metrics",
    "sampler_traits": ".metrics",
    "DEFAULT_NFE": ".runner", "Bench": ".runner", "BenchRequest": ".runner", "prepare_bench": ".runner",
    "run_bench": ".runner",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

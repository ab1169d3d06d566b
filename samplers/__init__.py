"""The sampling side: sigma schedules, samplers and noise sources, each in a registry.

Depends only on the denoiser protocol ``D(x, sigma, **cond) -> x0_hat`` (``samplers.protocol``), never
on ``edm``.
"""

from . import (  # noqa: F401  (register the samplers)
           adams,
           ancestral,
           distilled,
           dpm_solver,
           guidance,
           karras,
           langevin,
           multistep,
           noise,
           restart,
           schedules,
           sde,
           unipc,
)
from .api import check_options, sample
from .protocol import OPTIONAL_ATTRIBUTES, Denoiser
from .registry import SamplerSpec, get, list, register, steps_for_nfe

__all__ = ["OPTIONAL_ATTRIBUTES", "Denoiser", "SamplerSpec", "check_options", "get", "guidance", "list",
           "noise", "register", "sample", "schedules", "steps_for_nfe"]

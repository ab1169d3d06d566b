"""What steers or edits a sample beyond its sampler, schedule, class and guidance weight, checked once for
every command that samples: a registry of steering kinds (:mod:`tools.steering.registry`), each one module
declaring its flags, its checks and the denoiser wrapper it builds (:mod:`tools.steering.kind`).

The built-in kinds (:mod:`tools.steering.builtin`): classifier-free guidance with its negative class,
interval and rescale; autoguidance; the unconditional switch; classifier guidance; x0 thresholding;
img2img and inpainting (with RePaint's resampling); and a Langevin corrector.

:class:`Steering` is the plain-data request (the steering flags given); :func:`check_steering` turns it, for
a loaded model, into a :class:`CheckedSteering` that builds the denoiser (``samplers.guidance`` transforms
by layer: each network -> guidance -> classifier guidance -> thresholding; editing per run) and the
per-seed start of a run. This package imports neither torch nor click until a checked steering is asked
for, so the command line can declare the flags without them.
"""

from tools.common import lazy_exports

from .builtin import BUILTIN_KINDS
from .classifier import DEFAULT_CLASSIFIER_SCALE
from .corrector import CORRECTORS
from .given import Steering
from .kind import CORRECTION, GUIDANCE, NETWORK, X0, Flag, SteeringKind
from .load import load
from .registry import flags, kinds, register, unregister

_EXPORTS = {
    "CheckedSteering": ".checked", "check_steering": ".checked", "compose": ".checked",
    "EditImages": ".edit", "seed_draws": ".edit",
}
__all__ = ["BUILTIN_KINDS", "CORRECTION", "CORRECTORS", "DEFAULT_CLASSIFIER_SCALE", "GUIDANCE", "NETWORK",
           "X0", "CheckedSteering", "EditImages", "Flag", "Steering", "SteeringKind",
           "check_steering", "compose", "flags", "kinds", "load", "register", "seed_draws", "unregister"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

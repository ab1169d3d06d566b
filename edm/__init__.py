"""The model side of the EDM library: preconditioned denoisers, wrappers and training losses.

A denoiser is any callable ``D(x, sigma, **cond) -> x0_hat`` in the EDM convention
``x = y + sigma * n``; see ``edm.precond`` (Table 1 schemes, :class:`Precond`), ``edm.wrappers``
(eps / v / x0 backbones in discrete or continuous time), ``edm.flow`` (flow-matching velocity
models) and ``edm.loss``.
"""

from .flow import (
    FlowDenoiser,
    FlowScheme,
    dynamic_shift_sigmas,
    flow_sigma,
    flow_time,
    from_flow,
    shift_sigmas,
    to_flow,
)
from .loss import EDMLoss, PrecondLoss, SchemeLoss, VELoss, VPLoss, draw_noise, weighted_target_loss
from .precond import EDMScheme, IDDPMScheme, Precond, Scheme, SchemeRegistry, VEScheme, VPScheme, schemes
from .wrappers import (
    PREDICTIONS,
    ContinuousTimeDenoiser,
    DiscreteTimeDenoiser,
    DiscreteTimeScheme,
    PredictionScheme,
    prediction_coefficients,
    vp_sigma_to_t,
    vp_t_to_sigma,
)

__all__ = [
    "ContinuousTimeDenoiser",
    "DiscreteTimeDenoiser",
    "DiscreteTimeScheme",
    "EDMLoss",
    "EDMScheme",
    "FlowDenoiser",
    "FlowScheme",
    "IDDPMScheme",
    "PREDICTIONS",
    "Precond",
    "PrecondLoss",
    "PredictionScheme",
    "Scheme",
    "SchemeLoss",
    "SchemeRegistry",
    "VELoss",
    "VEScheme",
    "VPLoss",
    "VPScheme",
    "draw_noise",
    "dynamic_shift_sigmas",
    "flow_sigma",
    "flow_time",
    "from_flow",
    "prediction_coefficients",
    "schemes",
    "shift_sigmas",
    "to_flow",
    "vp_sigma_to_t",
    "vp_t_to_sigma",
    "weighted_target_loss",
]

"""``--schedule diffusers``: a diffusers scheduler's own timesteps and start/end conventions as EDM sigmas.

:func:`diffusers_plan` builds the diffusers counterpart of one of our samplers from a model's scheduler
config (``Cls.from_config``, as a user swapping schedulers in a pipeline does), lets it set its timesteps,
and turns them into what :func:`samplers.sample` needs to reproduce that scheduler's loop:

    latent = randn(...)                              # the pipeline's unit draw
    x = plan.start_scale * latent                    # (the latent itself when plan.sigmas[0] = inf)
    out = samplers.sample(denoiser, x, plan.sigmas, sampler, **plan.options) * plan.end_scale

``out`` is the latent the diffusers pipeline returns.  Three kinds of scheduler state:

* sigma space (Euler, Heun, Euler ancestral, LMS, KDPM2): the state is our ``x = x0 + sigma n``; the start
  is ``init_noise_sigma * latent``, i.e. ``sigma_max`` with ``timestep_spacing`` linspace / trailing and
  ``sqrt(sigma_max^2 + 1)`` otherwise (diffusers' rule, kept as it is); the end is x itself. (DiTPipeline
  runs these schedulers on another state, see ``sigma_space`` of :func:`diffusers_plan`.)
* VP (DDIM, DPM-Solver, UniPC, LCM): the state is ``x_t = sqrt(abar) x``, starting at ``latent``; the start is
  ``sqrt(1 + sigma_max^2) latent`` and the end ``x_t = x / sqrt(1 + sigma_end^2)`` (1 at sigma 0).
* flow (FlowMatch*, DPM-Solver / UniPC with ``use_flow_sigmas``): the state is ``x_t = (1 - t) x`` with
  ``sigma = t / (1 - t)``; the start is ``latent / (1 - t_0)`` (``sigmas[0] = inf`` and x the latent
  itself at t_0 = 1), the end ``(1 - t_end) x``.

The sigmas are recomputed in float64 from diffusers' timesteps and the scheduler's ``alphas_cumprod``
(diffusers keeps them in float32), by the interpolation the scheduler used (``plan.interpolation``:
``"linear"`` in sigma for ``np.interp`` schedules, ``"log"`` where diffusers maps Karras / exponential / beta
sigmas to times by k-diffusion's log-sigma interpolation): a :class:`edm.DiscreteTimeDenoiser` with that
interpolation then calls the network at diffusers' own timesteps.  Whatever a sampler cannot reproduce
(a model evaluated at a time that is not its noise level, a start that no rule covers) raises ValueError.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["COUNTERPARTS", "FLOW_COUNTERPARTS", "DiffusersPlan", "diffusers_plan"]

#: our sampler -> the diffusers scheduler class whose loop it reproduces, for DDPM-style (VP) models
COUNTERPARTS: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_ancestral": "KDPM2AncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
}

#: our sampler -> the diffusers scheduler class, for flow-matching models (``flow=True``); DPM-Solver and
#: UniPC run with ``use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=<config shift>``
FLOW_COUNTERPARTS: dict[str, str] = {
    "euler": "FlowMatchEulerDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}

#: settings that make a shared class run the sampler's algorithm (they override the model's config)
_ALGORITHM = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                 "euler_at_final": False},
    "dpmpp_2m_sde": {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                     "euler_at_final": False},
}

_SIGMA_SPACE = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
#: evaluate their midpoints at times interpolated in log sigma, whatever their steps use
_LOG_MIDPOINTS = {"KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
#: interleave each step's second evaluation into sigmas / timesteps
_TWO_EVALUATIONS = {"HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
_VP_STATE = {"DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LCMScheduler"}

#: settings under which diffusers maps its sigmas to times by log-sigma interpolation
_LOG_TIME_SETTINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
#: settings that define alphas_cumprod, i.e. the model's own noise levels
_TABLE_SETTINGS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                   "rescale_betas_zero_snr")

#: relative agreement asked of our float64 sigmas and diffusers' float32 ones
_RTOL = 1e-5


@dataclass(frozen=True)
class DiffusersPlan:
    """What ``samplers.sample`` needs to reproduce one diffusers scheduler's loop (module docstring)."""

    scheduler: str
    sigmas: Tensor
    timesteps: Tensor
    start_scale: float
    end_scale: float
    #: sampler options matching the scheduler's settings (e.g. UniPC's order and variant)
    options: Mapping = field(default_factory=dict)
    #: ``DiscreteTimeScheme`` interpolation under which sigma -> t gives diffusers' timesteps (VP models)
    interpolation: str = "linear"


def _fail(message: str):
    raise ValueError(message)


def _close(ours: Tensor, theirs: Tensor) -> bool:
    theirs = theirs.to(torch.float64)
    finite = torch.isfinite(ours) & torch.isfinite(theirs)
    if not bool((torch.isfinite(ours) == torch.isfinite(theirs)).all()):
        return False
    return bool(((ours[finite] - theirs[finite]).abs() <= _RTOL * theirs[finite].abs() + 1e-12).all())


def _table(scheduler) -> Tensor:
    abar = torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64)
    return ((1 - abar) / abar).sqrt()


def _interpolate(t: Tensor, table: Tensor, interpolation: str) -> Tensor:
    """sigma at fractional timesteps ``t``: ``np.interp`` in sigma (linear) or in log sigma (log)."""
    values = table if interpolation == "linear" else table.log()
    t = t.to(torch.float64).clamp(0, len(table) - 1)
    low = t.floor().long().clamp(max=len(table) - 2)
    w = t - low
    out = (1 - w) * values[low] + w * values[low + 1]
    return out if interpolation == "linear" else out.exp()


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _build(name: str, config: Mapping, overrides: Mapping):
    import diffusers

    cls = getattr(diffusers, name)
    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    try:
        return cls.from_config({**settings, **overrides})
    except (ValueError, TypeError, KeyError, NotImplementedError, ImportError) as e:
        message = " ".join(str(e).split())
        raise ValueError(f"cannot build {name} from this scheduler config: {message}") from None


def _set_timesteps(scheduler, name: str, steps: int, mu: float | None) -> None:
    dynamic = bool(scheduler.config.get("use_dynamic_shifting", False))
    kwargs = {}
    if dynamic:
        if mu is None:
            raise ValueError(f"{name} uses dynamic shifting (use_dynamic_shifting=True): give mu")
        kwargs["mu"] = float(mu)
    try:
        scheduler.set_timesteps(steps, **kwargs)
    except (ValueError, AssertionError, TypeError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{name}.set_timesteps({steps}): {message}") from None


def diffusers_plan(scheduler_config: Mapping, sampler: str, steps: int, *, flow: bool = False,
                   mu: float | None = None, sigma_space: str | None = None) -> DiffusersPlan:
    """The plan that makes ``sampler`` reproduce its diffusers counterpart on a model with this scheduler
    config (``flow``: a flow-matching model; ``mu``: Flux's dynamic shift, where the config asks for it).
    ``sigma_space``: None, or why the model's pipeline cannot run a sigma-space scheduler (Euler, Heun, ...)
    as that scheduler's loop (DiTPipeline's), which makes their counterparts a ValueError."""
    steps = _check_steps(steps)
    counterparts = FLOW_COUNTERPARTS if flow else COUNTERPARTS
    if sampler not in counterparts:
        kind = " for flow models" if flow else ""
        raise ValueError(f"sampler {sampler!r} has no diffusers counterpart{kind}; "
                         f"samplers with one: {', '.join(sorted(counterparts))}")
    if not isinstance(scheduler_config, Mapping):
        raise ValueError("scheduler_config must be a mapping (a diffusers scheduler config)")
    name = counterparts[sampler]
    overrides = dict(_ALGORITHM.get(sampler, {}))
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if flow and not name.startswith("FlowMatch"):
        shift = scheduler_config.get("shift", scheduler_config.get("flow_shift", 1.0))
        overrides.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=float(shift))
    elif not flow and (prediction == "flow_prediction"
                       or str(scheduler_config.get("_class_name", "")).startswith("FlowMatch")):
        raise ValueError("this is a flow-matching scheduler config: plan it with flow=True")
    scheduler = _build(name, scheduler_config, overrides)
    if not flow:
        _check_table(scheduler, name, scheduler_config)
    _set_timesteps(scheduler, name, steps, mu)
    if flow:
        return _flow_plan(scheduler, name, sampler, steps)
    if name in _SIGMA_SPACE:
        if sigma_space is not None:
            vp = ", ".join(sorted(k for k, v in COUNTERPARTS.items() if v in _VP_STATE))
            _fail(f"{name}: {sigma_space}, so its image is no sampler's: not reproducible (--schedule "
                  f"diffusers reproduces {vp} on it)")
        return _sigma_space_plan(scheduler, name)
    return _vp_plan(scheduler, name, sampler, steps)


def _model_table(scheduler_config: Mapping) -> Tensor:
    """The model's alphas_cumprod: those of its own scheduler class (a DDPMScheduler's if unknown)."""
    import diffusers

    own = getattr(diffusers, str(scheduler_config.get("_class_name", "DDPMScheduler")), None)
    if own is None or not hasattr(own, "from_config"):
        own = diffusers.DDPMScheduler
    model = _build(own.__name__, scheduler_config, {})
    abar = getattr(model, "alphas_cumprod", None)
    if abar is None:
        abar = _build("DDPMScheduler", scheduler_config, {}).alphas_cumprod
    return torch.as_tensor(abar).to(torch.float64)


def _check_table(scheduler, name: str, scheduler_config: Mapping) -> None:
    """The counterpart must see the model's noise levels: a class that does not take one of the table's
    settings (``rescale_betas_zero_snr`` on Heun, LMS, KDPM2) builds another table. A zero terminal
    alphas_cumprod counts as diffusers' sigma-space classes store it, 2**-24."""
    ours = torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64).clone()
    model = _model_table(scheduler_config).clone()
    for abar in (ours, model):
        abar[abar == 0] = 2.0**-24
    if ours.shape != model.shape or not torch.allclose(ours, model, rtol=1e-6, atol=0):
        taken = inspect.signature(type(scheduler).__init__).parameters
        dropped = [key for key in _TABLE_SETTINGS if key in scheduler_config and key not in taken]
        why = f" (it does not take {', '.join(dropped)})" if dropped else ""
        _fail(f"{name} builds other noise levels than this model's{why}: not reproducible")


def _final_sigma(theirs: Tensor, table: Tensor) -> float:
    """The last sigma: 0, the table's sigma_min in float64 (final_sigmas_type='sigma_min'), or as given."""
    last = float(theirs[-1])
    if last == 0:
        return 0.0
    return float(table[0]) if math.isclose(last, float(table[0]), rel_tol=_RTOL) else last


# --- sigma-space schedulers --------------------------------------------------------------------------


def _steps_of(scheduler, name: str) -> tuple[Tensor, Tensor]:
    """``(timesteps, sigmas)`` of the steps, without Heun's / KDPM2's interleaved second evaluations."""
    timesteps = torch.as_tensor(scheduler.timesteps)
    sigmas = torch.as_tensor(scheduler.sigmas)
    if name in _TWO_EVALUATIONS:
        timesteps = timesteps[::2]
        sigmas = torch.unique_consecutive(sigmas)
    return timesteps, sigmas


def _sigma_space_plan(scheduler, name: str) -> DiffusersPlan:
    config = scheduler.config
    if config.get("timestep_type", "discrete") == "continuous":
        _fail(f"{name} with timestep_type='continuous' conditions the model on log sigma, not on DDPM "
              "timesteps: not reproducible with this model's time map")
    timesteps, theirs = _steps_of(scheduler, name)
    table = _table(scheduler)
    if not bool(torch.isfinite(table).all()):
        _fail(f"{name} has a zero terminal alphas_cumprod (an infinite sigma): not reproducible")
    log_times = any(config.get(key, False) for key in _LOG_TIME_SETTINGS)
    interpolation = "log" if log_times else "linear"
    if name in _LOG_MIDPOINTS and not log_times and not bool((timesteps == timesteps.round()).all()):
        _fail(f"{name} with fractional timesteps (timestep_spacing={config.timestep_spacing!r}) puts its "
              "steps at times interpolated in sigma and its midpoints in log sigma: not reproducible with "
              "one time map")
    sigmas = _interpolate(timesteps, table, interpolation)
    if not _close(sigmas, theirs[:-1]):
        _fail(f"{name} with these settings evaluates the model at timesteps that are not its noise levels "
              "(rounded timesteps): not reproducible")
    end = _final_sigma(theirs, table)
    sigmas = torch.cat([sigmas, sigmas.new_tensor([end])])
    init = float(scheduler.init_noise_sigma)
    top = float(sigmas[0])
    if math.isclose(init, top, rel_tol=_RTOL):
        start = top
    elif math.isclose(init, math.sqrt(top**2 + 1), rel_tol=_RTOL):
        start = math.sqrt(top**2 + 1)
    else:
        start = _fail(f"{name}'s init_noise_sigma {init:g} is neither sigma_max {top:g} "
                      "nor sqrt(sigma_max^2 + 1)")
    return DiffusersPlan(name, sigmas, timesteps.clone(), start, 1.0, {}, interpolation)


# --- VP-state schedulers (DDIM, DPM-Solver, UniPC, LCM) ----------------------------------------------


def _ddim_sigmas(scheduler, table: Tensor, steps: int) -> tuple[Tensor, float]:
    timesteps = torch.as_tensor(scheduler.timesteps).long()
    jump = scheduler.config.num_train_timesteps // steps
    following = [int(t) - jump for t in timesteps]
    if following[:-1] != [int(t) for t in timesteps[1:]] or following[-1] >= 0:
        _fail(f"DDIMScheduler with timestep_spacing={scheduler.config.timestep_spacing!r} and {steps} steps "
              f"steps from t to t - {jump}, which is not its next timestep: not reproducible")
    final = float(torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64))
    end = math.sqrt((1 - final) / final) if final < 1 else 0.0
    return table[timesteps], end


def _lcm_sigmas(scheduler, table: Tensor, steps: int) -> tuple[Tensor, float]:
    # its timesteps skip through the original_inference_steps schedule; a step noises the consistency
    # function's x0 back to the next timestep, and the last one returns that x0 (sigma 0)
    return table[torch.as_tensor(scheduler.timesteps).long()], 0.0


#: the VP schedulers that keep no ``sigmas``: their step sigmas and final sigma from their timesteps
_OWN_SIGMAS = {"DDIMScheduler": _ddim_sigmas, "LCMScheduler": _lcm_sigmas}


def _options(scheduler, name: str, sampler: str) -> dict:
    config = scheduler.config
    if name == "UniPCMultistepScheduler":
        if not config.get("predict_x0", True):
            _fail("UniPCMultistepScheduler with predict_x0=False (its noise-prediction form): "
                  "not reproducible")
        if config.get("disable_corrector"):
            _fail("UniPCMultistepScheduler with disable_corrector set: not reproducible")
        if config.get("solver_p") is not None:
            _fail("UniPCMultistepScheduler with a solver_p: not reproducible")
        return {"order": int(config.solver_order), "variant": str(config.solver_type),
                "lower_order_final": bool(config.lower_order_final)}
    if name == "DPMSolverMultistepScheduler" and config.get("variance_type") is not None:
        _fail(f"DPMSolverMultistepScheduler with variance_type={config.variance_type!r}: not reproducible")
    return {}


def _check_last_order(scheduler, name: str, steps: int, end: float) -> None:
    """DPM-Solver's last step is first order to sigma 0, as ours, but to a nonzero final sigma it is first
    order only under ``lower_order_final`` with fewer than 15 steps, where ours stays second order."""
    config = scheduler.config
    if name == "DPMSolverMultistepScheduler" and end > 0 and config.lower_order_final and steps < 15:
        _fail("DPMSolverMultistepScheduler with final_sigmas_type='sigma_min', lower_order_final and fewer "
              "than 15 steps takes a first-order last step: not reproducible")


def _vp_plan(scheduler, name: str, sampler: str, steps: int) -> DiffusersPlan:
    table = _table(scheduler)
    options = _options(scheduler, name, sampler)
    if name in _OWN_SIGMAS:
        sigmas, end = _OWN_SIGMAS[name](scheduler, table, steps)
    else:
        timesteps = torch.as_tensor(scheduler.timesteps).long()
        sigmas = table[timesteps]
        theirs = torch.as_tensor(scheduler.sigmas)
        if not _close(sigmas, theirs[:-1]):
            _fail(f"{name} with these settings rounds its timesteps (Karras / Lu sigmas): the model is "
                  "called at times that are not its noise levels, not reproducible")
        end = _final_sigma(theirs, table)
        _check_last_order(scheduler, name, steps, end)
    sigmas = torch.cat([sigmas, sigmas.new_tensor([end])])
    timesteps = torch.as_tensor(scheduler.timesteps).clone()
    if math.isinf(float(sigmas[0])):
        if scheduler.config.prediction_type == "epsilon":
            _fail(f"{name} starts at zero SNR (rescale_betas_zero_snr) where an epsilon model's x0 is "
                  "undefined: not reproducible")
        if name != "DDIMScheduler":
            _fail(f"{name} starting at zero SNR: not reproducible")
        start = 1.0  # sigmas[0] = inf: x is the unit latent (= diffusers' x_t at abar = 0)
    else:
        start = math.sqrt(1 + float(sigmas[0]) ** 2)
    end_scale = 1.0 / math.sqrt(1 + end**2)
    if sampler == "dpmpp_2m_sde" and end > 0:
        _fail("dpmpp_2m_sde to a nonzero final sigma: not reproducible")
    return DiffusersPlan(name, sigmas, timesteps, start, end_scale, options, "linear")


# --- flow-matching schedulers --------------------------------------------------------------------------


def _flow_plan(scheduler, name: str, sampler: str, steps: int) -> DiffusersPlan:
    config = scheduler.config
    if config.get("invert_sigmas"):
        _fail(f"{name} with invert_sigmas (Mochi) runs from t = 0 up: not reproducible")
    if config.get("stochastic_sampling"):
        _fail(f"{name} with stochastic_sampling re-noises each step: not reproducible")
    ts, ends = _steps_of(scheduler, name)
    t = torch.as_tensor(scheduler.sigmas).to(torch.float64)
    if name in _TWO_EVALUATIONS:
        t = torch.unique_consecutive(t)
    t_last = float(t[-1])
    t = t[:-1]
    sigmas = torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t))
    sigmas = torch.cat([sigmas, sigmas.new_tensor([t_last / (1 - t_last)])])
    options = {} if name.startswith("FlowMatch") else _options(scheduler, name, sampler)
    if name == "DPMSolverMultistepScheduler":
        _check_last_order(scheduler, name, steps, float(sigmas[-1]))
    t0 = float(t[0])
    start = 1.0 if t0 >= 1 else 1.0 / (1 - t0)
    return DiffusersPlan(name, sigmas, ts.clone(), start, 1.0 - t_last, options, "linear")

"""The noise levels a run samples at: a registered schedule or a schedule file, on a model's range, for a
number of steps or the most steps that fit an NFE budget."""

from __future__ import annotations

import copy
from typing import Any

import torch

import samplers
from samplers import schedules
from tools.common import BadInput, one_line, positive_int
from tools.schedules.file import ScheduleFile, ScheduleFileError, file_path, load_schedule

__all__ = ["DEFAULT_STEPS", "DIFFUSERS_SCHEDULE", "check_schedule", "diffusers_schedule", "named_schedule",
           "pinned_to_timesteps", "resize_model", "resolve_steps", "schedule_sigmas"]

#: the schedule arguments a request gives (its messages name them; the CLI shows their flags)
RANGE_TERMS = ("sigma_min", "sigma_max", "rho")
DEFAULT_STEPS = 18  # EDM's deterministic sampler on CIFAR-10 / FFHQ (35 NFE with heun)
#: --schedule diffusers: the timesteps (and start/end conventions) of the sampler's diffusers counterpart
DIFFUSERS_SCHEDULE = "diffusers"


def resolve_steps(spec, steps, nfe, options=None, corrector_steps: int = 0) -> tuple[int, int | None]:
    """``(steps, nfe per image)`` of sampler ``spec`` from steps or an NFE budget (default 18 steps), with
    the sampler's ``options`` and ``corrector_steps`` corrector evaluations per step.

    The NFE is None for an adaptive sampler. BadInput names ``steps`` or ``nfe``.
    """
    if steps is not None and nfe is not None:
        raise BadInput("give steps or an NFE budget, not both")
    if nfe is not None:
        nfe = positive_int(nfe, "the NFE budget", "nfe")
        try:
            steps = samplers.steps_for_nfe(spec.name, nfe, options, corrector_steps)
        except ValueError as e:
            raise BadInput(one_line(e), "nfe") from None
    else:
        steps = positive_int(DEFAULT_STEPS if steps is None else steps, "steps", "steps")
    return steps, None if spec.adaptive else spec.nfe(steps, options, corrector_steps)


def named_schedule(name: str):
    """What schedule ``name`` names, model or no model: its registry entry, or the
    :class:`tools.schedules.file.ScheduleFile` of ``file:PATH`` (read); BadInput naming ``schedule``."""
    try:
        path = file_path(name)
        return schedules.spec(name) if path is None else load_schedule(path)
    except (ScheduleFileError, ValueError) as e:
        raise BadInput(one_line(e), "schedule") from None


def check_schedule(name: str) -> None:
    """The checks of ``--schedule`` that need no model (run before one is loaded): a registered schedule, a
    readable schedule file or ``diffusers``; BadInput naming ``schedule``."""
    if name != DIFFUSERS_SCHEDULE:
        named_schedule(name)


def schedule_sigmas(model, name: str, steps: int, sigma_min=None, sigma_max=None,
                    rho=None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The float64 CPU sigmas of schedule ``name`` for ``steps`` steps on ``model``, and the options given.

    ``name`` is a registered schedule or ``file:PATH`` (a schedule file, see ``tools.schedules.file``).
    The range defaults to the model's; table schedules get the model's ``sigmas``. Raises
    :class:`BadInput` with a one-line message.
    """
    spec = named_schedule(name)
    if isinstance(spec, ScheduleFile):
        if sigma_min is not None or sigma_max is not None or rho is not None:
            raise BadInput("a schedule file fixes its own sigmas: drop sigma_min, sigma_max and rho",
                           "schedule")
        try:
            return spec(steps), {}
        except (ScheduleFileError, ValueError) as e:  # e.g. more steps than the file has levels
            raise BadInput(one_line(e), "schedule") from None
    options: dict[str, Any] = {}
    if rho is not None:
        if "rho" not in spec.options:
            having = [n for n in schedules.list() if "rho" in schedules.spec(n).options]
            raise BadInput(f"schedule {name!r} has no rho (schedules with rho: {', '.join(having)})", "rho")
        options["rho"] = rho
    kwargs = dict(options)
    if spec.needs_table:
        if getattr(model, "sigmas", None) is None:
            raise BadInput(f"schedule {name!r} picks levels from a discrete-time model's sigma table; "
                           "this model has none (use e.g. karras)", "schedule")
        kwargs["sigmas"] = model.sigmas
    sigma_min = model.sigma_min if sigma_min is None else sigma_min
    sigma_max = model.sigma_max if sigma_max is None else sigma_max
    try:
        sigmas = spec.fn(steps, sigma_min, sigma_max, **kwargs)
    except ValueError as e:  # a bad range or option value: a combination of arguments
        raise BadInput(one_line(e), terms=RANGE_TERMS) from None
    return sigmas.to("cpu", torch.float64), options


def diffusers_schedule(model, sampler: str, steps: int, sigma_min=None, sigma_max=None, rho=None):
    """The :class:`tools.schedules.diffusers.DiffusersPlan` of ``--schedule diffusers``: the sigmas
    (and start/end conventions) that ``sampler``'s diffusers counterpart, built from the model's own
    scheduler config, would use for ``steps`` steps. BadInput for a model without a scheduler config, a
    sampler without a counterpart, or a range given with it."""
    if sigma_min is not None or sigma_max is not None or rho is not None:
        raise BadInput("--schedule diffusers takes the scheduler's own sigmas: drop --sigma-min, --sigma-max "
                       "and --rho", "schedule")
    info = getattr(model, "info", None) or {}
    config = info.get("scheduler_config")
    if not isinstance(config, dict):
        raise BadInput("--schedule diffusers reproduces a diffusers scheduler: it needs a diffusers:DIR "
                       "model (this one has no scheduler config)", "schedule")
    from tools.models.pipelines import dynamic_shift_mu
    from tools.schedules.diffusers import diffusers_plan

    flow = info.get("prediction") == "flow"
    mu = None
    if flow and config.get("use_dynamic_shifting"):
        mu = dynamic_shift_mu(config, model.shape, int(info.get("patch_size", 1)))
    try:
        return diffusers_plan(config, sampler, steps, flow=flow, mu=mu,
                              sigma_space=info.get("sigma_space_loop"))
    except ValueError as e:
        raise BadInput(one_line(e), "schedule") from None


def resize_model(model, height, width):
    """A text-to-image model at another image size (``--height`` / ``--width``; None keeps the default)."""
    from tools.models.pipelines import resized

    return resized(model, height, width)


def _shallow_copy(obj):
    """A copy of ``obj`` whose own attributes can be reassigned without touching ``obj`` (a module's
    submodule, parameter and buffer tables are copied too; the tensors themselves are shared)."""
    clone = copy.copy(obj)
    if isinstance(obj, torch.nn.Module):
        for table in ("_modules", "_parameters", "_buffers"):
            clone.__dict__[table] = copy.copy(obj.__dict__[table])
    return clone


def pinned_to_timesteps(denoiser, plan):
    """``denoiser`` calling its network at the diffusers scheduler's own timesteps for ``plan``'s sigmas
    (and interpolating its time map between them as that scheduler does): a new wrapper chain, the
    given one unchanged.

    The preconditioned denoiser (``edm.Precond``) is found through the wrappers' ``inner`` /
    ``denoiser`` attributes; each wrapper on the way is copied shallowly (the network's weights are
    shared). A chain without a ``Precond`` is returned as it is."""
    from edm.precond import Precond

    path, node = [], denoiser
    while not isinstance(node, Precond) and len(path) < 8:
        attribute = "inner" if getattr(node, "inner", None) is not None else "denoiser"
        path.append((node, attribute))
        node = getattr(node, attribute, None)
    if not isinstance(node, Precond):
        return denoiser
    pinned = _shallow_copy(node)
    if hasattr(node.scheme, "interpolation"):
        scheme = _shallow_copy(node.scheme)
        scheme.interpolation = plan.interpolation
        pinned.scheme = scheme
    pinned.pin_times(plan.sigmas[:len(plan.timesteps)], plan.timesteps)
    for wrapper, attribute in reversed(path):
        outer = _shallow_copy(wrapper)
        setattr(outer, attribute, pinned)
        pinned = outer
    return pinned

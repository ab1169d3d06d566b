"""What a command samples, checked once for every command that samples (``edm generate``, ``edm fid gen``,
``edm bench``, ``edm tune-schedule``): the model, the sampler and its options, the schedule and its steps,
the class and the guidance weight, the device and the precision.

:func:`prepare_sampling` checks everything without writing anything (the sampler runs once on a 1x1 zero
problem, the guided denoiser once on one sample) and returns a :class:`Sampling`, whose
:meth:`Sampling.sample` gives the images of a list of seeds: the same for a seed whatever the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import samplers
from samplers.registry import nfe_on
from tools.common import BadInput, one_line
from tools.device import dtype_name, resolve_device, resolve_dtype, state_dtype
from tools.labels import conditioning
from tools.schedules.steps import (
    DIFFUSERS_SCHEDULE,
    diffusers_schedule,
    resize_model,
    resolve_steps,
    schedule_sigmas,
)
from tools.solvers.use import (
    AUTO,
    FITTED_SCHEDULE,
    auto_pick,
    check_fitted_use,
    read_fitted,
    special_sampler,
)
from tools.steering import Steer, Steering, check_steering, load

from .prompts import Prompting, Prompts, check_prompting, guidance_or_default

__all__ = ["GUIDANCE_MEANING", "Sampling", "check_denoiser", "check_sampler", "load",
           "prepare_sampling"]

GUIDANCE_MEANING = ("w is the classifier-free guidance weight: D + w (D - D_uncond) (with --guide-model, "
                    "autoguidance's D + w (D - D_weak)); 0 is none, larger is stronger (diffusers' "
                    "guidance_scale = 1 + w)")


def check_sampler(name: str, options: Mapping[str, Any], sigmas: torch.Tensor) -> None:
    """Run the sampler on a 1x1 zero problem: rejects unknown or invalid options before any real work."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    for key, value in options.items():
        if isinstance(value, float) and math.isnan(value):
            raise BadInput(f"option {key} must be a number, got nan", "options")
    try:
        samplers.sample(lambda x, sigma, **cond: torch.zeros_like(x), x, sigmas, name, seeds=[0], **options)
    except ValueError as e:
        raise BadInput(one_line(e), "options") from None
    except Exception as e:  # e.g. ZeroDivisionError from a degenerate option value
        raise BadInput(f"sampler {name!r} fails with options {options}: {type(e).__name__}: {one_line(e)}",
                       "options") from None


def check_guidance(model, guidance) -> float:
    """The guidance weight w: a finite number >= 0 (whether the model can take it is
    :func:`tools.steering.check_steering`'s question: autoguidance needs no class)."""
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise BadInput(f"guidance must be a number, got {guidance!r}", "guidance") from None
    if not math.isfinite(guidance) or guidance < 0:
        raise BadInput(f"guidance must be a finite number >= 0, got {guidance:g}; {GUIDANCE_MEANING}",
                       "guidance")
    return guidance


def check_denoiser(denoiser: Callable, model, sigma: float, cond: Mapping[str, Any], device: torch.device,
                   dtype: torch.dtype, why: str = "") -> None:
    """One evaluation on one sample at ``sigma`` in the precision it will run in: fails fast and cleanly."""
    state = state_dtype(dtype)
    x = torch.zeros((1, *model.shape), device=device, dtype=state)
    sigmas = torch.full((1,), float(sigma), device=device, dtype=state)
    try:
        with torch.no_grad():
            out = denoiser(x, sigmas, **cond)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
        raise BadInput(f"the model fails on this input ({device}, {dtype_name(dtype)}{why}): {one_line(e)}",
                       "model") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"the model returns {got} for an input of shape {list(x.shape)}", "model")


@dataclass(kw_only=True)
class Sampling:
    """A checked sampling setup (see :func:`prepare_sampling`)."""

    model: Any  # tools.models.LoadedModel, or any object with its fields
    sampler: str
    options: dict[str, Any]
    schedule: str
    schedule_options: dict[str, Any]
    sigmas: torch.Tensor  # float64, decreasing, ending in 0
    steps: int
    nfe: int | None  # denoiser evaluations per image (None: adaptive sampler), corrector steps included
    class_label: int | None
    guidance: float
    device: torch.device
    dtype: torch.dtype
    steer: Steer = field(repr=False)  # guidance family, thresholding, editing, corrector
    denoiser: Callable = field(default=None, repr=False)  # guided, in the model's dtype
    prompts: Prompts | None = None  # a text model's prompts (tools.generate.prompts)
    # The start and end conventions of --schedule diffusers (tools.schedules.diffusers.DiffusersPlan):
    # x starts at start_scale * latent (None: EDM's sigmas[0] * latent) and the result is end_scale * x.
    start_scale: float | None = None
    end_scale: float = 1.0
    # What samplers.sample runs: the registered name, or a fitted solver (--sampler file:PATH, whose path
    # is ``sampler``); ``auto``: where --sampler auto's pick came from.
    solver: Any = None
    auto: dict[str, Any] | None = None

    @property
    def state_dtype(self) -> torch.dtype:
        return state_dtype(self.dtype)

    def cond(self, seeds: Sequence[int], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        if self.prompts is not None:
            return self.prompts.cond(seeds, self.device, dtype or self.state_dtype)
        return conditioning(self.steer.num_classes, self.model.shape, seeds, self.class_label, self.device,
                            dtype or self.state_dtype)

    def sample(self, seeds: Sequence[int]) -> torch.Tensor:
        """The samples of ``seeds`` (``[B, C, H, W]``, in the sampler's precision; a latent model's
        latents), one batch."""
        seeds = list(seeds)
        dtype = self.state_dtype
        latents = samplers.noise.latents(seeds, self.model.shape, device=self.device, dtype=dtype)  # NVlabs'
        x, sigmas, denoiser, finish = self.steer.start(self.denoiser, latents, self.sigmas, seeds,
                                                       self.start_scale)
        out = finish(samplers.sample(denoiser, x, sigmas, self.solver or self.sampler, seeds=seeds,
                                     cond=self.cond(seeds), langevin=self.steer.corrector,
                                     resample=self.steer.resample, **self.options))
        return out if self.end_scale == 1 else out * self.end_scale

    def images(self, seeds: Sequence[int]) -> torch.Tensor:
        """The images of ``seeds`` (``[B, C, H, W]`` floats, about [-1, 1]): the samples, decoded by a
        latent model's autoencoder (in slices, float32)."""
        out = self.sample(seeds)
        autoencoder = getattr(self.model, "autoencoder", None)
        if autoencoder is None:
            return out
        with torch.no_grad():
            return autoencoder.decode(out)

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """What a list of seeds needs beyond the setup (an init image per seed) is there; BadInput if not."""
        if self.steer.edit is not None:
            self.steer.edit.check_seeds(seeds)

    @property
    def evaluations(self) -> int | None:
        """Network passes per image: the NFE times 2 under guidance (CFG's batch of 2B, autoguidance's
        second model, classifier guidance's forward + backward); an upper bound with a guidance interval."""
        return None if self.nfe is None else self.nfe * self.steer.evaluations_per_call

    def settings(self) -> dict[str, Any]:
        """What decides the images (beyond the seed), as plain data: a folder's record of its images."""
        record = {"model": str(self.model.source), "sampler": self.sampler, "options": dict(self.options),
                  "schedule": self.schedule, "schedule_options": dict(self.schedule_options),
                  "steps": self.steps, "sigmas": [float(s) for s in self.sigmas],
                  "class": self.class_label, "guidance": self.guidance, "dtype": dtype_name(self.dtype),
                  "device": self.device.type}
        steering = self.steer.steering.given()
        if self.steer.threshold is not None:
            steering["x0_threshold"] = dict(self.steer.threshold)  # also the model's own (diffusers)
        if steering:
            record["steering"] = steering
        if self.prompts is not None:
            record["text"] = self.prompts.record()
        if self.start_scale is not None or self.end_scale != 1:
            record["start_scale"], record["end_scale"] = self.start_scale, self.end_scale
        if self.auto is not None:
            record["auto"] = dict(self.auto)
        if not isinstance(self.solver, str | None):
            record["weights"] = self.solver.weights.tolist()
            record["afs"] = self.solver.afs
            if self.solver.model_sigmas is not None:
                record["model_sigmas"] = self.solver.model_sigmas.tolist()
        return record

    def describe(self) -> str:
        """What will be sampled how, in a few words."""
        nfe = "adaptive NFE" if self.nfe is None else f"{self.nfe} NFE"
        options = "".join(f" {k}={v}" for k, v in self.options.items())
        cls = "" if not self.model.num_classes else (
            f", class {self.class_label}" if self.class_label is not None else ", random classes")
        guidance = f", guidance w={self.guidance:g}" if self.guidance else ""
        steering = self.steer.steering.given()
        guidance += "".join(f", {k.replace('_', '-')} {v}" for k, v in steering.items())
        if self.prompts is not None:
            lines = self.prompts.lines
            text = repr(lines[0]) if len(lines) == 1 else f"{len(lines)} prompts"
            cls = f", {text}, {self.prompts.width}x{self.prompts.height}"
        return (f"{self.sampler}{options}, {self.steps} steps ({nfe}), {self.schedule} sigma "
                f"{float(self.sigmas[0]):g}...{float(self.sigmas[-2]):g}{cls}{guidance}, "
                f"{self.device} {dtype_name(self.dtype)}")


def follow_timesteps(denoiser, plan) -> None:
    """Make the model's preconditioned denoiser call its network at the diffusers scheduler's own
    timesteps for the plan's sigmas (and interpolate its time map as that scheduler does in between);
    ``plan`` None undoes it.

    The denoiser is found through the wrappers' ``inner`` / ``denoiser`` attributes and changed in place:
    a model object given to two setups samples as the later one says (one run at a time)."""
    from edm.precond import Precond

    seen = 0
    while not isinstance(denoiser, Precond) and seen < 8:
        denoiser = getattr(denoiser, "inner", None) or getattr(denoiser, "denoiser", None)
        seen += 1
    if not isinstance(denoiser, Precond):
        return
    scheme = denoiser.scheme
    if hasattr(scheme, "interpolation"):
        loaded = scheme.__dict__.setdefault("loaded_interpolation", scheme.interpolation)
        scheme.interpolation = loaded if plan is None else plan.interpolation
    if plan is None:
        denoiser.pin_times(None, None)
    else:
        denoiser.pin_times(plan.sigmas[:len(plan.timesteps)], plan.timesteps)


def sampler_spec(name: str):
    try:
        return samplers.get(name)
    except ValueError as e:
        raise BadInput(one_line(e), "sampler") from None


def check_option_names(spec, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options, each one the sampler has; else BadInput listing its options."""
    try:
        samplers.check_options(spec.name, options)
    except ValueError as e:
        raise BadInput(one_line(e), "options") from None
    return dict(options)


def prepare_sampling(model, *, sampler: str = "heun", schedule: str = "karras", steps: int | None = None,
                     nfe: int | None = None, options: Mapping[str, Any] | None = None,
                     sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
                     class_label: int | None = None, guidance: float | None = None, device=None,
                     dtype=torch.float32,
                     trust_pickle: bool = False, steering: Steering | None = None,
                     prompting: Prompting | None = None) -> Sampling:
    """Check every sampling argument (see :func:`tools.generate.generate`); raises :class:`BadInput`.

    Nothing is written. The model is loaded (when given as a spec), the schedule computed, the sampler
    run once on a 1x1 zero problem (checks its options) and the guided denoiser evaluated once on one
    sample (checks the model, its dtype on this device, the class and the guidance). ``steering``
    (:class:`tools.steering.Steering`) adds the guidance family, thresholding, editing and a
    corrector, checked against the model. ``prompting`` (:class:`tools.generate.prompts.Prompting`) gives a
    text model its prompts and size; ``guidance`` None is a text model's own default weight, else 0.
    """
    kind = special_sampler(sampler)
    corrector_steps = 0
    if steering is not None and steering.corrector is not None:
        corrector_steps = 1 if steering.corrector_steps is None else steering.corrector_steps
    fitted = pick = None
    if kind == "file":
        fitted = read_fitted(sampler, steps=steps, nfe=nfe, options=options)
        spec, steps, options = fitted.solver.spec, fitted.solver.levels, {}
    elif kind is None:
        spec = sampler_spec(sampler)
        steps, _ = resolve_steps(spec, steps, nfe, options or {}, corrector_steps)
        options = check_option_names(spec, options or {})
    elif options or steps is not None:
        raise BadInput("--sampler auto picks the sampler, its options and the steps for an NFE budget: give "
                       "--nfe alone", "sampler")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    model = load(model, device, dtype, trust_pickle)
    if fitted is not None:
        guidance = check_fitted_use(fitted, model, guidance)
    if kind == AUTO:
        pick = auto_pick(model, nfe)
        spec, schedule, options = sampler_spec(pick.sampler), pick.schedule, dict(pick.options)
        steps, _ = resolve_steps(spec, None, nfe, options, corrector_steps)
    model, prompts = check_prompting(prompting, model, resize_model)
    guidance = check_guidance(model, guidance_or_default(guidance, model, prompts))
    steer = check_steering(steering, model, guidance=guidance, class_label=class_label, device=device,
                           dtype=dtype, trust_pickle=trust_pickle, prompts=prompts)
    start_scale, end_scale = None, 1.0
    runs = spec.name if fitted is None else fitted.solver  # what samplers.sample is given
    if fitted is not None:
        if schedule == DIFFUSERS_SCHEDULE or any(v is not None for v in (sigma_min, sigma_max, rho)):
            raise BadInput("a fitted solver brings its own noise levels: drop --schedule, --sigma-min, "
                           "--sigma-max and --rho", "schedule")
        follow_timesteps(model.denoiser, None)
        sigmas, schedule, schedule_options = fitted.solver.sigmas.clone(), FITTED_SCHEDULE, {}
    elif schedule == DIFFUSERS_SCHEDULE:
        plan = diffusers_schedule(model, spec.name, steps, sigma_min, sigma_max, rho)
        sigmas, schedule_options = plan.sigmas, {"scheduler": plan.scheduler}
        start_scale, end_scale = plan.start_scale, plan.end_scale
        options = {**plan.options, **options}  # the scheduler's solver settings, unless given
        follow_timesteps(model.denoiser, plan)
    else:
        follow_timesteps(model.denoiser, None)  # a model object that ran a diffusers plan before
        sigmas, schedule_options = schedule_sigmas(model, schedule, steps, sigma_min, sigma_max, rho)
    check_sampler(runs, options, sigmas)
    corrector_steps = steer.corrector.steps if steer.corrector is not None else 0
    try:
        nfe_per_image = nfe_on(runs, steer.run_sigmas(sigmas), corrector_steps=corrector_steps,
                               resample=steer.resample, **options)  # exact, img2img's shorter run included
    except ValueError as e:  # restart cannot take a corrector or resampling
        raise BadInput(one_line(e), "corrector" if corrector_steps else "resample") from None
    setup = Sampling(model=model, sampler=spec.name if fitted is None else fitted.name, solver=runs,
                     auto=None if pick is None else dict(pick.__dict__), options=options, schedule=schedule,
                     schedule_options=schedule_options, sigmas=sigmas, steps=steps, nfe=nfe_per_image,
                     class_label=steer.class_label, guidance=guidance, device=device, dtype=dtype,
                     denoiser=steer.denoiser(model, dtype), steer=steer, prompts=prompts,
                     start_scale=start_scale, end_scale=end_scale)
    cond = setup.cond([0]) if prompts is None else prompts.first_cond(device, state_dtype(dtype))
    check_denoiser(setup.denoiser, model, float(sigmas[0]), cond, device, dtype)
    return setup

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
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import samplers
from samplers.registry import nfe_on
from tools.common import BadInput, compact, one_line
from tools.device import dtype_name, resolve_device, resolve_dtype, state_dtype
from tools.labels import conditioning
from tools.request import SamplingRequest
from tools.schedules.steps import (
    DIFFUSERS_SCHEDULE,
    check_schedule,
    diffusers_schedule,
    pinned_to_timesteps,
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
from tools.steering import CheckedSteering, Steering, check_steering, load
from tools.steering.img2img import check_run_steps
from tools.steering.threshold import threshold_flags, threshold_setting

from .low_res import LowResInput, check_low_res
from .prompts import Prompts, check_prompting, guidance_or_default

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_SCHEDULE", "GUIDANCE_MEANING", "Sampling", "check_denoiser",
           "check_sampler", "load", "prepare_sampling", "with_recorded"]

#: what a request that names no sampler / schedule runs on a model that records none
DEFAULT_SAMPLER, DEFAULT_SCHEDULE = "heun", "karras"

GUIDANCE_MEANING = ("w is the classifier-free guidance weight: D + w (D - D_uncond) (with --guide-model, "
                    "autoguidance's D + w (D - D_weak)); 0 is none, larger is stronger (diffusers' "
                    "guidance_scale = 1 + w)")


def check_sampler(name: str, options: Mapping[str, Any], sigmas: torch.Tensor) -> None:
    """Run the sampler on a 1x1 zero problem: rejects unknown or invalid options before any real work."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    for key, value in options.items():
        if isinstance(value, float) and math.isnan(value):
            raise BadInput(f"option {key} must be a number, got nan", "options")
    # every option's name, which the messages below may name (a check may mention an option not given)
    terms = tuple(samplers.get(name).options) if name in samplers.list() else tuple(options)
    try:
        samplers.sample(lambda x, sigma, **cond: torch.zeros_like(x), x, sigmas, name, seeds=[0], **options)
    except ValueError as e:
        raise BadInput(one_line(e), "options", terms=terms) from None
    except Exception as e:  # e.g. ZeroDivisionError from a degenerate option value
        raise BadInput(f"sampler {name!r} fails with options {compact(options)}: {type(e).__name__}: "
                       f"{one_line(e)}", "options", terms=terms) from None


def check_guidance(model, guidance, cfg_pp: bool = False) -> float:
    """The guidance weight w: a finite number >= 0, or >= -1 under CFG++ (whose paper writes the guided x0
    as ``D_uncond + lambda (D - D_uncond)`` with lambda in [0, 1]: lambda = 1 + w, so w in [-1, 0] is the
    paper's range). Whether the model can take it is :func:`tools.steering.check_steering`'s question
    (autoguidance needs no class)."""
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise BadInput(f"guidance must be a number, got {guidance!r}", "guidance") from None
    lowest, why = (-1.0, " with --cfg-pp (CFG++'s lambda = 1 + w)") if cfg_pp else (0.0, "")
    if not math.isfinite(guidance) or guidance < lowest:
        raise BadInput(f"guidance must be a finite number >= {lowest:g}{why}, got {guidance:g}; "
                       f"{GUIDANCE_MEANING}", "guidance")
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
    steer: CheckedSteering = field(repr=False)  # guidance family, thresholding, editing, corrector
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
    low_res: LowResInput | None = None  # a super-resolution model's low-resolution input
    #: the folders (inside the output folder) of :meth:`outputs`: the images themselves
    output_dirs = ("",)

    @property
    def state_dtype(self) -> torch.dtype:
        return state_dtype(self.dtype)

    def cond(self, seeds: Sequence[int], dtype: torch.dtype | None = None,
             low_res: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The denoiser's keyword arguments of ``seeds``: their prompts or classes, and a super-resolution
        model's encoded low-resolution images (``low_res``, else the --low-res source's)."""
        dtype = dtype or self.state_dtype
        if self.prompts is not None:
            cond = self.prompts.cond(seeds, self.device, dtype)
        else:
            cond = conditioning(self.steer.num_classes, self.model.shape, seeds, self.class_label,
                                self.device, dtype)
        if self.low_res is not None:
            cond = {**cond, **self.low_res.cond(seeds, self.device, dtype, low_res)}
        return cond

    def _latents(self, seeds: list[int], dtype: torch.dtype) -> torch.Tensor:
        # a pipeline that draws its start after the image's noise, from one generator, says so
        own = getattr(getattr(self.low_res, "conditioner", None), "start_latents", None)
        if own is not None:
            return own(seeds, self.model.shape, self.device, dtype)
        return samplers.noise.latents(seeds, self.model.shape, device=self.device, dtype=dtype)  # NVlabs'

    def sample(self, seeds: Sequence[int], low_res: torch.Tensor | None = None) -> torch.Tensor:
        """The samples of ``seeds`` (``[B, C, H, W]``, in the sampler's precision; a latent model's
        latents), one batch. ``low_res``: a super-resolution model's low-resolution images of these seeds
        (``[B, C, h, w]`` in [-1, 1]), instead of its --low-res source's."""
        seeds = list(seeds)
        dtype = self.state_dtype
        latents = self._latents(seeds, dtype)
        x, sigmas, denoiser, finish = self.steer.start(self.denoiser, latents, self.sigmas, seeds,
                                                       self.start_scale)
        out = finish(samplers.sample(denoiser, x, sigmas, self.solver or self.sampler, seeds=seeds,
                                     cond=self.cond(seeds, low_res=low_res), langevin=self.steer.corrector,
                                     resample=self.steer.resample, **self.options))
        return out if self.end_scale == 1 else out * self.end_scale

    def images(self, seeds: Sequence[int], low_res: torch.Tensor | None = None) -> torch.Tensor:
        """The images of ``seeds`` (``[B, C, H, W]`` floats, about [-1, 1]): the samples, decoded by a
        latent model's autoencoder (in slices, float32). ``low_res``: as :meth:`sample`."""
        out = self.sample(seeds, low_res)
        autoencoder = getattr(self.model, "autoencoder", None)
        if autoencoder is None:
            return out
        with torch.no_grad():
            return autoencoder.decode(out)

    def outputs(self, seeds: Sequence[int]) -> dict[str, Any]:
        """uint8 ``[B, H, W, C]`` images of ``seeds`` by folder of :attr:`output_dirs` (a cascade has two)."""
        from tools.images import to_uint8

        return {"": to_uint8(self.images(seeds))}

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """What a list of seeds needs beyond the setup (an init image per seed) is there; BadInput if not."""
        if self.steer.edit is not None:
            self.steer.edit.check_seeds(seeds)
        if self.low_res is not None:
            self.low_res.check_seeds(seeds)

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
        if self.steer.settings.get("guidance_input") is not None:
            record["guidance_input"] = True  # the weight went into the network, one evaluation per step
        if self.steer.threshold is not None:
            steering["x0_threshold"] = dict(self.steer.threshold)  # also the model's own (diffusers)
        if steering:
            record["steering"] = steering
        if self.prompts is not None:
            record["text"] = self.prompts.record()
        if self.low_res is not None:
            record["low_res"] = self.low_res.record()
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
        if self.steer.settings.get("guidance_input") is not None:
            guidance = f", guidance w={self.guidance:g} (a network input)"
        steering = self.steer.steering.given()
        guidance += "".join(f", {k.replace('_', '-')} {v}" for k, v in steering.items())
        if self.prompts is not None:
            lines = self.prompts.lines
            text = repr(lines[0]) if len(lines) == 1 else f"{len(lines)} prompts"
            cls = f", {text}, {self.prompts.width}x{self.prompts.height}"
        if self.low_res is not None:
            cls += f", {self.low_res.describe()}"
        return (f"{self.sampler}{options}, {self.steps} steps ({nfe}), {self.schedule} sigma "
                f"{float(self.sigmas[0]):g}...{float(self.sigmas[-2]):g}{cls}{guidance}, "
                f"{self.device} {dtype_name(self.dtype)}")


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
        raise BadInput(one_line(e), "options", terms=(*options, *spec.options)) from None
    return dict(options)


@dataclass
class _Choice:
    """The sampler a request runs, before the model is loaded: a registered one, a fitted solver or auto."""

    kind: str | None  # None (registered), "file" or AUTO (tools.solvers.use.special_sampler)
    spec: Any = None  # the samplers registry entry
    steps: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "karras"
    fitted: Any = None  # tools.solvers.use.Fitted
    pick: Any = None  # --sampler auto's pick
    says: str | None = None  # a line for the user: auto runs another model than the one asked for
    ranges: dict[str, float] = field(default_factory=dict)  # auto's student: the range it was trained on


def _choose_sampler(request: SamplingRequest, corrector_steps: int) -> _Choice:
    kind = special_sampler(request.sampler)
    options = dict(request.options)
    if kind == "file":
        fitted = read_fitted(request.sampler, steps=request.steps, nfe=request.nfe, options=options)
        return _Choice(kind, fitted.solver.spec, fitted.solver.levels, {}, request.schedule, fitted=fitted)
    if kind is None:
        if request.schedule is not None:  # before the model is loaded: the name alone tells
            check_schedule(request.schedule)
        spec = sampler_spec(request.sampler)
        steps, _ = resolve_steps(spec, request.steps, request.nfe, options, corrector_steps)
        return _Choice(kind, spec, steps, check_option_names(spec, options), request.schedule)
    if options or request.steps is not None:
        raise BadInput("--sampler auto picks the sampler, its options and the steps for an NFE budget: give "
                       "--nfe alone", "sampler")
    return _Choice(kind, schedule=request.schedule)


def with_recorded(request: SamplingRequest, model) -> SamplingRequest:
    """``request`` with what it leaves unset taken from the model's recorded default
    (``model.sampling``, a :class:`tools.models.base.RecordedSampling`), else heun on karras.

    The recorded sampler runs when the request names none; the recorded steps (unless ``steps`` or
    ``nfe`` is given) and options (under the given ones) go with the recorded sampler only, whether named
    or not. The recorded schedule and sigma range apply to any registered sampler unless given, the
    recorded rho only on the recorded schedule. A fitted solver or ``auto`` brings its own levels: it
    takes nothing recorded."""
    recorded = getattr(model, "sampling", None)
    sampler = request.sampler or (recorded and recorded.sampler) or DEFAULT_SAMPLER
    if recorded is None or special_sampler(sampler) is not None:
        return request.replace(sampler=sampler, schedule=request.schedule or DEFAULT_SCHEDULE)
    changes: dict[str, Any] = {"sampler": sampler}
    if sampler == (recorded.sampler or DEFAULT_SAMPLER):
        if request.steps is None and request.nfe is None:
            changes["steps"] = recorded.steps
        changes["options"] = {**recorded.options, **request.options}
    changes["schedule"] = request.schedule or recorded.schedule or DEFAULT_SCHEDULE
    for name in ("sigma_min", "sigma_max"):
        given = getattr(request, name)
        changes[name] = given if given is not None else getattr(recorded, name)
    if request.rho is None and changes["schedule"] == recorded.schedule:
        changes["rho"] = recorded.rho
    return request.replace(**changes)


def _auto_choice(model, request: SamplingRequest, corrector_steps: int, device, dtype) -> tuple[_Choice, Any]:
    """--sampler auto's pick for the loaded model, and the model it runs: the one asked for, or a student
    of it that a model row names (``tools.solvers.students``). A fitted solver's pick is read as
    ``--sampler file:PATH`` is (its model and guidance are checked by the caller, as for one given)."""
    from tools.solvers.students import AutoGate

    steering = request.steering
    steered = bool(request.guidance) or bool(steering is not None and steering.items()) or corrector_steps > 0
    ranged = any(getattr(request, name) is not None for name in ("sigma_min", "sigma_max", "rho"))
    gate = AutoGate(model, device=device, dtype=dtype, steered=steered, ranged=ranged)
    pick = auto_pick(model, request.nfe, gate)
    if pick.kind == "solver":
        fitted = read_fitted(pick.sampler, nfe=pick.nfe)
        return _Choice(AUTO, fitted.solver.spec, fitted.solver.levels, {}, FITTED_SCHEDULE, fitted=fitted,
                       pick=pick), model
    spec, options = sampler_spec(pick.sampler), dict(pick.options)
    if pick.kind == "model":
        student = gate.loaded[pick.model]
        says = (f"--sampler auto at NFE {pick.nfe}: runs student {pick.model} ({pick.sampler} / "
                f"{pick.schedule}, {pick.steps} steps) in place of {model.source}: {pick.metric} "
                f"{pick.value:.3g} in {pick.source.removeprefix('table ')}")
        return _Choice(AUTO, spec, pick.steps, options, pick.schedule, pick=pick, says=says,
                       ranges=dict(pick.ranges or {})), student
    steps, _ = resolve_steps(spec, None, request.nfe, options, corrector_steps)
    return _Choice(AUTO, spec, steps, options, pick.schedule, pick=pick), model


@dataclass
class _Levels:
    """The noise levels a run visits, with the conventions of where they came from."""

    model: Any  # the model, its denoiser pinned to a diffusers scheduler's timesteps for --schedule diffusers
    sigmas: torch.Tensor
    schedule: str
    schedule_options: dict[str, Any]
    options: dict[str, Any]
    start_scale: float | None = None
    end_scale: float = 1.0


def _check_no_schedule(choice: _Choice, request: SamplingRequest) -> None:
    """BadInput naming the schedule flag given with a fitted solver: its levels are fitted, so neither a
    schedule nor a range or rho applies."""
    given = [name for name in ("sigma_min", "sigma_max", "rho") if getattr(request, name) is not None]
    if choice.schedule == DIFFUSERS_SCHEDULE:
        given.insert(0, "schedule")
    if given:
        levels = choice.fitted.solver.sigmas
        flag = "--" + given[0].replace("_", "-")
        raise BadInput(f"a fitted solver brings its own noise levels (sigma {float(levels[0]):g}..."
                       f"{float(levels[-2]):g}): drop {flag}", given[0])


def _auto_record(choice: _Choice, request: SamplingRequest) -> dict[str, Any] | None:
    """What a run's record says of --sampler auto's pick: the pick itself, and for a student's pick the
    model asked for and the line the commands print (``runs``)."""
    if choice.pick is None:
        return None
    record = dict(choice.pick.__dict__)
    if choice.says is not None:
        record.update(runs=choice.says, asked_model=str(getattr(request.model, "source", request.model)))
    return record


def _levels(choice: _Choice, model, request: SamplingRequest) -> _Levels:
    ranges = tuple(choice.ranges.get(key, getattr(request, key)) for key in ("sigma_min", "sigma_max", "rho"))
    if choice.fitted is not None:
        _check_no_schedule(choice, request)
        return _Levels(model, choice.fitted.solver.sigmas.clone(), FITTED_SCHEDULE, {}, choice.options)
    if choice.schedule == DIFFUSERS_SCHEDULE:
        plan = diffusers_schedule(model, choice.spec.name, choice.steps, *ranges)
        pinned = replace(model, denoiser=pinned_to_timesteps(model.denoiser, plan))
        return _Levels(pinned, plan.sigmas, choice.schedule, {"scheduler": plan.scheduler},
                       {**plan.options, **choice.options},  # the scheduler's solver settings, unless given
                       plan.start_scale, plan.end_scale)
    sigmas, schedule_options = schedule_sigmas(model, choice.schedule, choice.steps, *ranges)
    return _Levels(model, sigmas, choice.schedule, schedule_options, choice.options)


def fitted_steering(fitted, steering: Steering | None, *, fill_in: bool = True) -> Steering | None:
    """The steering to sample a solver file (``tools.solvers.use.Fitted``) with: the given one, with the
    thresholding it was fitted with when none is given and ``fill_in`` (as its guidance is filled in);
    BadInput naming --threshold when another one is given, or none without ``fill_in`` (its levels and
    weights are fitted to the thresholded trajectories)."""
    recorded = fitted.metadata.get("steering")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    want = threshold_setting(recorded)
    given = None if steering is None else threshold_setting(dict(steering.items()))
    if given == want:
        return steering
    if given is None and fill_in:
        keys = ("threshold", "threshold_percentile")
        return (steering or Steering()).replace(**{key: recorded.get(key) for key in keys})
    path = fitted.name.removeprefix("file:")
    was = "without --threshold" if want is None else f"with {threshold_flags(want)}"
    if given is None:
        raise BadInput(f"solver file {path} was fitted {was}: give {threshold_flags(want)}", "threshold")
    raise BadInput(f"solver file {path} was fitted {was}, not {threshold_flags(given)}: sample with its "
                   "thresholding or fit one with yours", "threshold")


def _blank(low_res: LowResInput, device) -> torch.Tensor:
    """A grey low-resolution image: what the one check of the denoiser conditions on."""
    return torch.zeros((1, *low_res.conditioner.shape), device=device)


def _corrector_steps(steering) -> int:
    if steering is None or steering.corrector is None:
        return 0
    return 1 if steering.corrector_steps is None else steering.corrector_steps


def prepare_sampling(request: SamplingRequest, *, staged: bool = False) -> Sampling:
    """Check every field of ``request`` (a :class:`tools.request.SamplingRequest`); raises
    :class:`BadInput` naming the argument.

    Nothing is written. The model is loaded (when given as a spec), the schedule computed, the sampler
    run once on a 1x1 zero problem (checks its options) and the guided denoiser evaluated once on one
    sample (checks the model, its dtype on this device, the class and the guidance). The request's
    steering adds the guidance family, thresholding, editing and a corrector, checked against the model;
    its prompting gives a text model its prompts and size; guidance None is a pipeline's own default
    weight (a text model's, or a class-conditional pipeline's sampled with its class), else 0. A
    super-resolution model (``model.low_res``) needs its ``low_res`` images, unless ``staged``: a cascade's
    stage, whose images the stage before gives to :meth:`Sampling.sample`; its level is the request's
    field its conditioner's ``level_flag`` names (default the model's).
    """
    corrector_steps = _corrector_steps(request.steering)  # the flags' count: budgets include them
    if request.sampler is not None:  # what the names alone tell is checked before the model is loaded
        _choose_sampler(request, corrector_steps)
    elif request.schedule is not None:
        check_schedule(request.schedule)
    device, dtype = resolve_device(request.device), resolve_dtype(request.dtype)
    model = load(request.model, device, dtype, request.trust_pickle)
    request = with_recorded(request, model)
    choice = _choose_sampler(request, corrector_steps)
    guidance, steering = request.guidance, request.steering
    if choice.kind == AUTO:
        choice, model = _auto_choice(model, request, corrector_steps, device, dtype)
    if choice.fitted is not None:
        guidance = check_fitted_use(choice.fitted, model, guidance)
        steering = fitted_steering(choice.fitted, steering)
    model, prompts = check_prompting(request.prompting, model, resize_model)
    low_res = check_low_res(request, model, staged)
    cfg_pp = steering is not None and bool(steering.cfg_pp)
    guidance = check_guidance(model, guidance_or_default(guidance, model, prompts, steering), cfg_pp)
    steer = check_steering(steering, model, guidance=guidance, class_label=request.class_label,
                           device=device, dtype=dtype, trust_pickle=request.trust_pickle, prompts=prompts)
    steer.check_sampler(choice.spec)
    levels = _levels(choice, model, request)
    check_run_steps(steer.edit, len(levels.sigmas) - 1, "nfe" if request.nfe is not None else "steps")
    steer = steer.for_schedule(steer.run_sigmas(levels.sigmas))  # --guidance-start/stop on these steps
    runs = choice.spec.name if choice.fitted is None else choice.fitted.solver  # what samplers.sample runs
    check_sampler(runs, levels.options, levels.sigmas)
    corrector_steps = steer.corrector.steps if steer.corrector is not None else 0
    try:
        nfe_per_image = nfe_on(runs, steer.run_sigmas(levels.sigmas), corrector_steps=corrector_steps,
                               resample=steer.resample, **levels.options)  # img2img's shorter run included
    except ValueError as e:  # restart cannot take a corrector or resampling
        raise BadInput(one_line(e), "corrector" if corrector_steps else "resample") from None
    setup = Sampling(model=levels.model, sampler=choice.spec.name if choice.fitted is None else
                     choice.fitted.name, solver=runs, auto=_auto_record(choice, request),
                     options=levels.options, schedule=levels.schedule,
                     schedule_options=levels.schedule_options, sigmas=levels.sigmas, steps=choice.steps,
                     nfe=nfe_per_image, class_label=steer.class_label, guidance=guidance, device=device,
                     dtype=dtype, denoiser=steer.denoiser(levels.model, dtype), steer=steer,
                     prompts=prompts, start_scale=levels.start_scale, end_scale=levels.end_scale,
                     low_res=low_res)
    blank = None if low_res is None else _blank(low_res, device)  # a per-seed source is read per batch
    state = state_dtype(dtype)
    cond = setup.cond([0], low_res=blank) if prompts is None else prompts.first_cond(device, state)
    if low_res is not None and prompts is not None:  # a text-conditioned upscaler: both
        cond = {**cond, **low_res.cond([0], device, state, blank)}
    check_denoiser(setup.denoiser, levels.model, float(levels.sigmas[0]), cond, device, dtype)
    return setup

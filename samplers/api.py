"""``samplers.sample``: run any registered sampler on any denoiser following the protocol
(``samplers.protocol.Denoiser``: ``D(x, sigma, **cond) -> x0_hat``, with optional attributes
``samplers.protocol.OPTIONAL_ATTRIBUTES``)."""

from __future__ import annotations

import math

import torch

from . import registry
from .langevin import LangevinCorrector
from .noise import CORRECTOR_STREAM, RESAMPLE_STREAM, make_noise, normal_draws
from .schedules import validate_sigmas
from .segments import jump_up, parts, run_part

_NON_NEGATIVE = ("eta", "s_noise", "s_churn", "s_tmin", "s_tmax")


class Model:
    """A user's denoiser (``samplers.protocol.Denoiser``) as samplers call it: ``model(x, sigma: float)``.

    Broadcasts sigma to a ``[B]`` tensor of x's dtype, passes the conditioning, returns x's dtype,
    and exposes ``round_sigma`` on floats and the ascending table ``sigmas`` when the denoiser has them
    (discrete-time models), and ``with_unconditional`` when the denoiser offers CFG++'s pair.
    """

    def __init__(self, denoiser, cond=None):
        self.denoiser = denoiser
        self.cond = dict(cond or {})
        if hasattr(denoiser, "round_sigma"):
            self.round_sigma = self._round_sigma
        if hasattr(denoiser, "with_unconditional"):  # CFG++ (samplers.guidance.CFGPlusPlus)
            self.with_unconditional = self._with_unconditional
        if getattr(denoiser, "sigmas", None) is not None:  # a discrete model's table (tcd places steps on it)
            self.sigmas = denoiser.sigmas

    def _round_sigma(self, sigma: float) -> float:
        return float(self.denoiser.round_sigma(torch.tensor(sigma, dtype=torch.float64)))

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = self.denoiser(x, self._sigma(x, sigma), **self.cond)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _sigma(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)

    def _with_unconditional(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(guided x0, unconditional x0)`` of one evaluation (CFG++), in x's dtype."""
        guided, negative = self.denoiser.with_unconditional(x, self._sigma(x, sigma), **self.cond)
        return guided.to(x.dtype), negative.to(x.dtype)

    def split(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw, used)`` x0 predictions of one evaluation: they differ only under an x0 transform that
        offers ``split`` (``samplers.guidance.Thresholded``); otherwise both are the same tensor."""
        if not hasattr(self.denoiser, "split"):
            out = self(x, sigma)
            return out, out
        raw, out = self.denoiser.split(x, self._sigma(x, sigma), **self.cond)
        return raw.to(x.dtype), out.to(x.dtype)


def check_options(sampler, options) -> None:
    """ValueError (one line) unless every option is one sampler ``sampler`` (a name or spec) has, and the
    noise scales among them are non-negative numbers. The one check of option names, for every caller."""
    spec = registry.get(sampler) if isinstance(sampler, str) else sampler
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"sampler {spec.name!r} has no option {', '.join(unknown)}; its options: {valid}")
    for key in _NON_NEGATIVE:
        value = options.get(key)
        valid = isinstance(value, int | float) and value >= 0 and not math.isnan(value)
        if value is not None and not valid:
            shown = f"{value:g}" if isinstance(value, int | float) else value  # as typed: -1, abc
            raise ValueError(f"{key} must be a non-negative number, got {shown}")


def check_resample(resample) -> tuple[int, int] | None:
    """RePaint's ``(jump, count)``: positive integers; ``count`` 1 is no resampling (None)."""
    if resample is None:
        return None
    try:
        jump, count = resample
    except (TypeError, ValueError):
        raise ValueError(f"resample must be a pair (jump, count), got {resample!r}") from None
    for name, value in (("jump", jump), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"resample {name} must be a positive integer, got {value!r}")
    return None if count == 1 else (jump, count)


def sample(denoiser, x, sigmas, sampler="heun", seeds=None, callback=None, *, cond=None, noise=None,
           langevin: LangevinCorrector | None = None, resample: tuple[int, int] | None = None, **options):
    """Sample from ``denoiser`` starting at ``x = latents * sigmas[0]`` (as k-diffusion).

    ``denoiser``: any ``D(x, sigma, **cond) -> x0_hat`` (``samplers.protocol.Denoiser``); it is called
    with ``sigma`` a ``[B]`` tensor of x's dtype, and its ``round_sigma``, when it has one, is used.
    ``sigmas``: decreasing 1-D schedule ending in 0 (see ``samplers.schedules``). ``seeds``: one int per
    sample; all randomness then comes from per-seed streams, so a sample does not depend on the batch
    it is in. ``seeds=None`` draws from torch's global generator, as k-diffusion. ``noise`` overrides the
    noise source (any ``noise(sigma, sigma_next) -> tensor`` callable, e.g. k-diffusion's samplers').
    ``cond``: keyword arguments passed to every denoiser call. ``options``: the sampler's own options
    (``samplers.get(name).options`` lists them with their defaults, ``.option_help`` describes them).

    Between steps: ``langevin`` (a ``samplers.langevin.LangevinCorrector``; not ``corrector``, which is
    UniPC's own option) runs its Langevin steps at each step's noise level before the step (Song et al.
    2021's predictor-corrector); ``resample=(jump, count)`` solves each part of ``jump`` steps ``count``
    times, jumping back up in noise in between (RePaint, Lugmayr et al. 2022). Either runs the sampler
    part by part (``samplers.segments``); ``samplers.registry.nfe_on`` counts their evaluations.

    Starting at sigma = inf (flow-matching schedules from t = 1): when ``sigmas[0]`` is inf, ``x`` is the
    unit-variance latent ``u = lim x / sigma`` itself, and the denoiser is called with ``u`` at sigma = inf
    (``edm.precond.Precond`` does this with its scheme's limits). The first step is the Euler (= DDIM)
    step from infinity, ``x_1 = D(u; inf) + sigmas[1] * u``: the limit of every first-order first step, and
    exactly diffusers' ``FlowMatchEulerDiscreteScheduler`` step from t = 1. The chosen sampler then runs
    on ``sigmas[1:]``; this adds one denoiser evaluation to the sampler's count on ``sigmas[1:]``. The
    callback sees that step as ``i = 0`` (with ``sigma = inf``) and the sampler's steps shifted by one.

    CFG++: a denoiser offering ``with_unconditional`` (``samplers.guidance.CFGPlusPlus``) runs only with a
    sampler that declares it (``samplers.get(name).cfg_pp``); ValueError naming those otherwise.
    """
    spec = registry.get(sampler)
    check_options(spec, options)
    if hasattr(denoiser, "with_unconditional"):
        registry.check_cfg_pp(spec)
    resample = check_resample(resample)
    if langevin is not None or resample is not None:
        registry.check_runs_in_parts(spec)
    if langevin is not None and not isinstance(langevin, LangevinCorrector):
        raise ValueError(f"langevin must be a samplers.langevin.LangevinCorrector, got {langevin!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor of shape [B, ...] with B >= 1")
    infinite = _starts_at_infinity(sigmas)
    sigma_list = _validate_tail(sigmas) if infinite else validate_sigmas(sigmas).tolist()
    reset = getattr(denoiser, "reset_state", None)  # a wrapper chain's (samplers.guidance.DenoiserWrapper)
    if callable(reset):
        reset()  # a stateful guidance rule (APG's momentum) starts every run afresh
    model = Model(denoiser, cond)
    options = {**spec.options, **options}
    with torch.no_grad():
        if infinite:
            x = _step_from_infinity(model, x, sigma_list[0], callback)
            if len(sigma_list) == 1:
                return x
            callback = None if callback is None else _shifted(callback)
        if langevin is None and resample is None:
            if noise is None:
                noise = make_noise(spec.noise, x, seeds, draws_hint=len(sigma_list) - 1)
            return spec.fn(model, x, sigma_list, noise=noise, callback=callback, **options)
        if noise is not None:
            raise ValueError("a noise override cannot be combined with a corrector or resampling")
        return _in_parts(spec, model, x, sigma_list, seeds, callback, options, langevin, resample)


def _starts_at_infinity(sigmas) -> bool:
    try:
        return len(sigmas) > 0 and float(sigmas[0]) == math.inf
    except (TypeError, ValueError, RuntimeError):
        return False  # validate_sigmas says what is wrong


def _validate_tail(sigmas) -> list[float]:
    """``sigmas[1:]`` of a schedule starting at inf, checked as a schedule (a single level: finite, >= 0)."""
    tail = sigmas[1:]
    if len(tail) >= 2:
        return validate_sigmas(tail).tolist()
    if len(tail) == 0:
        raise ValueError("sigmas needs at least 2 values (one step), got 1")
    last = float(tail[0])
    if not (math.isfinite(last) and last >= 0):
        raise ValueError(f"sigmas after an infinite start must be finite and >= 0; sigmas[1] = {last}")
    return [last]


def _step_from_infinity(model, u, sigma_next: float, callback):
    """Euler step from sigma = inf: ``x = D(u; inf) + sigma_next u``, ``u = lim x / sigma`` the latent.

    Every first-order step ``x' = D + (sigma_next / sigma) (x - D)`` tends to this as sigma -> inf
    (``x / sigma = u``, ``D / sigma -> 0``); in flow time it is ``x_t' = x_1 - (1 - t') v(x_1, 1)``.
    """
    denoised = model(u, math.inf)
    if callback is not None:
        callback({"x": u, "i": 0, "sigma": math.inf, "sigma_hat": math.inf, "denoised": denoised})
    return denoised + sigma_next * u


def _shifted(callback):
    """The callback with step indices one later (the step from infinity was step 0)."""
    return lambda info: callback({**info, "i": info["i"] + 1})


def _in_parts(spec, model, x, sigmas, seeds, callback, options, corrector, resample):
    """The run cut into parts: corrector steps before every step, RePaint's jumps between parts."""
    steps = len(sigmas) - 1
    normal = normal_draws(x, seeds, steps) if spec.noise else None
    fix = normal_draws(x, seeds, stream=CORRECTOR_STREAM) if corrector else None
    jump_noise = normal_draws(x, seeds, stream=RESAMPLE_STREAM) if resample else None
    jump, count = resample or (steps, 1)
    run = dict(normal=normal, callback=callback, options=options)
    for a, b, repeats in parts(steps, jump, count):
        for repeat in range(repeats):
            if repeat:
                x = jump_up(x, sigmas[b], sigmas[a], jump_noise.draw)
            if corrector is None:
                x = run_part(spec, model, x, sigmas, a, b, **run)
                continue
            for i in range(a, b):
                x = corrector(model, x, sigmas[i], fix.draw)
                x = run_part(spec, model, x, sigmas, i, i + 1, **run)
    return x

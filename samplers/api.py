"""``samplers.sample``: run any registered sampler on any denoiser following the protocol
(``samplers.protocol.Denoiser``: ``D(x, sigma, **cond) -> x0_hat``, with optional attributes
``samplers.protocol.OPTIONAL_ATTRIBUTES``)."""

from __future__ import annotations

import math

import torch

from . import registry
from .noise import make_noise
from .schedules import validate_sigmas

_NON_NEGATIVE = ("eta", "s_noise", "s_churn", "s_tmin", "s_tmax")


class Model:
    """A user's denoiser (``samplers.protocol.Denoiser``) as samplers call it: ``model(x, sigma: float)``.

    Broadcasts sigma to a ``[B]`` tensor of x's dtype, passes the conditioning, returns x's dtype,
    and exposes ``round_sigma`` on floats when the denoiser has one (discrete-time models).
    """

    def __init__(self, denoiser, cond=None):
        self.denoiser = denoiser
        self.cond = dict(cond or {})
        if hasattr(denoiser, "round_sigma"):
            self.round_sigma = self._round_sigma

    def _round_sigma(self, sigma: float) -> float:
        return float(self.denoiser.round_sigma(torch.tensor(sigma, dtype=torch.float64)))

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = self.denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device),
                            **self.cond)
        return out if out.dtype == x.dtype else out.to(x.dtype)


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
            raise ValueError(f"option {key} must be a non-negative number, got {value!r}")


def sample(denoiser, x, sigmas, sampler="heun", seeds=None, callback=None, *, cond=None, noise=None,
           **options):
    """Sample from ``denoiser`` starting at ``x = latents * sigmas[0]`` (as k-diffusion).

    ``denoiser``: any ``D(x, sigma, **cond) -> x0_hat`` (``samplers.protocol.Denoiser``); it is called
    with ``sigma`` a ``[B]`` tensor of x's dtype, and its ``round_sigma``, when it has one, is used.
    ``sigmas``: decreasing 1-D schedule ending in 0 (see ``samplers.schedules``). ``seeds``: one int per
    sample; all randomness then comes from per-seed streams, so a sample does not depend on the batch
    it is in. ``seeds=None`` draws from torch's global generator, as k-diffusion. ``noise`` overrides the
    noise source (any ``noise(sigma, sigma_next) -> tensor`` callable, e.g. k-diffusion's samplers').
    ``cond``: keyword arguments passed to every denoiser call. ``options``: the sampler's own options
    (``samplers.get(name).options`` lists them with their defaults, ``.option_help`` describes them).
    """
    spec = registry.get(sampler)
    check_options(spec, options)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor of shape [B, ...] with B >= 1")
    sigma_list = validate_sigmas(sigmas).tolist()
    if noise is None:
        noise = make_noise(spec.noise, x, seeds, draws_hint=len(sigma_list) - 1)
    with torch.no_grad():
        return spec.fn(Model(denoiser, cond), x, sigma_list, noise=noise, callback=callback,
                       **{**spec.options, **options})

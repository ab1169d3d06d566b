"""Editing an existing image: img2img (SDEdit) and inpainting, for every sampler and schedule.

**img2img** (Meng et al. 2022, SDEdit): with strength ``s`` in (0, 1] and a schedule of ``N`` steps, run
the last ``n = floor(N s)`` steps, i.e. start at ``sigmas[N - n]``, from the init image noised to that
level with the seed's latent: ``x = init + sigma_start * latent``. This is diffusers' img2img rule
(``init_timestep = min(int(N * strength), N)``, ``t_start = N - init_timestep``), so a diffusers schedule
starts where diffusers' pipeline does. ``s = 1`` is exactly plain generation: the run starts from
``sigma_max * latent`` with no trace of the init image (at sigma_max the image would be 1/80 of the
state; dropping it makes strength 1 the unedited model).

**Inpainting** (Lugmayr et al. 2022 without resampling): a mask says
which pixels to generate (1) and which to keep (0). :class:`Inpainting` wraps the denoiser so that at
every evaluation the known region of its input is the init image noised to the current level with the
seed's latent, ``init + sigma * latent``, and the known region of its output is the init image. A
deterministic sampler therefore keeps the known region of its state exactly on ``init + sigma * latent``
(the ODE with ``D = init`` is linear in sigma, which every solver integrates exactly); :func:`paste`
makes the final image equal the init image there. RePaint's resampling (jumps back up in noise, for a
better fit between the regions) is ``samplers.sample(..., resample=(jump, count))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .guidance.wrapper import DenoiserWrapper, sigma_column

__all__ = ["Inpainting", "img2img_start", "img2img_steps", "paste"]


def img2img_steps(steps: int, strength: float) -> int:
    """How many of a schedule's ``steps`` an img2img run of ``strength`` takes: ``min(floor(N s), N)``."""
    strength = float(strength)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength:g}")
    taken = min(int(steps * strength), steps)
    if taken < 1:
        raise ValueError(f"strength {strength:g} of {steps} steps runs no step "
                         f"(floor({steps} x {strength:g}) = 0); raise the strength or the steps")
    return taken


def img2img_start(init: torch.Tensor, latents: torch.Tensor, sigmas, strength: float,
                  start_scale: float | None = None):
    """``(x_start, sigmas_run)``: where an img2img run of ``strength`` starts on the schedule ``sigmas``
    (decreasing, ending in 0) and the part of the schedule it runs. Plain generation (strength 1) starts at
    ``start_scale * latents`` (default ``sigmas[0]``; the latents themselves at ``sigmas[0] = inf``, as
    :func:`samplers.sample` takes a start at infinity)."""
    sigmas = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, dtype=torch.float64)
    steps = len(sigmas) - 1
    run = sigmas[steps - img2img_steps(steps, strength):]
    if run.shape[0] == sigmas.shape[0]:  # strength 1 (or N * s rounding up to N): plain generation
        if math.isinf(float(run[0])):
            return latents, run
        return latents * float(run[0] if start_scale is None else start_scale), run
    return init.to(latents.dtype) + latents * float(run[0]), run


def paste(x: torch.Tensor, init: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is 1 (generated), ``init`` where it is 0 (kept); exact in the kept region."""
    return torch.where(mask.to(torch.bool), x, init.to(x.dtype))


class Inpainting(DenoiserWrapper):
    """The denoiser that keeps ``init`` where ``mask`` is 0.

    Args:
        init: the image ``[B or 1, C, H, W]`` in the model's data space.
        mask: 1 where to generate, 0 where to keep; ``[B or 1, 1 or C, H, W]``, values 0 or 1.
        latents: the per-seed standard normal latents ``[B, C, H, W]`` the run started from (the noise
            the known region is noised with).
    """

    def __init__(self, denoiser: Callable, init: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor, *,
                 start: float | None = None):
        super().__init__(denoiser)
        # diffusers' inpainting pipelines (a 4-channel UNet) blend the known region in after each step, so
        # their first evaluation, at the start of a run from pure noise, sees the state unblended: with
        # ``start`` (that first sigma) the input at sigma >= start is left as the sampler gave it.
        self.start = None if start is None else float(start)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("the inpainting mask must be 0 (keep) or 1 (generate) everywhere")
        try:
            torch.broadcast_shapes(init.shape, mask.shape, latents.shape)
        except RuntimeError:
            raise ValueError(f"init {list(init.shape)}, mask {list(mask.shape)} and latents "
                             f"{list(latents.shape)} do not broadcast together") from None
        self.init = init
        self.keep = mask.to(torch.bool).logical_not()
        self.latents = latents
        if hasattr(denoiser, "with_unconditional"):  # CFG++: both of its predictions keep the known region
            self.with_unconditional = self._with_unconditional

    def known(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The init image noised to ``sigma`` with the seed's latents."""
        return self.init.to(x.dtype) + sigma_column(sigma, x) * self.latents.to(x.dtype)

    def blended(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The denoiser's input: ``x`` with the known region replaced by the noised init image."""
        keep = self.keep
        if self.start is not None:
            keep = keep & (sigma_column(sigma, x) < self.start)
        return torch.where(keep, self.known(x, sigma), x)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        out = self.denoiser(self.blended(x, sigma), sigma, **cond)
        return torch.where(self.keep, self.init.to(x.dtype), out)

    def _with_unconditional(self, x: torch.Tensor, sigma, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.init.to(x.dtype)
        pair = self.denoiser.with_unconditional(self.blended(x, sigma), sigma, **cond)
        return tuple(torch.where(self.keep, init, out) for out in pair)

    def __repr__(self) -> str:
        return f"Inpainting({self.denoiser!r}, kept fraction {float(self.keep.float().mean()):.2f})"

"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained classifier free guidance"): classifier-free
guidance whose sampler steps to the guided x0 but re-noises along the unconditional prediction.

In sigma form the Euler (DDIM) step is ``x' = D_w + sigma' (x - D_neg) / sigma`` with
``D_w = D_cond + w (D_cond - D_neg)``: the step's x0 target is the guided prediction, its noise the
negative (unconditional) one's. The guider only offers both predictions of its one ``2B`` call
(:meth:`CFGPlusPlus.with_unconditional`); the samplers that declare CFG++ in the registry
(``register(..., cfg_pp=True)``) take them apart through ``samplers.steps.evaluate``, and
``samplers.sample`` refuses the others. Our ``w`` is ComfyUI's ``cfg - 1``.
"""

from __future__ import annotations

import torch

from .cfg import ClassifierFreeGuidance
from .wrapper import per_sample

__all__ = ["CFGPlusPlus"]


class CFGPlusPlus(ClassifierFreeGuidance):
    """:class:`ClassifierFreeGuidance` in CFG++ mode (same arguments): called, it is the guided denoiser;
    :meth:`with_unconditional` also gives the negative prediction of the same call."""

    @property
    def evaluations(self) -> int:
        """Always the two halves of one ``2B`` call: CFG++ needs the negative prediction even at w = 0."""
        return 2

    def with_unconditional(self, x: torch.Tensor, sigma, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(guided x0, negative x0)`` from one call of ``2B``. Outside a guidance interval a sample is not
        guided: both are its conditional prediction (a plain step), and when no sample of the batch is
        inside, that takes one call of ``B``."""
        inside = per_sample(1.0, sigma, x, self.interval) != 0
        if not bool(inside.any()):
            out = self.denoiser(x, sigma, **cond)
            return out, out
        d_cond, d_neg = self.both(x, sigma, cond)
        guided = self.combine(d_cond, d_neg, torch.where(inside, self.w, 0.0).to(x.dtype))
        return guided, torch.where(inside, d_neg, d_cond)

    def __repr__(self) -> str:
        return "CFGPlusPlus" + super().__repr__().removeprefix("ClassifierFreeGuidance")

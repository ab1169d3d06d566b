"""Guidance by a perturbed network: the conditional prediction against the same network with its internals
perturbed, the guiders of Perturbed-Attention Guidance (PAG, Ahn et al. 2024, arXiv 2403.17377), Smoothed
Energy Guidance (SEG, Hong 2024, arXiv 2408.00760) and Skip-Layer Guidance (SLG, after Hyung et al.'s
spatiotemporal skip guidance, arXiv 2411.18664).

``D = D_cond + w (D_cond - D_neg) + s (D_cond - D_pert)``

where ``D_pert`` is the conditional prediction of the perturbed network. This is diffusers' combination
for all three (its PAG pipelines and SD3's ``skip_layer_guidance_scale``; its SEG and SLG guiders with
classifier-free guidance on): ``w`` is diffusers' ``guidance_scale - 1`` and ``s`` its ``pag_scale`` /
``seg_guidance_scale`` / ``skip_layer_guidance_scale``. The combination is affine with weights summing to
one, so it is the same on x0 (this library's D), epsilon, v or flow predictions.

How the network is perturbed is the network's business: hooks installed in it read a
:class:`RowPerturbation` at forward time and apply the perturbed form to the batch rows its ``mask``
selects, the other rows running unchanged. So the three predictions share one call of the network.

Evaluations per guided call (``B`` samples): with ``w != 0`` and ``s != 0``, ONE call of ``3B`` (rows:
conditional, negative, perturbed-conditional); with ``w == 0``, one call of ``2B`` (conditional,
perturbed); with ``s == 0``, one of ``2B`` as classifier-free guidance. With ``batched=False`` (hooks
that cannot select rows, e.g. a perturbation that changes the network's control flow), the perturbed
rows are a second call of ``B``. Where a sample is outside ``interval`` (both terms) or
``perturb_interval`` (the perturbed term) its term's weight is 0, and a term that is 0 for every sample
is not evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from .cfg import ClassifierFreeGuidance, cfg_rescale, stack_inputs
from .wrapper import check_interval, check_weight, per_sample

__all__ = ["PERTURBATION_KINDS", "PerturbedGuidance", "RowPerturbation", "blur_kernel_size", "blur_queries"]

#: the perturbations, by name: what the hooked layers do to the selected rows
PERTURBATION_KINDS = {
    "pag": "self-attention map replaced by the identity (each token attends to itself)",
    "seg": "self-attention queries blurred by a Gaussian of blur_sigma over the token grid",
    "slg": "the chosen blocks skipped (their output is their input)",
}


class RowPerturbation:
    """What a perturbed network's hooks read: the perturbation ``kind`` (a key of
    :data:`PERTURBATION_KINDS`), its ``options`` (``blur_sigma`` for SEG) and ``mask``, None (every row
    runs unperturbed) or a ``[B]`` bool tensor of the rows to perturb, set for one call by :meth:`rows`.

    Whoever installs hooks registers their removal with :meth:`on_remove`; :meth:`remove` runs them,
    leaving the network as it was.
    """

    def __init__(self, kind: str, options: Mapping[str, Any] | None = None):
        if kind not in PERTURBATION_KINDS:
            raise ValueError(f"perturbation kind must be one of {', '.join(PERTURBATION_KINDS)}, "
                             f"got {kind!r}")
        self.kind = kind
        self.options = dict(options or {})
        self.mask: torch.Tensor | None = None
        self._undo: list[Callable[[], None]] = []

    @contextmanager
    def rows(self, mask: torch.Tensor | None) -> Iterator[RowPerturbation]:
        """Perturb the rows of ``mask`` (a ``[B]`` bool tensor) inside the block; unset after it."""
        self.mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        try:
            yield self
        finally:
            self.mask = None

    def selected(self, batch: int) -> torch.Tensor | None:
        """The mask for a layer input of ``batch`` rows; None when no row is perturbed. A layer that sees a
        multiple of the mask's rows (a network that repeats its batch) reads the mask repeated."""
        mask = self.mask
        if mask is None or not bool(mask.any()):
            return None
        if batch % mask.shape[0]:
            raise ValueError(f"perturbation: a layer input of {batch} rows for a mask of {mask.shape[0]}")
        return mask.repeat(batch // mask.shape[0])

    def on_remove(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def remove(self) -> None:
        """Remove the hooks installed for this perturbation (in reverse order of installation)."""
        while self._undo:
            self._undo.pop()()

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"RowPerturbation({self.kind!r}{options})"


def blur_kernel_size(sigma: float, side: int) -> int:
    """The Gaussian's (odd) kernel size for ``sigma`` on a grid side of ``side`` tokens: ``ceil(6 sigma)``
    rounded up to odd, at most the side (or the side plus one when it is even), the rule of SEG's
    reference code and diffusers' hook, so that reflect padding fits."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    return min(size, side - (side % 2 - 1))


def blur_queries(q: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """SEG's smoothed queries: the first ``height * width`` tokens of ``q`` (``[B, N, C]``, row-major over
    the grid) blurred per channel by a 2-D Gaussian of standard deviation ``sigma`` tokens (reflect
    padding), the other tokens kept; ``sigma = inf`` replaces them by their mean (the limit). A new
    tensor; ``q`` is not changed."""
    if not sigma > 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    tokens = height * width
    batch, _, channels = q.shape
    grid = q[:, :tokens].transpose(1, 2).reshape(batch, channels, height, width)
    if math.isinf(sigma):
        grid = grid.mean(dim=(-2, -1), keepdim=True).expand_as(grid)
    else:
        size = min(blur_kernel_size(sigma, height), blur_kernel_size(sigma, width))
        half = (size - 1) / 2
        offsets = torch.linspace(-half, half, steps=size)
        pdf = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel1d = (pdf / pdf.sum()).to(q)
        kernel = torch.outer(kernel1d, kernel1d).expand(channels, 1, size, size)
        pad = size // 2
        grid = F.conv2d(F.pad(grid, [pad, pad, pad, pad], mode="reflect"), kernel, groups=channels)
    blurred = grid.reshape(batch, channels, tokens).transpose(1, 2)
    return torch.cat([blurred, q[:, tokens:]], dim=1)


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> tuple[float, float] | None:
    if a is None or b is None:
        return a or b
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else (0.0, 0.0)


class PerturbedGuidance(ClassifierFreeGuidance):
    """``D = D_cond + w (D_cond - D_neg) + s (D_cond - D_pert)`` over a denoiser whose network carries
    ``perturbation``'s hooks (see the module docstring for the calls it makes).

    Args:
        denoiser: the conditional denoiser, its network hooked by ``perturbation``.
        perturbation: the :class:`RowPerturbation` its hooks read.
        scale: ``s``, the weight of the perturbed term (diffusers' ``pag_scale`` and its kin).
        w: the classifier-free guidance weight (0: none, no negative rows).
        negative: the negative input, as :class:`~samplers.guidance.ClassifierFreeGuidance` takes it.
        interval: ``(sigma_lo, sigma_hi)``: guide (both terms) only for ``sigma_lo < sigma <= sigma_hi``.
        perturb_interval: the same for the perturbed term alone (SD3's skip-layer guidance start/stop).
        rescale: Lin et al.'s ``phi`` on the guided prediction, as classifier-free guidance's.
        batched: the perturbed rows share the call of the others (hooks that select rows); False: a
            second call of ``B``.
    """

    def __init__(self, denoiser: Callable, perturbation: RowPerturbation, scale: float, w: float = 0.0,
                 negative=None, *, interval=None, perturb_interval=None, rescale: float = 0.0,
                 batched: bool = True):
        super().__init__(denoiser, w, negative, interval=interval, rescale=rescale)
        if not isinstance(perturbation, RowPerturbation):
            raise ValueError(f"perturbation must be a RowPerturbation, got {perturbation!r}")
        self.perturbation = perturbation
        self.scale = check_weight(scale, f"{perturbation.kind} scale")
        self.perturb_interval = check_interval(perturb_interval)
        self.batched = bool(batched)

    @property
    def evaluations(self) -> int:
        """Network evaluations per guided call: conditional, negative (``w != 0``), perturbed (``s != 0``)."""
        return 1 + (self.w != 0) + (self.scale != 0)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        batch = x.shape[0]
        weight = per_sample(self.w, sigma, x, self.interval)
        weight_p = per_sample(self.scale, sigma, x, _overlap(self.interval, self.perturb_interval))
        negative = bool(weight.any())
        inputs = [cond, self.negative_cond(cond)] if negative else [cond]
        perturbed = bool(weight_p.any())
        if perturbed and self.batched:
            inputs.append(cond)
        if len(inputs) == 1 and not perturbed:
            return self.denoiser(x, sigma, **cond)
        xs, sigmas, args = stack_inputs(x, sigma, inputs)
        mask = torch.zeros(xs.shape[0], dtype=torch.bool, device=x.device)
        if perturbed and self.batched:
            mask[-batch:] = True
        with self.perturbation.rows(mask):
            out = list(self.denoiser(xs, sigmas, **args).split(batch))
        if perturbed and not self.batched:
            with self.perturbation.rows(torch.ones(batch, dtype=torch.bool, device=x.device)):
                out.append(self.denoiser(x, sigma, **cond))
        d_cond = out[0]
        guided = d_cond
        if negative:
            guided = guided + weight * (d_cond - out[1])
        if perturbed:
            guided = guided + weight_p * (d_cond - out[-1])
        if self.rescale:
            guiding = (weight != 0) | (weight_p != 0)
            guided = torch.where(guiding, cfg_rescale(guided, d_cond, self.rescale), guided)
        return guided

    def __repr__(self) -> str:
        extra = "" if self.interval is None else f", interval={self.interval}"
        extra += "" if self.perturb_interval is None else f", perturb_interval={self.perturb_interval}"
        return (f"PerturbedGuidance({self.denoiser!r}, {self.perturbation!r}, s={self.scale:g}, "
                f"w={self.w:g}{extra})")


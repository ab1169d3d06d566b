"""Guidance rules: how one guided x0 prediction is combined from the conditional and negative predictions
``D_cond``, ``D_neg`` of one evaluation. :class:`samplers.guidance.ClassifierFreeGuidance` evaluates both
in one call of ``2B`` and hands them to its rule (``rule=``; default :class:`ClassifierFree`).

Registered by name in :data:`RULES` (:func:`make_rule` builds one):

* ``cfg``: ``D_cond + w (D_cond - D_neg)`` (Ho & Salimans 2022).
* ``apg``: adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416): the difference, with
  momentum and clipped to a norm, split into its parts parallel and orthogonal to ``D_cond``, the
  parallel part weighted by ``eta``.
* ``apg_mix``: CFG for the first evaluations (momentum accumulating), then APG with its own weight
  (the mix of HunyuanImage 2.1).
* ``cfg_zero_star``: CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): ``D_neg`` scaled by the per-sample
  least-squares factor ``<D_cond, D_neg> / |D_neg|^2``, and the first ``zero_init_steps`` evaluations
  predict zero.
* ``tcfg``: tangential CFG (Kwon et al. 2025, arXiv 2503.18137): ``D_neg`` projected onto the first right
  singular vector of the per-sample ``[D_cond; D_neg]`` matrix.
* ``fdg``: frequency-decoupled guidance (Sadat et al. 2025, arXiv 2506.19713): CFG per level of a
  Laplacian pyramid, each level with its own weight (and parallel-part weight).
* ``mambo``: MAMBO-G (arXiv 2508.03442): the weight damped per sample by
  ``exp(-alpha |D_cond - D_neg| / |D_neg|)``.

Weights. ``w`` is this library's weight (0 = no guidance); every rule reduces to ``D_cond + w (...)`` form.
diffusers' guiders take ``guidance_scale``; with ``use_original_formulation=True`` they compute exactly
these rules with ``guidance_scale = w``. In their default form (``D_neg + s (...)``) ``s = 1 + w`` gives
the same result for cfg, cfg_zero_star, tcfg, mambo and fdg with parallel weights 1 (their update is the
difference itself, up to the scaled or projected ``D_neg``), but not for apg, apg_mix and fdg with other
parallel weights: there the default form adds ``1 + w`` times the projected update to ``D_neg``, while the
papers (and these rules) add ``w`` times it to ``D_cond``; they differ whenever the update is not the
plain difference.

Where the rules act. They see x0 predictions (the ``D`` of the denoiser protocol); APG's paper applies
its rule there. diffusers' guiders act on whatever the network predicts (epsilon, v, flow velocity). cfg
is linear in the prediction and the map between predictions is affine with the same coefficients for
both halves, so cfg gives the same result on every model. The others are not linear (norms, projections,
momentum of a non-linear quantity, SVD, least-squares scale) and differ from diffusers' on an epsilon, v
or flow model. CFG-Zero*'s zero init here means ``D = 0``, predicting the clean sample to be zero (the
sampler's step then scales ``x`` towards 0); diffusers' ``pred = 0`` on a flow model is a zero velocity,
which leaves ``x`` where it is.

State. A rule sees one evaluation at a time, and state advances per evaluation, as diffusers' guiders do
per denoiser call: APG's momentum buffer (one per sample), the evaluation counter of CFG-Zero*'s zero init
and of apg_mix's switch. A sampler with two evaluations per step (Heun) advances the counter twice per
step. :meth:`GuidanceRule.reset` starts afresh; ``samplers.sample`` resets its denoiser chain
(``reset_state``) at the start of every run, so a sample depends on its own run only. Evaluations outside
the guidance interval (weight 0 for the whole batch) go through :meth:`GuidanceRule.plain`: they advance
the counter but not the momentum.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

__all__ = ["RULES", "APGMix", "AdaptiveProjected", "ClassifierFree", "FrequencyDecoupled", "GuidanceRule",
           "MagnitudeAware", "Tangential", "ZeroStar", "laplacian_pyramid", "make_rule", "project",
           "rebuild_pyramid"]

#: the rules by name, in registration order
RULES: dict[str, type[GuidanceRule]] = {}


def _register(cls: type[GuidanceRule]) -> type[GuidanceRule]:
    RULES[cls.name] = cls
    return cls


def make_rule(name: str, **options: Any) -> GuidanceRule:
    """The rule ``name`` with ``options``; ValueError (one line) for an unknown name or an option out of its
    bounds, TypeError for an option the rule does not have."""
    if name not in RULES:
        raise ValueError(f"unknown guidance rule {name!r}; known: {', '.join(RULES)}")
    return RULES[name](**options)


def _dims(x: torch.Tensor) -> list[int]:
    return list(range(1, x.ndim))


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(parallel, orthogonal)``: the parts of ``v0`` parallel and orthogonal to ``v1``, per sample (over all
    but the first dimension), computed in float64 and returned in ``v0``'s dtype."""
    dims = _dims(v0)
    a, b = v0.double(), F.normalize(v1.double(), dim=dims)
    parallel = (a * b).sum(dim=dims, keepdim=True) * b
    return parallel.to(v0.dtype), (a - parallel).to(v0.dtype)


class GuidanceRule:
    """Base of the rules: ``rule(d_cond, d_neg, weight)`` is the guided prediction, ``weight`` the
    per-sample weight ``w`` (a ``[B, 1, ..., 1]`` tensor, 0 for samples outside the guidance interval).

    A subclass sets :attr:`name` and :attr:`bounds` (each option's allowed ``(low, high)``, checked on
    construction) and implements :meth:`combine`. :attr:`count` is the evaluations seen since
    :meth:`reset`.
    """

    name: ClassVar[str] = ""
    #: option name -> (low, high), inclusive; None: unbounded on that side
    bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {}

    def __init__(self, **options: Any):
        for key, value in options.items():
            setattr(self, key, self._checked(key, value))
        self.reset()

    @classmethod
    def _checked(cls, key: str, value):
        if key not in cls.bounds:
            raise ValueError(f"guidance rule {cls.name}: unknown option {key!r}; options: "
                             f"{', '.join(cls.bounds) or 'none'}")
        if value is None or isinstance(value, tuple):
            return value
        low, high = cls.bounds[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                low is not None and value < low) or (high is not None and value > high):
            where = f"in [{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
            raise ValueError(f"guidance rule {cls.name}: {key} must be a number {where}, got {value!r}")
        return value

    def reset(self) -> None:
        """Forget the evaluations seen so far (a new run starts)."""
        self.count = 0

    def __call__(self, d_cond: torch.Tensor, d_neg: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = self.combine(d_cond, d_neg, weight)
        self.count += 1
        return out

    def plain(self, d_cond: torch.Tensor) -> torch.Tensor:
        """The prediction of an evaluation that is not guided (outside the interval): ``d_cond``."""
        out = self.unguided(d_cond)
        self.count += 1
        return out

    def combine(self, d_cond: torch.Tensor, d_neg: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unguided(self, d_cond: torch.Tensor) -> torch.Tensor:
        return d_cond

    def options(self) -> dict[str, Any]:
        """The rule's options by name."""
        return {key: getattr(self, key) for key in self.bounds}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


@_register
class ClassifierFree(GuidanceRule):
    """``D_cond + w (D_cond - D_neg)``: diffusers' ``ClassifierFreeGuidance``, ``guidance_scale = 1 + w``."""

    name = "cfg"

    def combine(self, d_cond, d_neg, weight):
        return d_cond + weight * (d_cond - d_neg)


class _Momentum:
    """APG's running average of the difference, ``avg <- diff + momentum * avg``, updated only for the
    samples whose weight is not 0."""

    def __init__(self):
        self.average = None

    def update(self, diff: torch.Tensor, momentum: float, weight: torch.Tensor) -> torch.Tensor:
        new = diff if self.average is None else diff + momentum * self.average
        old = torch.zeros_like(diff) if self.average is None else self.average
        self.average = torch.where(weight != 0, new, old)
        return new


def _apg_update(rule, diff: torch.Tensor, d_cond: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """APG's update from the difference: momentum, the norm clip, then ``orthogonal + eta * parallel``."""
    if rule.momentum:
        diff = rule.buffer.update(diff, rule.momentum, weight)
    if rule.norm_threshold > 0:
        norm = diff.norm(p=2, dim=_dims(diff), keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), rule.norm_threshold / norm)
    parallel, orthogonal = project(diff, d_cond)
    return orthogonal + rule.eta * parallel


@_register
class AdaptiveProjected(GuidanceRule):
    """APG: ``D_cond + w (orthogonal + eta * parallel)`` of the difference ``D_cond - D_neg`` after momentum
    (``avg <- diff + momentum * avg``; 0 is off) and a clip to norm ``norm_threshold`` (0 is off), the parts
    taken relative to ``D_cond``. diffusers' ``AdaptiveProjectedGuidance`` with ``guidance_scale = w``,
    ``use_original_formulation=True``, ``adaptive_projected_guidance_momentum = momentum`` and
    ``adaptive_projected_guidance_rescale = norm_threshold`` (its defaults: eta 1, no momentum, 15)."""

    name = "apg"
    bounds = {"eta": (0.0, 1.0), "momentum": (-1.0, 1.0), "norm_threshold": (0.0, None)}

    def __init__(self, eta: float = 1.0, momentum: float = 0.0, norm_threshold: float = 15.0):
        super().__init__(eta=eta, momentum=momentum, norm_threshold=norm_threshold)

    def reset(self) -> None:
        super().reset()
        self.buffer = _Momentum()

    def combine(self, d_cond, d_neg, weight):
        return d_cond + weight * _apg_update(self, d_cond - d_neg, d_cond, weight)


@_register
class APGMix(AdaptiveProjected):
    """CFG (``D_cond + w (D_cond - D_neg)``) for the evaluations ``0 .. start_step``, the momentum buffer
    accumulating the difference, then APG with weight ``apg_weight`` instead of ``w``. diffusers'
    ``AdaptiveProjectedMixGuidance`` with ``use_original_formulation=True``, ``guidance_scale = w``,
    ``adaptive_projected_guidance_scale = apg_weight``, ``adaptive_projected_guidance_start_step =
    start_step`` (its defaults: APG scale 10, eta 0, momentum -0.5, norm threshold 10, start step 5; in
    its default form its scales are ``1 + w`` and ``1 + apg_weight``)."""

    name = "apg_mix"
    bounds = {"apg_weight": (0.0, None), "eta": (0.0, 1.0), "momentum": (-1.0, 1.0),
              "norm_threshold": (0.0, None), "start_step": (0, None)}

    def __init__(self, apg_weight: float = 9.0, eta: float = 0.0, momentum: float = -0.5,
                 norm_threshold: float = 10.0, start_step: int = 5):
        GuidanceRule.__init__(self, apg_weight=apg_weight, eta=eta, momentum=momentum,
                              norm_threshold=norm_threshold, start_step=int(start_step))

    def combine(self, d_cond, d_neg, weight):
        diff = d_cond - d_neg
        if self.count <= self.start_step:
            if self.momentum:
                self.buffer.update(diff, self.momentum, weight)
            return d_cond + weight * diff
        apg_weight = torch.where(weight != 0, self.apg_weight, 0.0).to(weight.dtype)
        return d_cond + apg_weight * _apg_update(self, diff, d_cond, weight)


@_register
class ZeroStar(GuidanceRule):
    """CFG-Zero*: ``D_cond + w (D_cond - alpha D_neg)``, ``alpha = <D_cond, D_neg> / (|D_neg|^2 + 1e-8)`` per
    sample (in float32); the first ``zero_init_steps`` evaluations of a run return 0 (guided or not; 0
    turns the zero init off). diffusers' ``ClassifierFreeZeroStarGuidance`` with ``guidance_scale = 1 + w``
    (or ``w`` with ``use_original_formulation=True``)."""

    name = "cfg_zero_star"
    bounds = {"zero_init_steps": (0, None)}

    def __init__(self, zero_init_steps: int = 1):
        super().__init__(zero_init_steps=int(zero_init_steps))

    def _zero(self) -> bool:
        return self.count < self.zero_init_steps

    def unguided(self, d_cond):
        return torch.zeros_like(d_cond) if self._zero() else d_cond

    def combine(self, d_cond, d_neg, weight):
        if self._zero():
            return torch.zeros_like(d_cond)
        c, n = d_cond.flatten(1).float(), d_neg.flatten(1).float()
        alpha = ((c * n).sum(1) / ((n * n).sum(1) + 1e-8)).to(d_cond.dtype)
        return d_cond + weight * (d_cond - alpha.view(-1, *[1] * (d_cond.ndim - 1)) * d_neg)


@_register
class Tangential(GuidanceRule):
    """TCFG: ``D_cond + w (D_cond - D_neg')``, ``D_neg'`` the projection of ``D_neg`` onto the first right
    singular vector of the ``2 x N`` matrix ``[D_cond; D_neg]`` of each sample (in float32). diffusers'
    ``TangentialClassifierFreeGuidance`` with ``guidance_scale = 1 + w``."""

    name = "tcfg"

    def combine(self, d_cond, d_neg, weight):
        both = torch.stack([d_cond, d_neg], dim=1).flatten(2).float()
        first = torch.linalg.svd(both, full_matrices=False).Vh[:, :1]  # [B, 1, N]
        neg = d_neg.reshape(d_neg.shape[0], 1, -1).float()
        projected = (neg @ first.transpose(-2, -1)) @ first
        return d_cond + weight * (d_cond - projected.reshape(d_neg.shape).to(d_cond.dtype))


#: the 5x5 binomial kernel of the Burt-Adelson pyramid, [1 4 6 4 1]^T [1 4 6 4 1] / 256
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(x) / 256
    channels = x.shape[1]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel.expand(channels, 1, 5, 5), groups=channels)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Bilinear doubling, then the blur (kornia's ``pyrup``)."""
    return _blur(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The Laplacian pyramid of ``[B, C, H, W]`` images, finest level first: ``levels - 1`` band-pass levels
    and the coarsest Gaussian level (Burt and Adelson 1983, with reflect borders and bilinear resampling,
    as kornia's ``build_laplacian_pyramid``). H and W must be divisible by ``2 ** (levels - 1)``."""
    check_pyramid(tuple(x.shape[1:]), levels)
    gaussian = [x]
    for _ in range(levels - 1):
        g = gaussian[-1]
        gaussian.append(F.interpolate(_blur(g), size=(g.shape[2] // 2, g.shape[3] // 2), mode="bilinear",
                                      align_corners=False))
    return [g - _up(coarser) for g, coarser in zip(gaussian, gaussian[1:])] + [gaussian[-1]]


def rebuild_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The images of a :func:`laplacian_pyramid` (exact inverse)."""
    x = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        x = _up(x) + level
    return x


def check_pyramid(shape: tuple[int, ...], levels: int) -> None:
    """ValueError unless images of ``shape`` (``[C, H, W]``) have a Laplacian pyramid of ``levels`` levels:
    sides divisible by ``2 ** (levels - 1)``, and at least 3 pixels where a level is blurred."""
    if len(shape) != 3:
        raise ValueError(f"frequency-decoupled guidance needs images [C, H, W], got shape {list(shape)}")
    stride = 2 ** (levels - 1)
    if levels > 1 and any(side % stride or side // stride < 2 for side in shape[1:]):  # blurs need >= 3 px
        raise ValueError(f"{levels} pyramid levels need image sides divisible by {stride} and at least "
                         f"{2 * stride} pixels, got {shape[1]}x{shape[2]}")


@_register
class FrequencyDecoupled(GuidanceRule):
    """FDG: CFG on each level of a Laplacian pyramid of both predictions, level ``i`` (finest first) with
    weight ``weights[i]`` (default: ``w`` at each of ``levels`` levels) and its difference's part parallel
    to ``D_cond``'s level weighted by ``parallel_weights[i]`` (one number: every level's; default 1: plain
    CFG per level), then the
    pyramid rebuilt. diffusers' ``FrequencyDecoupledGuidance`` with ``use_original_formulation=True``,
    ``guidance_scales = weights`` and ``parallel_weights``; its default form with ``1 + weights`` is the
    same only with parallel weights 1 (it adds the projected difference to the negative level)."""

    name = "fdg"
    bounds = {"weights": (0.0, None), "levels": (1, 8), "parallel_weights": (0.0, None)}

    def __init__(self, weights: tuple[float, ...] | None = None, levels: int | None = None,
                 parallel_weights: float | tuple[float, ...] | None = None):
        weights = None if weights is None else self._list("weights", weights)
        levels = int(levels) if levels is not None else (len(weights) if weights else 2)
        if weights is not None and len(weights) != levels:
            raise ValueError(f"guidance rule fdg: {len(weights)} weights for {levels} levels")
        if parallel_weights is None or isinstance(parallel_weights, int | float):
            parallel_weights = (1.0 if parallel_weights is None else parallel_weights,)
        parallel_weights = self._list("parallel_weights", parallel_weights)
        if len(parallel_weights) == 1:  # one weight for every level
            parallel_weights *= levels
        if len(parallel_weights) != levels:
            raise ValueError(f"guidance rule fdg: {len(parallel_weights)} parallel weights for {levels} "
                             "levels")
        super().__init__(weights=weights, levels=levels, parallel_weights=parallel_weights)

    @classmethod
    def _list(cls, key: str, values) -> tuple[float, ...]:
        values = tuple(float(v) for v in values)
        for value in values:
            cls._checked(key, value)
        if not values:
            raise ValueError(f"guidance rule fdg: {key} is empty")
        return values

    def combine(self, d_cond, d_neg, weight):
        guided = []
        for level, (c, n) in enumerate(zip(laplacian_pyramid(d_cond, self.levels),
                                            laplacian_pyramid(d_neg, self.levels))):
            shift = c - n
            if self.parallel_weights[level] != 1:
                parallel, orthogonal = project(shift, c)
                shift = self.parallel_weights[level] * parallel + orthogonal
            w = weight if self.weights is None else torch.where(weight != 0, self.weights[level], 0.0).to(c)
            guided.append(c + w * shift)
        return rebuild_pyramid(guided)


@_register
class MagnitudeAware(GuidanceRule):
    """MAMBO-G: ``D_cond + w exp(-alpha r) (D_cond - D_neg)``, ``r = |D_cond - D_neg| / |D_neg|`` per sample.
    diffusers' ``MagnitudeAwareGuidance`` with ``guidance_scale = 1 + w`` (or ``w`` with
    ``use_original_formulation=True``)."""

    name = "mambo"
    bounds = {"alpha": (0.0, None)}

    def __init__(self, alpha: float = 8.0):
        super().__init__(alpha=alpha)

    def combine(self, d_cond, d_neg, weight):
        diff = d_cond - d_neg
        dims = _dims(diff)
        ratio = diff.norm(p=2, dim=dims, keepdim=True) / d_neg.norm(p=2, dim=dims, keepdim=True)
        return d_cond + weight * torch.exp(-self.alpha * ratio) * diff

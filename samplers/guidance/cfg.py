"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper denoiser, usable with every sampler.

``D_w(x; sigma, c) = D(x; sigma, c) + w * (D(x; sigma, c) - D(x; sigma, c_neg))``

``w = 0`` is plain conditional sampling (the convention of Ho & Salimans' w); diffusers' ``guidance_scale``
is ``1 + w`` and EDM2's ``guidance`` (``D_neg.lerp(D, guidance)``) is ``1 + w`` too. The conditional and
negative evaluations run as ONE call on a batch of ``2B`` (the conditional half first), so a guided step
costs one network call, and the guided output of a sample depends on that sample's inputs only.

The negative condition ``c_neg`` is built from the conditional one: by default ``class_labels`` is zeroed
(all-zero one-hot rows are the dropped label of NVlabs-style networks: the unconditional model).
``negative`` may instead be a mapping of keyword arguments that replace the conditional ones (another
class: ``{"class_labels": one_hot(k)}``; a null text embedding; a tensor with a leading dimension of 1
is broadcast over the batch), or a function ``cond -> negative cond``.

Two refinements, both off by default:

* ``interval=(sigma_lo, sigma_hi)``: guide only where ``sigma_lo < sigma <= sigma_hi`` (Kynkaanniemi et
  al. 2024, "Applying guidance in a limited interval"); outside it a step costs one conditional call of
  ``B``.
* ``rescale=phi`` (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
  Sec. 3.4): the guided x0 prediction is rescaled per sample to the standard deviation of the
  conditional one, and mixed with the unrescaled one with weight ``phi``. This is the paper's form, on
  the x0 prediction (the D of this library); diffusers' ``guidance_rescale`` applies the same formula to
  the network's raw output (epsilon or v), which differs unless the model predicts x0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .guiders import ClassifierFree, GuidanceRule
from .wrapper import DenoiserWrapper, check_interval, check_weight, per_sample

__all__ = ["ClassifierFreeGuidance", "cfg_rescale", "drop_class_labels", "guided", "stack_inputs"]


def drop_class_labels(cond: Mapping[str, Any]) -> dict[str, Any]:
    """The default negative input: ``class_labels`` replaced by zeros, everything else kept."""
    labels = cond.get("class_labels")
    if not isinstance(labels, torch.Tensor):
        raise ValueError("classifier-free guidance needs class_labels (a [B, K] one-hot tensor) to drop; "
                         "pass negative= to say how to build the negative input")
    return {**cond, "class_labels": torch.zeros_like(labels)}


def _batched(value, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch


def _stack(name: str, values: list, batch: int):
    """The values of argument ``name`` in each of several inputs as one argument of a ``len(values) * B``
    batch, in the order given (the conditional input first)."""
    if any(isinstance(v, torch.Tensor) for v in values):
        if not all(isinstance(v, torch.Tensor) for v in values):
            raise ValueError(f"guidance: {name} is a tensor in some of the conditional and negative "
                             "inputs only; all must be tensors to share one batched call")
        if all(v.ndim == 0 for v in values) and all(torch.equal(values[0], v) for v in values[1:]):
            return values[0]
        parts = []
        for value in values:
            if value.ndim >= 1 and value.shape[0] == 1 and batch != 1:
                value = value.expand(batch, *value.shape[1:])
            if not _batched(value, batch):
                raise ValueError(f"guidance: {name} must have a leading batch dimension of {batch} (or 1), "
                                 f"got shape {list(value.shape)}")
            parts.append(value)
        return torch.cat(parts)
    first = values[0]
    for other in values[1:]:
        if first is not other and first != other:
            raise ValueError(f"guidance: {name} differs between the conditional and negative inputs "
                             f"({first!r} vs {other!r}) but is not a batched tensor")
    return first


def stack_inputs(x: torch.Tensor, sigma, inputs: list[Mapping[str, Any]]) -> tuple:
    """``(x, sigma, cond)`` of one call evaluating each keyword-argument set of ``inputs`` at ``x`` and
    ``sigma``: ``x`` repeated, and every argument stacked in the order of ``inputs`` (the first is the
    conditional one; each must take the same arguments)."""
    batch, first = x.shape[0], inputs[0]
    for other in inputs[1:]:
        missing = set(first) ^ set(other)
        if missing:
            raise ValueError(f"guidance: the conditional and negative inputs must take the same "
                             f"arguments; only one has {', '.join(sorted(missing))}")
    count = len(inputs)
    args = {k: _stack(k, [c[k] for c in inputs], batch) for k in first}
    sigmas = torch.cat([sigma] * count) if _batched(sigma, batch) else sigma
    return torch.cat([x] * count), sigmas, args


def cfg_rescale(guided_x0: torch.Tensor, cond_x0: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024's rescale: ``phi * guided * std(cond) / std(guided) + (1 - phi) * guided``, the
    standard deviations taken per sample over all but the batch dimension."""
    dims = tuple(range(1, guided_x0.ndim))
    ratio = cond_x0.std(dim=dims, keepdim=True) / guided_x0.std(dim=dims, keepdim=True)
    return torch.lerp(guided_x0, guided_x0 * ratio, phi)


class ClassifierFreeGuidance(DenoiserWrapper):
    """``D_w = D_cond + w (D_cond - D_neg)`` over any denoiser ``D(x, sigma, **cond)``.

    Args:
        denoiser: the conditional denoiser (``samplers.protocol.Denoiser``); its optional protocol
            attributes (``samplers.protocol.OPTIONAL_ATTRIBUTES``) are exposed unchanged.
        w: guidance weight; 0 is no guidance (one conditional call of ``B``), else one call of ``2B``.
        negative: how to build the negative keyword arguments from the conditional ones: None
            (``class_labels`` zeroed: the unconditional model), a mapping of replacements, or a function
            ``cond -> negative cond``.
        interval: ``(sigma_lo, sigma_hi)``: guide only for ``sigma_lo < sigma <= sigma_hi``.
        rescale: Lin et al.'s ``phi`` in [0, 1]; 0 is plain CFG.
        rule: how the two predictions combine (``samplers.guidance.guiders``: APG, CFG-Zero*, ...);
            default the formula above. A stateful rule is reset by :meth:`reset_state`.
    """

    def __init__(self, denoiser: Callable, w: float = 0.0,
                 negative: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]] | None = None, *,
                 interval: tuple[float, float] | None = None, rescale: float = 0.0,
                 rule: GuidanceRule | None = None):
        super().__init__(denoiser)
        if negative is not None and not (callable(negative) or isinstance(negative, Mapping)):
            raise ValueError(f"negative must be None, a mapping or a function of the conditioning, "
                             f"got {negative!r}")
        self.w = check_weight(w)
        self.rescale = check_weight(rescale, "rescale phi")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"rescale phi must be in [0, 1], got {self.rescale:g}")
        self.negative = negative
        self.interval = check_interval(interval)
        if rule is not None and not isinstance(rule, GuidanceRule):
            raise ValueError(f"rule must be a samplers.guidance.guiders.GuidanceRule, got {rule!r}")
        self.rule = ClassifierFree() if rule is None else rule

    @property
    def evaluations(self) -> int:
        """Network evaluations per guided call: the conditional and negative halves of one ``2B`` batch."""
        return 1 if self.w == 0 else 2

    def reset_state(self) -> None:
        """Start the rule's state afresh (APG's momentum, CFG-Zero*'s evaluation count), and the inner's."""
        self.rule.reset()
        super().reset_state()

    @property
    def guidance_scale(self) -> float:
        """The same weight in diffusers' convention: ``1 + w``."""
        return 1.0 + self.w

    def negative_cond(self, cond: Mapping[str, Any]) -> dict[str, Any]:
        """The negative keyword arguments for the conditional ones ``cond``."""
        if self.negative is None:
            return drop_class_labels(cond)
        if isinstance(self.negative, Mapping):
            return {**cond, **self.negative}
        return dict(self.negative(dict(cond)))

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if self.w == 0:
            return self.denoiser(x, sigma, **cond)
        weight = per_sample(self.w, sigma, x, self.interval)
        if not bool(weight.any()):  # outside the interval: the conditional model alone, one call of B
            return self.rule.plain(self.denoiser(x, sigma, **cond))
        return self.combine(*self.both(x, sigma, cond), weight)

    def both(self, x: torch.Tensor, sigma, cond: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D_cond, D_neg)`` from one call of ``2B`` (the conditional half first)."""
        batch = x.shape[0]
        xs, sigmas, args = stack_inputs(x, sigma, [cond, self.negative_cond(cond)])
        both = self.denoiser(xs, sigmas, **args)
        return both[:batch], both[batch:]

    def combine(self, d_cond: torch.Tensor, d_neg: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The guided x0 from the two predictions and the per-sample weight: the rule's combination
        (rescaled where guided)."""
        out = self.rule(d_cond, d_neg, weight)
        if self.rescale:
            out = torch.where(weight != 0, cfg_rescale(out, d_cond, self.rescale), out)
        return out

    def __repr__(self) -> str:
        extra = "" if self.interval is None else f", interval={self.interval}"
        extra += f", rescale={self.rescale:g}" if self.rescale else ""
        extra += "" if isinstance(self.rule, ClassifierFree) else f", rule={self.rule!r}"
        return f"ClassifierFreeGuidance({self.denoiser!r}, w={self.w:g}{extra})"


def guided(denoiser: Callable, w: float = 0.0, negative=None, **refinements) -> Callable:
    """``denoiser`` itself when ``w == 0``, else :class:`ClassifierFreeGuidance` over it."""
    wrapper = ClassifierFreeGuidance(denoiser, w, negative, **refinements)
    return denoiser if wrapper.w == 0 else wrapper

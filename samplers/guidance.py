"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper denoiser, usable with every sampler.

``D_w(x; sigma, c) = D(x; sigma, c) + w * (D(x; sigma, c) - D(x; sigma, uncond(c)))``

``w = 0`` is plain conditional sampling (the convention of the seed notes); diffusers'
``guidance_scale`` is ``1 + w``. The conditional and unconditional evaluations run as ONE call on a
batch of ``2B`` (the conditional half first), so a guided step costs one network call, and the
guided output of a sample depends on that sample's inputs only (batch-invariant per sample).

The unconditional input is built from the conditional one: by default ``class_labels`` is zeroed
(all-zero one-hot rows are the dropped label of NVlabs-style networks). ``uncond`` may instead be a
mapping of keyword arguments that replace the conditional ones (``{"encoder_hidden_states": null_emb}``;
a tensor with a leading dimension of 1 is broadcast over the batch), or a function ``cond -> uncond``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .protocol import forward_attribute

__all__ = ["ClassifierFreeGuidance", "drop_class_labels", "guided"]


def drop_class_labels(cond: Mapping[str, Any]) -> dict[str, Any]:
    """The default unconditional input: ``class_labels`` replaced by zeros, everything else kept."""
    labels = cond.get("class_labels")
    if not isinstance(labels, torch.Tensor):
        raise ValueError("classifier-free guidance needs class_labels (a [B, K] one-hot tensor) to drop; "
                         "pass uncond= to say how to build the unconditional input")
    return {**cond, "class_labels": torch.zeros_like(labels)}


def _batched(value, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch


def _stack(name: str, cond_value, uncond_value, batch: int):
    """``cond_value`` and ``uncond_value`` as one argument of a ``2B`` batch (conditional half first)."""
    if isinstance(cond_value, torch.Tensor) or isinstance(uncond_value, torch.Tensor):
        if not (isinstance(cond_value, torch.Tensor) and isinstance(uncond_value, torch.Tensor)):
            raise ValueError(f"guidance: {name} is a tensor in one of the conditional and unconditional "
                             "inputs only; both must be tensors to share one batched call")
        if cond_value.ndim == 0 and uncond_value.ndim == 0 and torch.equal(cond_value, uncond_value):
            return cond_value
        halves = []
        for value in (cond_value, uncond_value):
            if value.ndim >= 1 and value.shape[0] == 1 and batch != 1:
                value = value.expand(batch, *value.shape[1:])
            if not _batched(value, batch):
                raise ValueError(f"guidance: {name} must have a leading batch dimension of {batch} (or 1), "
                                 f"got shape {list(value.shape)}")
            halves.append(value)
        return torch.cat(halves)
    if cond_value is not uncond_value and cond_value != uncond_value:
        raise ValueError(f"guidance: {name} differs between the conditional and unconditional inputs "
                         f"({cond_value!r} vs {uncond_value!r}) but is not a batched tensor")
    return cond_value


class ClassifierFreeGuidance:
    """``D_w = D_cond + w (D_cond - D_uncond)`` over any denoiser ``D(x, sigma, **cond)``.

    Args:
        denoiser: the conditional denoiser (``samplers.protocol.Denoiser``); its optional protocol
            attributes (``samplers.protocol.OPTIONAL_ATTRIBUTES``) are exposed unchanged.
        w: guidance weight; 0 is no guidance (one conditional call of ``B``), else one call of ``2B``.
        uncond: how to build the unconditional keyword arguments from the conditional ones: None
            (``class_labels`` zeroed), a mapping of replacements, or a function ``cond -> uncond``.
    """

    def __init__(self, denoiser: Callable, w: float = 0.0,
                 uncond: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]] | None = None):
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"guidance weight w must be a number, got {w!r}") from None
        if not math.isfinite(w):
            raise ValueError(f"guidance weight w must be finite, got {w}")
        if uncond is not None and not (callable(uncond) or isinstance(uncond, Mapping)):
            raise ValueError(f"uncond must be None, a mapping or a function of the conditioning, "
                             f"got {uncond!r}")
        self.denoiser = denoiser
        self.w = w
        self.uncond = uncond

    @property
    def guidance_scale(self) -> float:
        """The same weight in diffusers' convention: ``1 + w``."""
        return 1.0 + self.w

    def __getattr__(self, name):
        # Only reached for attributes not set in __init__: forward the denoiser protocol attributes, so
        # hasattr(guided, "round_sigma") is true exactly when the wrapped denoiser has one.
        if "denoiser" in self.__dict__:
            try:
                return forward_attribute(self.__dict__["denoiser"], name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def unconditional(self, cond: Mapping[str, Any]) -> dict[str, Any]:
        """The unconditional keyword arguments for the conditional ones ``cond``."""
        if self.uncond is None:
            return drop_class_labels(cond)
        if isinstance(self.uncond, Mapping):
            return {**cond, **self.uncond}
        return dict(self.uncond(dict(cond)))

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if self.w == 0:
            return self.denoiser(x, sigma, **cond)
        batch = x.shape[0]
        uncond = self.unconditional(cond)
        missing = set(cond) ^ set(uncond)
        if missing:
            raise ValueError(f"guidance: the conditional and unconditional inputs must take the same "
                             f"arguments; only one has {', '.join(sorted(missing))}")
        args = {k: _stack(k, cond[k], uncond[k], batch) for k in cond}
        sigma2 = torch.cat([sigma, sigma]) if _batched(sigma, batch) else sigma
        both = self.denoiser(torch.cat([x, x]), sigma2, **args)
        d_cond, d_uncond = both[:batch], both[batch:]
        return d_cond + self.w * (d_cond - d_uncond)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance({self.denoiser!r}, w={self.w:g})"


def guided(denoiser: Callable, w: float = 0.0, uncond=None) -> Callable:
    """``denoiser`` itself when ``w == 0``, else :class:`ClassifierFreeGuidance` over it."""
    wrapper = ClassifierFreeGuidance(denoiser, w, uncond)
    return denoiser if wrapper.w == 0 else wrapper

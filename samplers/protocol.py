"""The denoiser protocol: the one thing ``samplers`` asks of a model.

A denoiser is any callable ``D(x, sigma, **cond) -> x0_hat``:

* ``x``: a noisy batch ``[B, ...]`` (floating point), ``x = y + sigma * n``;
* ``sigma``: the noise level, a ``[B]`` tensor of x's dtype (``samplers.sample`` always passes one; a
  Python float is also accepted by the denoisers of this project);
* ``**cond``: conditioning keyword arguments (``class_labels=``, ...), passed through unchanged;
* returns the estimate of the clean ``y``, shaped like ``x`` (a different float dtype is cast back).

It may also carry these optional attributes (:data:`OPTIONAL_ATTRIBUTES`), which samplers and tools
use when present and do without otherwise:

* ``sigma_min``, ``sigma_max``: the range of noise levels the model was trained on (float), the
  default ends of a schedule;
* ``sigma_data``: the data's standard deviation (float), for EDM-style preconditioning and scaling;
* ``sigmas``: a discrete-time model's ascending 1-D tensor of its trained noise levels (k-diffusion's
  ``model.sigmas``), which table schedules (``simple``, ``normal``, ...) pick from;
* ``round_sigma(sigma: Tensor) -> Tensor``: snaps a noise level to one the model supports (discrete-time
  models); EDM's Algorithm 2 rounds its churned ``sigma_hat`` with it.

A wrapper around a denoiser (guidance, a precision cast, ...) should expose exactly the optional
attributes its inner denoiser has, so ``hasattr(wrapper, "round_sigma")`` tells the truth; its
``__getattr__`` can return :func:`forward_attribute` ``(inner, name)``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["OPTIONAL_ATTRIBUTES", "OPTIONAL_ATTRIBUTE_DOCS", "Denoiser", "forward_attribute"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, **cond) -> x0_hat``; see the module docstring (and :data:`OPTIONAL_ATTRIBUTES`)."""

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor: ...


OPTIONAL_ATTRIBUTE_DOCS = MappingProxyType({
    "sigma_min": "lowest noise level the model was trained on (float)",
    "sigma_max": "highest noise level the model was trained on (float)",
    "sigma_data": "standard deviation of the data (float)",
    "sigmas": "a discrete-time model's ascending 1-D tensor of its noise levels (table schedules use it)",
    "round_sigma": "round_sigma(sigma: Tensor) -> Tensor: the nearest noise level the model supports",
})
OPTIONAL_ATTRIBUTES = tuple(OPTIONAL_ATTRIBUTE_DOCS)


def forward_attribute(inner, name: str):
    """``getattr(inner, name)`` for an optional protocol attribute; AttributeError for any other name
    (and when ``inner`` lacks it). For wrappers' ``__getattr__``."""
    if name not in OPTIONAL_ATTRIBUTES:
        raise AttributeError(name)
    return getattr(inner, name)

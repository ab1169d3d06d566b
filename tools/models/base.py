"""What every model kind loads into: :class:`LoadedModel`, the class-label convention
(:class:`LabelledDenoiser`) and :class:`ModelError`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from samplers.protocol import forward_attribute
from tools.common import BadInput

__all__ = ["LabelledDenoiser", "LoadedModel", "ModelError", "parameter_count"]

# Discrete-time models also expose their sigma <-> timestep maps.
_TIME_MAPS = ("sigma_to_t", "t_to_sigma")


class ModelError(BadInput):
    """A model spec that cannot be loaded; the message is one line naming the file and the remedy."""

    def __init__(self, message: str, param: str | None = "model"):
        super().__init__(message, param)


@dataclass
class LoadedModel:
    denoiser: Callable  # D(x, sigma, class_labels=None) -> x0_hat
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0: unconditional
    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None  # ascending discrete table of a discrete-time model, else None
    kind: str  # 'checkpoint' | 'diffusers' | 'nvlabs'
    source: str  # what was loaded (path or name)
    info: dict = field(default_factory=dict)  # what `edm info` shows
    # The model's own x0 thresholding (a diffusers scheduler's clip_sample / thresholding), as keyword
    # arguments of samplers.guidance.Thresholded; applied after guidance, unless --threshold overrides.
    threshold: dict | None = None

    @property
    def ignored(self) -> list[str]:
        """Settings of the model's files that the loader does not honour (each one line), for warnings."""
        return list(self.info.get("ignored") or [])


def parameter_count(module) -> int:
    if isinstance(module, nn.Module):
        return sum(p.numel() for p in module.parameters())
    return 0


def _one_hot(labels: Tensor) -> dict:
    return {"class_labels": labels}


class LabelledDenoiser(nn.Module):
    """``D(x, sigma, class_labels=None)`` over a denoiser with its own class input.

    ``class_labels`` is ``None`` (unconditional) or a ``[B, num_classes]`` one-hot tensor whose
    all-zero rows are unconditional.  ``convert(labels)`` turns a checked ``[B, K]`` float tensor
    into the keyword arguments of ``inner``; unconditional models get no class argument at all.
    The output has the dtype of ``x`` (NVlabs' networks answer in float32 whatever they get).
    The protocol's optional attributes of ``inner`` (``samplers.protocol.OPTIONAL_ATTRIBUTES``) and its
    discrete-time maps (``sigma_to_t``, ``t_to_sigma``) are exposed unchanged.
    """

    def __init__(self, inner, num_classes: int, convert: Callable[[Tensor], dict] | None = None):
        super().__init__()
        self.inner = inner
        self.num_classes = int(num_classes)
        self._convert = convert or _one_hot

    def labels(self, x: Tensor, class_labels) -> dict:
        if self.num_classes == 0:
            if class_labels is not None and bool(torch.as_tensor(class_labels).ne(0).any()):
                raise ValueError("this model is unconditional: class_labels must be None")
            return {}
        batch = x.shape[0]
        if class_labels is None:
            labels = torch.zeros(batch, self.num_classes, device=x.device, dtype=x.dtype)
        else:
            labels = torch.as_tensor(class_labels, device=x.device)
            if labels.ndim != 2 or labels.shape[1] != self.num_classes or labels.shape[0] not in (1, batch):
                raise ValueError(f"class_labels must be a [B, {self.num_classes}] one-hot tensor, "
                                 f"got shape {list(labels.shape)}")
            labels = labels.to(x.dtype).expand(batch, -1)
        return self._convert(labels)

    def forward(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        out = self.inner(x, sigma, **self.labels(x, class_labels))
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _TIME_MAPS:
                return getattr(self.inner, name)
            return forward_attribute(self.inner, name)

"""Where and in which precision a model runs: device and dtype names resolved once, for every command.

``resolve_device`` and ``resolve_dtype`` raise :class:`tools.common.BadInput` (param ``"device"`` /
``"dtype"``) with a one-line message. :class:`ModelDtype` evaluates a denoiser in a lower precision while
the sampler keeps its state in float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from samplers.protocol import forward_attribute

from .common import BadInput

__all__ = ["DTYPES", "ModelDtype", "dtype_name", "resolve_device", "resolve_dtype", "state_dtype"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def resolve_device(device=None) -> torch.device:
    """``device`` (None: cuda when available, else cpu) as a checked torch.device.

    A bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per torchrun process); an index beyond the visible
    GPUs, CUDA on a machine without it, and other device types are BadInput.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadInput(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)", "device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput("CUDA is not available on this machine: use --device cpu", "device")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise BadInput(f"no such GPU {device} ({torch.cuda.device_count()} visible)", "device")
    elif device.type != "cpu":
        raise BadInput(f"unsupported device {device} (use cpu or cuda)", "device")
    return device


def resolve_dtype(dtype) -> torch.dtype:
    """A dtype name (``float32``, ``float16``, ``bfloat16``, ``float64``) or torch dtype, checked."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise BadInput(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}", "dtype")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise BadInput(f"unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)}", "dtype")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The sampler's working precision: float64 for float64 models, float32 otherwise (as NVlabs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ModelDtype:
    """Evaluate ``denoiser`` in ``dtype`` (e.g. float16) while the sampler keeps its state in x's dtype."""

    def __init__(self, denoiser: Callable, dtype: torch.dtype):
        self.denoiser = denoiser
        self.dtype = dtype

    def __getattr__(self, name):
        return forward_attribute(self.__dict__["denoiser"], name)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        cond = {k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in cond.items()}
        return self.denoiser(x.to(self.dtype), sigma, **cond).to(x.dtype)

"""What a benchmark is run on, checked before any work: the model in each precision it is needed in, the
per-sample conditioning, and the FD reference.

Models come as ``edm generate`` takes them (a spec for ``tools.models.load_model`` or a ``LoadedModel``),
or as a plain denoiser callable with its ``shape`` and sigma range. Errors are :class:`BenchError`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from tools.generate import GenerateError, _cond, _load, _ModelDtype, _one_line, _state_dtype
from tools.models import LoadedModel

__all__ = ["BenchError", "Conditioning", "as_loaded", "check_model", "fd_reference", "in_precision",
           "is_digits"]


class BenchError(GenerateError):
    """Bad input to the benchmark, found before any work; ``param`` names the argument at fault."""


# ---------------------------------------------------------------------------------------------------
# The model


def as_loaded(model, *, shape=None, sigma_min=None, sigma_max=None, sigmas=None,
              name=None) -> LoadedModel | None:
    """``model`` as a LoadedModel: None for a spec (loaded per precision), a plain denoiser wrapped with
    ``shape`` and its sigma range (which default to the denoiser's own ``sigma_min``/``sigma_max``)."""
    if isinstance(model, (str, os.PathLike)):
        return None
    if all(hasattr(model, attr) for attr in ("denoiser", "shape", "num_classes", "sigma_min", "sigma_max")):
        return LoadedModel(denoiser=model.denoiser, shape=tuple(model.shape),
                           num_classes=int(model.num_classes), sigma_min=float(model.sigma_min),
                           sigma_max=float(model.sigma_max),
                           sigmas=getattr(model, "sigmas", None), kind=getattr(model, "kind", "custom"),
                           source=name or getattr(model, "source", type(model).__name__))
    if not callable(model):
        raise BenchError(f"model must be a model spec, a LoadedModel or a denoiser callable, got {model!r}",
                         "model")
    sigma_min = getattr(model, "sigma_min", None) if sigma_min is None else sigma_min
    sigma_max = getattr(model, "sigma_max", None) if sigma_max is None else sigma_max
    if shape is None or sigma_min is None or sigma_max is None:
        raise BenchError("a plain denoiser needs shape=, sigma_min= and sigma_max= (it has no defaults)",
                         "model")
    return LoadedModel(denoiser=model, shape=tuple(int(s) for s in shape), num_classes=0,
                       sigma_min=float(sigma_min), sigma_max=float(sigma_max), sigmas=sigmas, kind="callable",
                       source=name or getattr(model, "__name__", type(model).__name__))


def _module_in(denoiser, dtype: torch.dtype):
    """A torch module's copy with its floating-point weights in ``dtype`` (float64 references need float64
    arithmetic throughout); anything else as it is."""
    if not isinstance(denoiser, torch.nn.Module):
        return denoiser
    tensors = [*denoiser.parameters(), *denoiser.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return denoiser
    return copy.deepcopy(denoiser).to(dtype)


def in_precision(model, loaded: LoadedModel | None, dtype: torch.dtype, device: torch.device,
                 trust_pickle: bool = False) -> LoadedModel:
    """The model evaluated in ``dtype``, as ``edm generate`` runs it: a spec is loaded in ``dtype``; half
    precisions keep the sampler's state in float32 and cast at the denoiser."""
    if loaded is None:
        try:
            loaded = _load(model, device, dtype, trust_pickle)
        except GenerateError as e:
            raise BenchError(str(e), "model") from None
    elif dtype == torch.float64:
        loaded = dataclasses.replace(loaded, denoiser=_module_in(loaded.denoiser, dtype))
    if dtype != _state_dtype(dtype):
        loaded = dataclasses.replace(loaded, denoiser=_ModelDtype(loaded.denoiser, dtype))
    return loaded


def is_digits(model, loaded: LoadedModel) -> bool:
    """Whether this is the built-in digits model (it has a shipped FD reference)."""
    return str(model) == "digits" or (loaded.kind == "checkpoint" and loaded.source == "digits")


# ---------------------------------------------------------------------------------------------------
# Conditioning


class Conditioning:
    """The keyword arguments of the denoiser calls for samples ``start:stop``, in a given dtype.

    A class-conditional model gets the class labels ``edm generate`` draws from each seed, so benchmark
    samples are the images it writes. A plain denoiser gets ``extra``: tensors whose first dimension is
    the number of samples are per sample (sliced), anything else is passed to every call.
    """

    def __init__(self, model: LoadedModel, seeds: Sequence[int], device: torch.device,
                 extra: Mapping[str, Any] | None = None):
        if extra and model.num_classes:
            raise BenchError("cond= is for plain denoisers; a class-conditional model gets the class labels "
                             "edm generate draws", "cond")
        self.model, self.seeds, self.device, self.extra = model, list(seeds), device, dict(extra or {})

    def _part(self, value, start: int, stop: int, dtype: torch.dtype):
        if not isinstance(value, torch.Tensor):
            return value
        if value.ndim and value.shape[0] == len(self.seeds):
            value = value[start:stop]
        return value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)

    def __call__(self, start: int, stop: int, dtype: torch.dtype) -> dict[str, Any]:
        if self.model.num_classes:
            return _cond(self.model, self.seeds[start:stop], None, self.device, dtype)
        return {key: self._part(value, start, stop, dtype) for key, value in self.extra.items()}


def check_model(model: LoadedModel, cond: Conditioning, dtype: torch.dtype, device: torch.device,
                why: str = "") -> None:
    """One evaluation on one sample at sigma_max, in the precision it will run in: fails fast and cleanly."""
    state = _state_dtype(dtype)
    x = torch.zeros((1, *model.shape), device=device, dtype=state)
    sigma = torch.full((1,), float(model.sigma_max), device=device, dtype=state)
    try:
        with torch.no_grad():
            out = model.denoiser(x, sigma, **cond(0, 1, state))
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
        where = f"{device}, {str(dtype).removeprefix('torch.')}{why}"
        raise BenchError(f"the model fails on this input ({where}): {_one_line(e)}", "model") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BenchError(f"the model returns {got} for an input of shape {list(x.shape)}", "model")


# ---------------------------------------------------------------------------------------------------
# The FD reference

_FD_FLAGS = {"'--ref'": "ref", "'--detector'": "detector", "'--detector-weights'": "detector_weights"}


def fd_reference(ref: str, shape: Sequence[int], *, detector: str | None, detector_weights, device,
                 batch: int) -> tuple[Callable, Any, Any, str]:
    """``(detector, mu, sigma, name)`` of ``ref``, resolved and checked as `edm fid gen` does."""
    import click

    from tools.fid.cli import fd_reference as resolve

    try:
        return resolve(ref, shape, detector=detector, detector_weights=detector_weights, device=device,
                       batch=batch)
    except click.BadParameter as e:
        raise BenchError(e.message, _FD_FLAGS.get(e.param_hint, "ref")) from None
    except click.ClickException as e:  # e.g. the detector's weights are not on this machine
        raise BenchError(e.message, "detector") from None

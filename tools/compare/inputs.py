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

from tools.common import BadInput
from tools.device import state_dtype
from tools.generate.prompts import Prompts
from tools.generate.sampling import check_denoiser, load
from tools.labels import conditioning
from tools.models import LoadedModel

__all__ = ["BenchError", "Conditioning", "as_loaded", "check_model", "fd_reference", "in_precision",
           "is_digits", "load_spec"]


class BenchError(BadInput):
    """Bad input to the benchmark, found before any work; ``param`` names the argument at fault."""


# ---------------------------------------------------------------------------------------------------
# The model


#: the fields of a LoadedModel given as an object that come along: a latent text-to-image model's parts,
#: and the hooks of the guiders that perturb its network (PAG, SLG, SEG)
_LATENT_PARTS = ("info", "autoencoder", "conditioner", "default_guidance", "perturb_hooks")


def as_loaded(model, *, shape=None, sigma_min=None, sigma_max=None, sigmas=None,
              name=None) -> LoadedModel | None:
    """``model`` as a LoadedModel: None for a spec (loaded per precision), a plain denoiser wrapped with
    ``shape`` and its sigma range (which default to the denoiser's own ``sigma_min``/``sigma_max``)."""
    if isinstance(model, (str, os.PathLike)):
        return None
    if all(hasattr(model, attr) for attr in ("denoiser", "shape", "num_classes", "sigma_min", "sigma_max")):
        # a latent / text model's parts come along: its images are decoded, its samples prompted
        extras = {key: getattr(model, key) for key in _LATENT_PARTS if getattr(model, key, None) is not None}
        return LoadedModel(denoiser=model.denoiser, shape=tuple(model.shape),
                           num_classes=int(model.num_classes), sigma_min=float(model.sigma_min),
                           sigma_max=float(model.sigma_max),
                           sigmas=getattr(model, "sigmas", None), kind=getattr(model, "kind", "custom"),
                           source=name or getattr(model, "source", type(model).__name__), **extras)
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
    denoiser = copy.deepcopy(denoiser).to(dtype)
    for module in denoiser.modules():  # a backbone that casts its input (edm.precond's backbone_dtype)
        if isinstance(getattr(module, "backbone_dtype", None), torch.dtype):
            module.backbone_dtype = dtype
    return denoiser


def load_spec(model, dtype: torch.dtype, device: torch.device, trust_pickle: bool = False) -> LoadedModel:
    """A model spec loaded in ``dtype``, as ``edm generate`` loads it."""
    try:
        return load(model, device, dtype, trust_pickle)
    except BadInput as e:
        raise BenchError(str(e), "model") from None


def in_precision(loaded: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """The model's weights as ``edm generate`` runs them in ``dtype``: float64 gets float64 weights (a copy
    when needed); the casts of half precisions and the guidance family are the denoiser
    ``tools.steering.CheckedSteering.denoiser`` builds over it."""
    if dtype == torch.float64:
        loaded = dataclasses.replace(loaded, denoiser=_module_in(loaded.denoiser, dtype))
    return loaded


def is_digits(model, loaded: LoadedModel) -> bool:
    """Whether this is the built-in digits model (it has a shipped FD reference)."""
    return str(model) == "digits" or (loaded.kind == "checkpoint" and loaded.source == "digits")


# ---------------------------------------------------------------------------------------------------
# Conditioning


class Conditioning:
    """The keyword arguments of the denoiser calls for samples ``start:stop``, in a given dtype.

    A class-conditional model gets the class labels ``edm generate`` draws from each seed (or
    ``class_label`` for every sample), so benchmark samples are the images it writes. A text model gets
    its prompts' conditioning (``prompts``: :class:`tools.generate.prompts.Prompts` by the state dtype of
    the pass, each encoded by the model loaded for that pass; the k-th seed gets prompt k, as in
    ``edm generate``). A plain denoiser gets ``extra``: tensors whose first dimension is the number of
    samples are per sample (sliced), anything else is passed to every call.
    """

    def __init__(self, model: LoadedModel, seeds: Sequence[int], device: torch.device,
                 extra: Mapping[str, Any] | None = None, class_label: int | None = None,
                 num_classes: int | None = None, prompts: Mapping[torch.dtype, Prompts] | None = None):
        self.num_classes = model.num_classes if num_classes is None else num_classes  # a classifier's too
        if extra and self.num_classes:
            raise BenchError("cond= is for plain denoisers; a class-conditional model gets the class labels "
                             "edm generate draws", "cond")
        if extra and prompts:
            raise BenchError("cond= is for plain denoisers; a text model gets its prompts' conditioning",
                             "cond")
        self.model, self.seeds, self.device, self.extra = model, list(seeds), device, dict(extra or {})
        self.class_label = class_label
        self.prompts = dict(prompts or {})
        for text in self.prompts.values():
            text.assign(self.seeds)  # the k-th seed gets prompt line k, whatever the batch

    def _text(self, dtype: torch.dtype) -> Prompts:
        """The prompts of the pass whose samples are in ``dtype`` (the first one's for any other)."""
        return self.prompts.get(dtype) or next(iter(self.prompts.values()))

    def _part(self, value, start: int, stop: int, dtype: torch.dtype):
        if not isinstance(value, torch.Tensor):
            return value
        if value.ndim and value.shape[0] == len(self.seeds):
            value = value[start:stop]
        return value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)

    def __call__(self, start: int, stop: int, dtype: torch.dtype) -> dict[str, Any]:
        if self.prompts:
            return self._text(dtype).cond(self.seeds[start:stop], self.device, dtype)
        if self.num_classes:
            return conditioning(self.num_classes, self.model.shape, self.seeds[start:stop], self.class_label,
                                self.device, dtype)
        return {key: self._part(value, start, stop, dtype) for key, value in self.extra.items()}


def check_model(model: LoadedModel, cond: Conditioning, dtype: torch.dtype, device: torch.device,
                why: str = "") -> None:
    """One evaluation on one sample at sigma_max, in the precision it will run in: fails fast and cleanly."""
    try:
        check_denoiser(model.denoiser, model, float(model.sigma_max), cond(0, 1, state_dtype(dtype)), device,
                       dtype, why)
    except BadInput as e:
        raise BenchError(str(e), "model") from None


# ---------------------------------------------------------------------------------------------------
# The FD reference

_FD_PARAMS = ("ref", "detector", "detector_weights")


def fd_reference(ref, shape: Sequence[int], *, detector: str | None, detector_weights, device,
                 batch: int) -> tuple[Callable, Any, Any, str]:
    """``(detector, mu, sigma, name)`` of ``ref``, resolved and checked by the FID library as `edm fid`
    does."""
    from tools.fid.detectors import DetectorWeightsMissing
    from tools.fid.scoring import fd_reference as resolve

    try:
        return resolve(ref, shape, detector=detector, detector_weights=detector_weights, device=device,
                       batch=batch)
    except BadInput as e:
        raise BenchError(str(e), e.param if e.param in _FD_PARAMS else "ref") from None
    except DetectorWeightsMissing as e:  # the detector's weights are not on this machine
        raise BenchError(str(e), "detector") from None

"""Models named by a spec or given loaded: :func:`load`."""

from __future__ import annotations

import os

from tools.common import BadInput

__all__ = ["MODEL_FIELDS", "load"]

#: what a loaded model has (``tools.models.LoadedModel``'s fields that sampling reads)
MODEL_FIELDS = ("denoiser", "shape", "num_classes", "sigma_min", "sigma_max", "sigmas")


def load(model, device, dtype, trust_pickle: bool = False):
    """A model spec loaded with ``tools.models.load_model``, or an already loaded model checked."""
    if not isinstance(model, str | os.PathLike):
        for attr in MODEL_FIELDS:
            if not hasattr(model, attr):
                raise BadInput(f"model must be a model spec or a LoadedModel; {model!r} has no {attr}",
                               "model")
        return model
    from tools.models import load_model

    return load_model(str(model), device=device, dtype=dtype, trust_pickle=trust_pickle)

"""Load a model by name for the front end: one :class:`LoadedModel` whatever its origin.

One module per model kind (:mod:`.checkpoint`, :mod:`.diffusers`, :mod:`.nvlabs`), each with
``claims(spec)`` and ``load(spec, ...)`` (and optionally ``identity(spec)``, see :func:`model_identity`);
:func:`load_model` asks them in the order of ``KINDS``. A new kind is a new module added there.

A *spec* is one of

- ``digits`` (see :func:`list_builtin`): the checkpoint shipped in ``edm/weights``;
- a checkpoint (``NAME``, ``NAME.json``, ``NAME.safetensors``, or a directory holding exactly one
  such pair), read by :func:`edm.checkpoint.load_checkpoint`, which never unpickles;
- ``diffusers:DIR``: a Stable Diffusion 1.x/2.x, SDXL, SD3, PixArt or DiT pipeline saved with
  ``save_pretrained`` (``DIR/model_index.json``; :mod:`.pipelines`: a latent model with its VAE and text
  conditioner, or DiT's classes), or a
  diffusers ``UNet2DModel`` and its scheduler (``DIR/unet`` + ``DIR/scheduler`` as a pipeline saves them,
  or ``config.json`` + ``scheduler_config.json`` side by side in ``DIR``), wrapped in
  :class:`edm.DiscreteTimeDenoiser`;
- an NVlabs EDM network pickle (``*.pkl``, ``*.pickle`` or ``nvlabs:PATH``), unpickled only with
  ``trust_pickle=True`` and NVlabs' ``dnnlib`` / ``torch_utils`` importable.

Every loaded denoiser has the signature ``D(x, sigma, class_labels=None)`` with ``class_labels`` a
``[B, num_classes]`` float one-hot tensor, or ``None`` (or all-zero rows) for unconditional sampling.
Every failure is a :class:`ModelError` with a one-line message naming the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, diffusers, nvlabs, pipelines
from .base import LoadedModel, ModelError

__all__ = ["KINDS", "describe_specs", "load_model", "model_identity"]

#: the model kinds, asked in this order whether they claim a spec
KINDS = (pipelines, diffusers, nvlabs, checkpoint)


def describe_specs() -> str:
    return (f"a built-in model ({', '.join(checkpoint.list_builtin())}), a checkpoint "
            f"NAME[.json|.safetensors], "
            "'diffusers:DIR' or an NVlabs network pickle (.pkl)")


def load_model(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring) on ``device`` in ``dtype``."""
    spec = str(spec)
    for kind in KINDS:
        if kind.claims(spec):
            return kind.load(spec, device=device, dtype=dtype, trust_pickle=trust_pickle)
    path = Path(spec).expanduser()
    if path.exists():
        raise ModelError(f"{path} is not a model file: expected {describe_specs()}")
    raise ModelError(f"unknown model {spec!r}: no such file; expected {describe_specs()}")


def model_identity(spec) -> str:
    """What ``spec`` names, spelled one way however it was given, without loading it: two specs with one
    identity load the same model (``digits`` and the path of its checkpoint). The kind that claims the spec
    says (its ``identity(spec)``), else the path after its ``PREFIX``, resolved; a spec no kind claims is
    its own identity."""
    spec = str(spec)
    for kind in KINDS:
        if kind.claims(spec):
            identity = getattr(kind, "identity", None)
            return identity(spec) if identity is not None else _resolved_path(kind, spec)
    return spec


def _resolved_path(kind, spec: str) -> str:
    prefix = getattr(kind, "PREFIX", "")
    path = spec[len(prefix):] if prefix and spec.startswith(prefix) else spec
    return f"{kind.__name__.rsplit('.', 1)[-1]}:{Path(path).expanduser().resolve()}"

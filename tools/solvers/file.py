"""Solver files: a fitted :class:`samplers.fitted.LinearSolver` saved as JSON (by ``edm tune-solver``), read
back by ``--sampler file:PATH``.

The file holds the solver's levels and weights, whether its first step is analytical, and what it was
fitted for: the model (its spec and a fingerprint of its weights), the NFE, the guidance weight, the
class setting and the fit's seeds and errors. A solver is refused for another model, since its levels
and weights are fitted to one model's trajectories. A solver fitted in float32 (or float64) also records
the fingerprints its model's weights have when loaded in float16 or bfloat16 (a cast rounds them), so it
serves those loads of the same model too. Nothing but JSON is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edm.checkpoint import atomic_write, read_record
from samplers.fitted import LinearSolver
from tools.common import prefixed_path

__all__ = ["FORMAT", "SolverFile", "SolverFileError", "file_path", "fingerprint", "fingerprints",
           "load_solver", "save_solver"]

FORMAT = "edm-samplers/solver-v1"
# The lower precisions a model may be loaded in besides the one it was fitted in (see the docstring).
HALF_DTYPES = (torch.float16, torch.bfloat16)


class SolverFileError(ValueError):
    """A solver file that is missing, corrupt, not a valid solver or for another model (one line)."""


@dataclass(frozen=True)
class SolverFile:
    path: Path
    solver: LinearSolver
    metadata: dict[str, Any] = field(default_factory=dict)

    def check_model(self, model_fingerprint: str) -> None:
        """SolverFileError (one line) unless the solver was fitted for the model of this fingerprint."""
        fitted = self.metadata.get("model_fingerprint")
        also = self.metadata.get("model_fingerprints")
        if fitted != model_fingerprint and not (isinstance(also, list) and model_fingerprint in also):
            raise SolverFileError(f"solver file {self.path} was fitted for another model "
                                  f"({self.metadata.get('model', '?')}, weights {str(fitted)[:19]}); this "
                                  f"model's weights are {model_fingerprint[:19]}: fit one with "
                                  "edm tune-solver")


def file_path(name) -> Path | None:
    """The path in a ``file:PATH`` sampler name, or None for a registry name."""
    return prefixed_path(name, SolverFileError, "--sampler file:solver.json")


def fingerprint(denoiser, as_dtype: torch.dtype | None = None) -> str:
    """``sha256:...`` of a denoiser's weights (its ``state_dict``, every tensor as float32 bytes in name
    order), so a float64 load of the weights has the fingerprint of the float32 one. ``as_dtype``: the
    fingerprint the weights would have if loaded in that dtype (each floating tensor cast to it first).
    A denoiser without a ``state_dict`` is fingerprinted by its ``fingerprint`` attribute or its type's
    name."""
    digest = hashlib.sha256()
    state = denoiser.state_dict() if hasattr(denoiser, "state_dict") else None
    if state is None:
        digest.update(str(getattr(denoiser, "fingerprint", type(denoiser).__qualname__)).encode())
    else:
        for name in sorted(state):
            tensor = state[name]
            digest.update(name.encode())
            if torch.is_tensor(tensor):
                tensor = tensor.detach().to("cpu")
                if tensor.is_floating_point():
                    tensor = (tensor if as_dtype is None else tensor.to(as_dtype)).float()
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def fingerprints(denoiser) -> list[str]:
    """The fingerprint of ``denoiser``'s weights as they are, then as they would be loaded in float16 and
    in bfloat16 (distinct ones, in that order): what a solver file fitted on them records."""
    found = [fingerprint(denoiser)]
    for dtype in HALF_DTYPES:
        if (other := fingerprint(denoiser, dtype)) not in found:
            found.append(other)
    return found


def save_solver(path, solver: LinearSolver, **metadata) -> Path:
    """Write ``solver`` and ``metadata`` (JSON data) atomically to ``path``."""
    path = Path(path)
    record = {"format": FORMAT, "nfe": solver.nfe, "sigmas": solver.sigmas.tolist(),
              "weights": solver.weights.tolist(), "afs": solver.afs,
              **({} if solver.model_sigmas is None else {"model_sigmas": solver.model_sigmas.tolist()}),
              **metadata}
    text = json.dumps(record, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def load_solver(path) -> SolverFile:
    """Read a solver file; SolverFileError naming the file when it is not a valid one."""
    path = Path(path).expanduser()
    record = read_record(path, FORMAT, "solver file", SolverFileError)
    record.pop("format")
    try:
        afs = record.pop("afs", False)
        if not isinstance(afs, bool):
            raise ValueError(f"afs must be true or false, got {afs!r}")
        told = record.pop("model_sigmas", None)
        solver = LinearSolver(torch.tensor(record.pop("sigmas", None), dtype=torch.float64),
                              torch.tensor(record.pop("weights", None), dtype=torch.float64), afs=afs,
                              name=f"file:{path}", metadata=record,
                              model_sigmas=None if told is None else torch.tensor(told, dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError) as e:
        raise SolverFileError(f"solver file {path}: {str(e).splitlines()[0]}") from None
    if record.get("nfe") != solver.nfe:
        raise SolverFileError(f"solver file {path}: says nfe {record.get('nfe')!r}, its levels make "
                              f"{solver.nfe}")
    return SolverFile(path=path, solver=solver, metadata=record)

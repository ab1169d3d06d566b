"""The state of an unfinished solver fit on disk, so that an interrupted fit continues where it stopped.

A checkpoint is one safetensors file (``OUT.partial`` beside the solver file ``OUT``, see
:func:`checkpoint_path`): its tensors are the teacher solution and every started fit's parameters, best
iterate and Adam state; its metadata holds, as JSON, the format, the settings the fit was started with
and the rest of the state (iteration counts, learning-rate schedule, start errors). Nothing is pickled.
It is written atomically (temporary file, then rename), so an interruption while it is written leaves
the previous one. The fit draws no random numbers (the start noise comes from the seeds), so there are
no random-generator states to keep.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edm.checkpoint import atomic_write
from tools.common import BadInput

__all__ = ["FORMAT", "FitInterrupted", "Interrupts", "checkpoint_path", "check_settings", "load_state",
           "save_state"]

FORMAT = "edm-samplers/solver-fit-state-1"


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a fit between two iterations, after saving its checkpoint."""

    def __init__(self, checkpoint: Path, iteration: int, total: int, signum: int):
        self.checkpoint, self.iteration, self.total, self.signal = checkpoint, iteration, total, signum
        super().__init__(f"interrupted after iteration {iteration} of {total}: the fit so far is saved in "
                         f"{checkpoint}")


def checkpoint_path(out) -> Path:
    """Where the fit for the solver file ``out`` keeps its state: ``out`` + ``.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def save_state(path: Path, record: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write ``record`` (JSON data) and ``tensors`` atomically to ``path``."""
    metadata = {"format": FORMAT, "state": json.dumps(record, sort_keys=True)}
    tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(record, tensors)`` saved by :func:`save_state`; BadInput (one line) for a file that is not one."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
        record = json.loads(metadata["state"])
    except Exception as e:  # safetensors raises its own error types
        raise BadInput(f"cannot read the fit checkpoint {path} ({' '.join(str(e).split())}): delete it, or "
                       "pass --start-over to start the fit over") from None
    return record, tensors


def _plain(value):
    """``value`` as JSON reads it back (tuples become lists), so that saved and given settings compare."""
    return json.loads(json.dumps(value))


def check_settings(path: Path, saved: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """BadInput naming the first setting (its ``param``) whose value in ``given`` differs from the one
    the checkpoint at ``path`` was started with."""
    given = _plain(dict(given))
    for key in list(given) + [key for key in saved if key not in given]:
        before, now = saved.get(key), given.get(key)
        if before != now:
            raise BadInput(f"{path} holds a fit started with {key} {_shown(before)}, not {_shown(now)}: "
                           f"rerun with the options it was started with to continue it, or pass --start-over "
                           f"to start over", key)


def _shown(value) -> str:
    return "(none)" if value is None else json.dumps(value) if not isinstance(value, str) else value


class Interrupts:
    """SIGINT and SIGTERM, while installed, only ask the fit to stop at its next checkpoint (``requested``:
    the signal's number); a second one stops it at once. Installed only in the main thread (Python's
    signal handlers live there) and when ``enabled``."""

    def __init__(self):
        self.requested: int | None = None

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        # the next checkpoint may be minutes away (the teacher's ODE solve): say why nothing stops yet
        sys.stderr.write("\nStopping at the next checkpoint (after the teacher's ODE solve or the current "
                         "iteration); interrupt again to quit at once, losing what is not saved\n")

    @classmethod
    @contextmanager
    def deferred(cls, enabled: bool) -> Iterator[Interrupts]:
        interrupts = cls()
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield interrupts
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        before = {signum: signal.signal(signum, interrupts._handle) for signum in signals}
        try:
            yield interrupts
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

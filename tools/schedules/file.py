"""Schedule files: a list of sigmas saved as JSON (e.g. by ``edm tune-schedule``), read back by
``--schedule file:PATH``.

The file holds ``n + 1`` levels (``n`` positive, strictly decreasing sigmas and the final 0) plus
free-form metadata (what it was tuned for). Asked for ``n`` steps it returns them exactly; asked for
another step count it resamples the levels log-linearly, as the ``ays`` schedule does with its tables,
so one tuned file still gives a sensible schedule at every budget. Nothing but JSON is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edm.checkpoint import atomic_write, read_record
from samplers.schedules import loglinear_resample, validate_sigmas
from tools.common import FILE_PREFIX, prefixed_path

__all__ = ["FORMAT", "PREFIX", "ScheduleFile", "ScheduleFileError", "file_path", "load_schedule",
           "save_schedule"]

FORMAT = "edm-samplers/schedule-v1"
PREFIX = FILE_PREFIX


class ScheduleFileError(ValueError):
    """A schedule file that is missing, corrupt or not a valid schedule (one-line message)."""


@dataclass(frozen=True)
class ScheduleFile:
    path: Path
    sigmas: torch.Tensor  # float64, n positive decreasing levels then 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def __call__(self, n: int) -> torch.Tensor:
        """``n`` steps: the file's own levels when ``n`` is its step count, else log-linearly resampled
        between its first and last nonzero sigma (both kept exactly), then the final 0."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"steps must be a positive integer, got {n!r}")
        if n == self.steps:
            return self.sigmas.clone()
        levels = self.sigmas[:-1]
        if n == 1:
            nonzero = levels[:1]
        elif len(levels) == 1:
            raise ValueError(f"schedule file {self.path} has one step; it cannot be resampled to {n}")
        else:
            nonzero = loglinear_resample(levels, n)
        return torch.cat([nonzero, nonzero.new_zeros(1)])


def file_path(name: str) -> Path | None:
    """The path in a ``file:PATH`` schedule name, or None for a registry name."""
    return prefixed_path(name, ScheduleFileError, "--schedule file:tuned.json")


def save_schedule(path, sigmas, **metadata) -> Path:
    """Write ``sigmas`` (checked, ending in 0) and ``metadata`` (JSON data) atomically to ``path``."""
    sigmas = validate_sigmas(torch.as_tensor(sigmas, dtype=torch.float64).cpu())
    if sigmas[-1] != 0:
        raise ValueError("a schedule file's sigmas must end in 0")
    path = Path(path)
    text = json.dumps({"format": FORMAT, "sigmas": sigmas.tolist(), **metadata}, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def load_schedule(path) -> ScheduleFile:
    """Read a schedule file; ScheduleFileError naming the file when it is not a valid one."""
    path = Path(path).expanduser()
    record = read_record(path, FORMAT, "schedule file", ScheduleFileError)
    try:
        sigmas = validate_sigmas(torch.tensor(record.pop("sigmas", None), dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ScheduleFileError(f"schedule file {path}: bad sigmas ({str(e).splitlines()[0]})") from None
    if sigmas[-1] != 0:
        raise ScheduleFileError(f"schedule file {path}: sigmas must end in 0")
    record.pop("format")
    return ScheduleFile(path=path, sigmas=sigmas, metadata=record)

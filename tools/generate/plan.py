"""A generation job checked before anything is written: :func:`prepare` -> :class:`Plan`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tools.common import BadInput, check_writable_dir, positive_int
from tools.images import PNG_MODES, image_path
from tools.seeds import format_seeds, parse_seeds
from tools.steering import Steering

from .record import check_record
from .sampling import Sampling, prepare_sampling

__all__ = ["GenerateError", "Plan", "prepare"]

#: the pipeline's error: bad input found before anything is written (``param`` names the argument)
GenerateError = BadInput


@dataclass(kw_only=True)
class Plan(Sampling):
    """A validated generation job (see :func:`prepare`): what to sample, and where the images go."""

    seeds: list[int]
    outdir: Path
    batch: int
    subdirs: bool
    grid: Path | None
    overwrite: bool
    progress: bool = True

    def path(self, seed: int) -> Path:
        return image_path(self.outdir, seed, self.subdirs)

    def describe(self) -> str:
        """One line: what will be sampled how."""
        return f"{len(self.seeds)} seeds ({format_seeds(self.seeds)}), {super().describe()}"


def prepare(model, seeds, outdir, *, sampler: str = "heun", schedule: str = "karras",
            steps: int | None = None, nfe: int | None = None, options: Mapping[str, Any] | None = None,
            sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
            batch: int = 64, class_label: int | None = None, guidance: float | None = None,
            subdirs: bool = False,
            grid=None, overwrite: bool = False, device=None, dtype=torch.float32, progress: bool = True,
            trust_pickle: bool = False, steering: Steering | None = None, prompting=None) -> Plan:
    """Check every argument of :func:`tools.generate.generate` and return the job; raises
    :class:`GenerateError`. Nothing is written (see :func:`tools.generate.sampling.prepare_sampling`);
    a folder that holds images made with other settings is refused unless ``overwrite``."""
    try:
        seeds = parse_seeds(seeds)
    except ValueError as e:
        raise GenerateError(str(e), "seeds") from None
    batch = positive_int(batch, "batch", "batch")
    setup = prepare_sampling(model, sampler=sampler, schedule=schedule, steps=steps, nfe=nfe, options=options,
                             sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, class_label=class_label,
                             guidance=guidance, device=device, dtype=dtype, trust_pickle=trust_pickle,
                             steering=steering, prompting=prompting)
    setup.check_seeds(seeds)
    if setup.prompts is not None:
        setup.prompts.assign(seeds)
    shape = tuple(int(s) for s in getattr(setup.model, "image_shape", setup.model.shape))
    if len(shape) != 3 or shape[0] not in PNG_MODES:
        raise GenerateError(f"cannot write images of shape {list(shape)} as PNG (need [C, H, W], C in 1..4)",
                            "model")
    outdir = Path(outdir).expanduser()
    check_writable_dir(outdir, "outdir")
    if grid is not None:
        grid = Path(grid).expanduser()
        if grid.is_dir():
            raise GenerateError(f"grid path {grid} is a directory; give a file name such as grid.png", "grid")
        check_writable_dir(grid.parent, "grid")
    check_record(outdir, setup.settings(), overwrite)
    fields = {name: getattr(setup, name) for name in Sampling.__dataclass_fields__}
    return Plan(**fields, seeds=seeds, outdir=outdir, batch=batch, subdirs=bool(subdirs), grid=grid,
                overwrite=bool(overwrite), progress=bool(progress))

"""Running a :class:`~tools.generate.plan.Plan`: sample the seeds in batches and write one PNG per seed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.images import remove_stale_temporaries, to_uint8, write_grid, write_png
from tools.ranks import Ranks
from tools.request import SamplingRequest

from .plan import Output, Plan, prepare
from .record import write_record

__all__ = ["Summary", "generate", "run", "sample_images"]


@dataclass
class Summary:
    """What a run did (totals over all ranks)."""

    written: int
    skipped: int
    outdir: Path
    grid: Path | None
    grid_size: tuple[int, int] | None
    plan: Plan = field(repr=False)
    rank: int = 0  # this process's rank (the totals are the same on every rank)

    @property
    def total(self) -> int:
        return self.written + self.skipped

    def line(self) -> str:
        text = f"{self.written} images written, {self.skipped} skipped (already there), in {self.outdir}"
        if self.grid is not None and self.grid_size is not None:  # the grid is rank 0's
            text += f"; grid {self.grid_size[0]}x{self.grid_size[1]} in {self.grid}"
        return text


def sample_images(sampling, seeds: list[int]) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` images of ``seeds`` (one batch) from a checked
    :class:`tools.generate.sampling.Sampling`."""
    return to_uint8(sampling.images(seeds))


def run(plan: Plan) -> Summary:
    """Sample and write the images of ``plan`` (this rank's share under torchrun); the grid on rank 0."""
    from tqdm import tqdm

    ranks = Ranks().start(plan.sampling.device)
    try:
        mine = ranks.share(plan.seeds)
        for folder in plan.sampling.output_dirs:
            remove_stale_temporaries(mine, plan.outdir / folder, plan.subdirs)
        # a seed is done when all its images are (a cascade's base image and final image)
        todo = [s for s in mine if plan.overwrite or not all(p.is_file() for p in plan.paths(s))]
        plan.outdir.mkdir(parents=True, exist_ok=True)
        if ranks.rank == 0:
            write_record(plan.outdir, plan.sampling.settings())
        written = 0
        sampler = plan.sampling.sampler
        desc = sampler if ranks.world == 1 else f"{sampler} (rank 0 of {ranks.world})"
        with tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                  disable=not plan.progress or ranks.rank != 0) as bar:
            for start in range(0, len(todo), plan.batch):
                chunk = todo[start:start + plan.batch]
                for folder, images in plan.sampling.outputs(chunk).items():  # the final images last
                    for seed, image in zip(chunk, images):
                        write_png(plan.path(seed, folder), image)
                written += len(chunk)
                bar.update(len(chunk))
        written, skipped = ranks.total(written, len(mine) - len(todo))
        ranks.barrier()  # every rank's PNGs are in place
        grid_size = None
        if plan.grid is not None and ranks.rank == 0:
            grid_size = write_grid([plan.path(s) for s in plan.seeds], plan.grid,
                                   getattr(plan.sampling.model, "image_shape", plan.sampling.model.shape))
        ranks.barrier()
    finally:
        ranks.close()
    return Summary(written=written, skipped=skipped, outdir=plan.outdir, grid=plan.grid, grid_size=grid_size,
                   plan=plan, rank=ranks.rank)


def generate(model=None, seeds="0-63", outdir=None, *, request: SamplingRequest | None = None,  # noqa: PLR0913
             sampler: str | None = None, schedule: str | None = None, steps: int | None = None,
             nfe: int | None = None, options: Mapping[str, Any] | None = None, sigma_min: float | None = None,
             sigma_max: float | None = None, rho: float | None = None, class_label: int | None = None,
             guidance: float | None = None, device=None, dtype=None, trust_pickle: bool | None = None,
             steering=None, prompting=None, low_res=None, noise_aug: float | None = None,
             noise_level: float | None = None, sr: SamplingRequest | None = None, batch: int = 64,
             subdirs: bool = False, grid=None, overwrite: bool = False, progress: bool = True) -> Summary:
    """Write one PNG per seed of ``model`` into ``outdir``; return what was written.

    The sampling is a :class:`tools.request.SamplingRequest`: give it as ``request`` (or in place of
    ``model``), or its fields as keywords (with a request too, they override its fields). See that class
    for the meaning of ``model``, ``sampler``, ``options``, ``schedule``, ``rho``, ``sigma_min``,
    ``sigma_max``, ``steps``, ``nfe``, ``class_label``, ``guidance``, ``steering`` (:mod:`tools.steering`),
    ``prompting`` (:class:`tools.request.Prompting`), ``low_res``, ``noise_aug``, ``noise_level`` (a
    super-resolution model's input), ``device``, ``dtype`` and ``trust_pickle``; a field
    left None keeps the request's (or the default's) value.

    Args:
        sr: a cascade's super-resolution stage (:mod:`tools.generate.cascade`): its images are the final
            ones, the base stage's (``model``'s) go to ``outdir/base``; ``noise_aug`` / ``noise_level``
            then belong in ``sr``.
        seeds: NVlabs syntax (``"0-63,100"``) or a list of ints; one image per seed.
        batch: images per denoiser batch (changes speed, not images).
        subdirs: one folder per 1000 seeds. grid: also tile all images into this PNG.
        overwrite: re-create existing PNGs (default: skip them, so an interrupted run resumes) and
            replace the folder's record of settings (default: a folder made with other settings is refused).
    """
    if isinstance(model, SamplingRequest):
        request, model = model, None
    given = dict(model=model, sampler=sampler, schedule=schedule, steps=steps, nfe=nfe, options=options,
                 sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, class_label=class_label,
                 guidance=guidance, device=device, dtype=dtype, trust_pickle=trust_pickle, steering=steering,
                 prompting=prompting, low_res=low_res, noise_aug=noise_aug, noise_level=noise_level)
    request = SamplingRequest.of(request, **{k: v for k, v in given.items() if v is not None})
    output = Output(seeds=seeds, outdir=outdir, batch=batch, subdirs=subdirs, grid=grid, overwrite=overwrite,
                    progress=progress)
    return run(prepare(request, output, sr))

"""Running a :class:`~tools.generate.plan.Plan`: sample the seeds in batches and write one PNG per seed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.images import remove_stale_temporaries, to_uint8, write_grid, write_png
from tools.ranks import Ranks

from .plan import Plan, prepare
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


def sample_images(plan, seeds: list[int]) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` images of ``seeds`` (one batch)."""
    return to_uint8(plan.images(seeds))


def run(plan: Plan) -> Summary:
    """Sample and write the images of ``plan`` (this rank's share under torchrun); the grid on rank 0."""
    from tqdm import tqdm

    ranks = Ranks().start(plan.device)
    try:
        mine = ranks.share(plan.seeds)
        remove_stale_temporaries(mine, plan.outdir, plan.subdirs)
        todo = [s for s in mine if plan.overwrite or not plan.path(s).is_file()]
        plan.outdir.mkdir(parents=True, exist_ok=True)
        if ranks.rank == 0:
            write_record(plan.outdir, plan.settings())
        written = 0
        desc = plan.sampler if ranks.world == 1 else f"{plan.sampler} (rank 0 of {ranks.world})"
        with tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                  disable=not plan.progress or ranks.rank != 0) as bar:
            for start in range(0, len(todo), plan.batch):
                chunk = todo[start:start + plan.batch]
                for seed, image in zip(chunk, sample_images(plan, chunk)):
                    write_png(plan.path(seed), image)
                    written += 1
                bar.update(len(chunk))
        written, skipped = ranks.total(written, len(mine) - len(todo))
        ranks.barrier()  # every rank's PNGs are in place
        grid_size = None
        if plan.grid is not None and ranks.rank == 0:
            grid_size = write_grid([plan.path(s) for s in plan.seeds], plan.grid,
                                   getattr(plan.model, "image_shape", plan.model.shape))
        ranks.barrier()
    finally:
        ranks.close()
    return Summary(written=written, skipped=skipped, outdir=plan.outdir, grid=plan.grid, grid_size=grid_size,
                   plan=plan, rank=ranks.rank)


def generate(model, seeds, outdir, *, sampler: str = "heun", schedule: str = "karras",
             steps: int | None = None, nfe: int | None = None, options: Mapping[str, Any] | None = None,
             sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
             batch: int = 64, class_label: int | None = None, guidance: float | None = None,
            subdirs: bool = False,
             grid=None, overwrite: bool = False, device=None, dtype=torch.float32, progress: bool = True,
             trust_pickle: bool = False, steering=None, prompting=None) -> Summary:
    """Write one PNG per seed of ``model`` into ``outdir``; return what was written.

    Args:
        model: a model spec for :func:`tools.models.load_model` (``"digits"``, a checkpoint path,
            ``"diffusers:DIR"``, a ``.pkl`` with ``trust_pickle``) or a loaded ``LoadedModel``.
        seeds: NVlabs syntax (``"0-63,100"``) or a list of ints; one image per seed.
        sampler, options: a registered sampler and the options to override (``samplers.get(name).options``).
        schedule, rho, sigma_min, sigma_max: the sigma schedule; the range defaults to the model's and
            table schedules get the model's ``sigmas``.
        steps, nfe: the number of steps (default 18) or an NFE budget (the most steps within it).
        batch: images per denoiser batch (changes speed, not images).
        class_label: the class of every image; None draws one per seed (class-conditional models).
        guidance: classifier-free guidance weight w >= 0 (0: none; diffusers' guidance_scale = 1 + w).
        subdirs: one folder per 1000 seeds. grid: also tile all images into this PNG.
        overwrite: re-create existing PNGs (default: skip them, so an interrupted run resumes) and
            replace the folder's record of settings (default: a folder made with other settings is refused).
        device, dtype: where and in which precision the model runs (the sampler's state stays in float32,
            or float64 for a float64 model). Default device: cuda when available, else cpu.
        steering: a :class:`tools.steering.Steering`: negative class, guidance interval and
            rescale, autoguidance, classifier guidance, thresholding, img2img, inpainting, a corrector.
        prompting: a :class:`tools.generate.prompts.Prompting`: a text model's prompt(s), negative prompt
            and image size.
    """
    return run(prepare(model, seeds, outdir, sampler=sampler, schedule=schedule, steps=steps, nfe=nfe,
                       options=options, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, batch=batch,
                       class_label=class_label, guidance=guidance, subdirs=subdirs, grid=grid,
                       overwrite=overwrite, device=device, dtype=dtype, progress=progress,
                       trust_pickle=trust_pickle, steering=steering, prompting=prompting))

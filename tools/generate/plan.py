"""A generation job checked before anything is written: :func:`prepare` -> :class:`Plan`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.common import BadInput, check_writable_dir, given_path, positive_int
from tools.images import PNG_MODES, image_layouts, image_path
from tools.request import SamplingRequest
from tools.seeds import format_seeds, parse_seeds

from .cascade import Cascade, prepare_stages
from .record import RECORD_NAME, check_record
from .sampling import Sampling

__all__ = ["GenerateError", "Output", "Plan", "prepare"]

#: the pipeline's error: bad input found before anything is written (``param`` names the argument)
GenerateError = BadInput


@dataclass
class Output:
    """Where and how a generation job writes (as asked; :func:`prepare` checks it)."""

    seeds: Any  # NVlabs syntax ("0-63,100") or a list of ints: one image per seed
    outdir: Any
    batch: int = 64  # images per denoiser batch (changes speed, not images)
    subdirs: bool = False  # one folder per 1000 seeds
    grid: Any = None  # also tile all images into this PNG
    overwrite: bool = False  # re-create existing PNGs and replace the folder's record of settings
    progress: bool = True


@dataclass
class Plan:
    """A validated generation job (see :func:`prepare`): the request, its checked setup, and where the images
    go."""

    request: SamplingRequest
    sampling: Sampling | Cascade
    seeds: list[int]
    outdir: Path
    batch: int
    subdirs: bool
    grid: Path | None
    overwrite: bool
    progress: bool = True

    def path(self, seed: int, folder: str = "") -> Path:
        """Seed ``seed``'s image in ``folder`` of the output folder (``""``: the final images)."""
        return image_path(self.outdir / folder, seed, self.subdirs)

    def paths(self, seed: int) -> list[Path]:
        """Every image the run writes for ``seed`` (a cascade's base stage's first)."""
        return [self.path(seed, folder) for folder in self.sampling.output_dirs]

    def describe(self) -> str:
        """One line: what will be sampled how."""
        return f"{len(self.seeds)} seeds ({format_seeds(self.seeds)}), {self.sampling.describe()}"


def _taken_by_run(path: Path, outdir: Path, seeds: list[int], subdirs: bool,
                  folders: tuple[str, ...] = ("",)) -> str | None:
    """What the run makes at ``path`` (the output folder, a folder above or within it, an image or the
    record), or None; ``folders``: where in the output folder its images go (a cascade's base stage's
    too)."""
    path, outdir = path.resolve(), outdir.resolve()
    if path == outdir or path in outdir.parents:
        return "the output folder" if path == outdir else "a folder above the output folder"
    if path == outdir / RECORD_NAME:
        return "the folder's record of settings"
    images = {image_path(outdir / folder, seed, subdirs): seed for folder in folders for seed in seeds}
    if path in images:
        return f"seed {images[path]}'s image"
    if path in {image.parent for image in images}:
        return "a folder the images go into"
    return None


def _check_grid(grid, outdir: Path, seeds: list[int], subdirs: bool,
                folders: tuple[str, ...] = ("",)) -> Path | None:
    """The grid's path, or None: a file that nothing else of the run is, checked now because the grid is
    written last (after every image)."""
    if grid is None:
        return None
    grid = given_path(grid, "the grid file", "grid")
    taken = "a directory" if grid.is_dir() else _taken_by_run(grid, outdir, seeds, subdirs, folders)
    if taken is not None:
        raise GenerateError(f"grid path {grid} is {taken}; give a file name such as grid.png", "grid")
    check_writable_dir(grid.parent, "grid")
    return grid


def _check_layout(outdir: Path, subdirs: bool) -> None:
    """Refuse a run whose layout is not the one of the images already in ``outdir``: it would not see them
    (so not skip them) and leave each seed twice, in two layouts."""
    found = image_layouts(outdir)
    if subdirs and False in found:
        raise GenerateError(f"{outdir} holds images in the flat layout ({image_path(outdir, 42)}), not one "
                            "subfolder per 1000 seeds: drop --subdirs to add to them, or give another "
                            "--outdir", "subdirs")
    if not subdirs and True in found:
        raise GenerateError(f"{outdir} holds images in one subfolder per 1000 seeds "
                            f"({image_path(outdir, 42, True)}): give --subdirs to add to them, or another "
                            "--outdir", "outdir")


def prepare(request: SamplingRequest, output: Output, sr: SamplingRequest | None = None) -> Plan:
    """Check ``request`` and ``output`` and return the job; raises :class:`GenerateError`. Nothing is written
    (see :func:`tools.generate.sampling.prepare_sampling`); a folder that holds images made with other
    settings is refused unless ``output.overwrite``, and one that holds images in the other layout (flat or
    ``subdirs``) always. ``sr``: a cascade's super-resolution stage (:mod:`tools.generate.cascade`), whose
    images are the final ones; the base stage's go to ``outdir/base``."""
    try:
        seeds = parse_seeds(output.seeds)
    except ValueError as e:
        raise GenerateError(str(e), "seeds") from None
    batch = positive_int(output.batch, "batch", "batch")
    setup = prepare_stages(request, sr)
    setup.check_seeds(seeds)
    if setup.prompts is not None:
        setup.prompts.assign(seeds)
    shape = tuple(int(s) for s in getattr(setup.model, "image_shape", setup.model.shape))
    if len(shape) != 3 or shape[0] not in PNG_MODES:
        raise GenerateError(f"cannot write images of shape {list(shape)} as PNG (need [C, H, W], C in 1..4)",
                            "model")
    outdir = given_path(output.outdir, "the output folder", "outdir",
                        ": give a folder (. for the current one)")
    check_writable_dir(outdir, "outdir")
    grid = _check_grid(output.grid, outdir, seeds, bool(output.subdirs), setup.output_dirs)
    check_record(outdir, setup.settings(), output.overwrite)
    for folder in setup.output_dirs:
        _check_layout(outdir / folder, bool(output.subdirs))
    return Plan(request=request, sampling=setup, seeds=seeds, outdir=outdir, batch=batch,
                subdirs=bool(output.subdirs), grid=grid, overwrite=bool(output.overwrite),
                progress=bool(output.progress))

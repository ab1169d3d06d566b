"""The images of an edit (img2img's init image, inpainting's mask) as the model's data, and each batch's
start from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from samplers.editing import Inpainting, img2img_start, paste
from samplers.noise import latent_draws
from tools.common import BadInput, existing_file, given_path, one_line
from tools.images import from_uint8, image_path, read_png

__all__ = ["EditImages", "SeedImages", "edit_start", "load_image", "load_init", "load_mask",
           "load_seed_images", "plain_start", "seed_draws"]


@dataclass(frozen=True)
class SeedImages:
    """Images given per seed: one PNG for every seed (``image``), or a folder of one PNG per seed named as
    ``edm generate`` names them (``folder``, flat or in subfolders; read per batch). Each has ``shape``;
    ``what`` names them in messages ("init image") and ``param`` is the argument that gives them."""

    image: torch.Tensor | None  # [1, C, H, W] for one PNG; None when per seed (a folder)
    folder: Path | None
    shape: tuple[int, ...]
    what: str = "init image"
    param: str = "init_image"
    whose: str = "the model's images"  # what the shape is, in the message of a PNG of another shape
    path: Path | None = None  # as given: the PNG or the folder

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """Every seed's image exists and has the shape (a folder of per-seed images); BadInput if not."""
        if self.folder is None:
            return
        for seed in seeds:
            self.seed_image(seed)

    def seed_image(self, seed: int) -> torch.Tensor:
        """Seed ``seed``'s image as ``[1, C, H, W]`` in [-1, 1]."""
        if self.folder is None:
            return self.image
        for subdirs in (False, True):
            path = image_path(self.folder, seed, subdirs)
            if path.exists():  # a folder of that name is refused as one
                return load_image(existing_file(path, self.what, self.param), self.shape, self.param,
                                  self.whose)
        expected = image_path(self.folder, seed)
        raise BadInput(f"no {self.what} for seed {seed} in {self.folder} (expected {expected}"
                       " as `edm generate` writes them)", self.param)

    def for_seeds(self, seeds: Sequence[int], device, dtype) -> torch.Tensor:
        """The images of ``seeds``, ``[len(seeds), C, H, W]``."""
        if self.image is not None:
            return self.image.to(device=device, dtype=dtype).expand(len(seeds), *self.shape)
        return torch.cat([self.seed_image(s) for s in seeds]).to(device=device, dtype=dtype)


def load_seed_images(path, shape: Sequence[int], what: str, param: str, whose: str = "the model's images",
                     hint: str = "a PNG, or a folder of NNNNNN.png per seed") -> SeedImages:
    """One PNG (read now) or a folder of per-seed PNGs (read per batch) of ``shape``; BadInput if neither."""
    path = given_path(path, what, param)
    if path.is_dir():
        return SeedImages(None, path, tuple(shape), what, param, whose, path)
    if path.is_file():
        return SeedImages(load_image(path, shape, param, whose), None, tuple(shape), what, param, whose, path)
    raise BadInput(f"{what} {path} does not exist (give {hint})", param)


@dataclass(frozen=True)
class EditImages:
    """The init image(s) and mask of an edit, as float tensors in the model's data space."""

    images: SeedImages
    mask: torch.Tensor | None  # [1, 1, H, W] of 0/1 (1: generate)
    strength: float

    @property
    def shape(self) -> tuple[int, ...]:
        """The model's image shape ``(C, H, W)``, which the init images have."""
        return self.images.shape

    @property
    def init(self) -> torch.Tensor | None:
        """``[1, C, H, W]`` for one PNG; None when per seed (a folder)."""
        return self.images.image

    @property
    def folder(self) -> Path | None:
        return self.images.folder

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """Every seed's init image exists and has the model's shape (a folder of per-seed images)."""
        self.images.check_seeds(seeds)

    def init_for(self, seeds: Sequence[int], device, dtype) -> torch.Tensor:
        return self.images.for_seeds(seeds, device, dtype)


def load_image(path: Path, shape: Sequence[int], param: str,
               whose: str = "the model's images") -> torch.Tensor:
    """A PNG as ``[1, C, H, W]`` in [-1, 1]; BadInput unless it has ``shape`` (C, H, W) (``whose``: what has
    that shape, in the message)."""
    try:
        array = read_png(path)
    except ValueError as e:
        raise BadInput(one_line(e), param) from None
    got = (array.shape[2], array.shape[0], array.shape[1])
    if got != tuple(shape):
        raise BadInput(f"{path} is {got[0]}x{got[1]}x{got[2]} (channels x height x width); {whose} "
                       f"are {shape[0]}x{shape[1]}x{shape[2]}", param)
    return from_uint8(array[None])


def load_mask(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """A mask PNG (white = generate, black = keep; a pixel >= 128 in every channel generates) as
    ``[1, 1, H, W]`` of 0/1; BadInput unless its size is the model's."""
    try:
        array = read_png(path)
    except ValueError as e:
        raise BadInput(one_line(e), "mask") from None
    if array.shape[:2] != tuple(shape[1:]):
        raise BadInput(f"mask {path} is {array.shape[0]}x{array.shape[1]}; the model's images are "
                       f"{shape[1]}x{shape[2]}", "mask")
    colour = array[:, :, :3] if array.shape[2] in (3, 4) else array[:, :, :1]
    generate = (colour >= 128).all(axis=2)
    return torch.from_numpy(generate).float()[None, None]


def load_init(path, shape: Sequence[int], strength: float) -> EditImages:
    """``--init-image``: one PNG, or a folder of per-seed PNGs (read per batch); BadInput if neither."""
    images = load_seed_images(path, shape, "init image", "init_image")
    return EditImages(images=images, mask=None, strength=strength)


def seed_draws(seeds: Sequence[int], shape: Sequence[int], count: int, device, dtype) -> list[torch.Tensor]:
    """The first ``count`` float32 standard normal draws of ``shape`` from each seed's latent generator
    (``samplers.noise.latent_draws``), each as a ``[B, *shape]`` batch: a diffusers pipeline called with
    ``torch.Generator().manual_seed(seed)`` draws its VAE posterior sample first and its start noise
    second."""
    return latent_draws(seeds, [shape] * count, device=torch.device(device), dtype=dtype)


def plain_start(denoiser: Callable, latents: torch.Tensor, sigmas: torch.Tensor,
                start_scale: float | None = None):
    """``(x, sigmas, denoiser, finish)`` of a batch that edits nothing: ``start_scale * latents`` (default
    ``sigmas[0]``, EDM's), or the latents themselves at ``sigmas[0] = inf``."""
    if math.isinf(float(sigmas[0])):
        return latents, sigmas, denoiser, lambda x: x
    scale = float(sigmas[0]) if start_scale is None else float(start_scale)
    return latents * scale, sigmas, denoiser, lambda x: x


def edit_start(edit: EditImages, autoencoder, denoiser: Callable, latents: torch.Tensor, sigmas: torch.Tensor,
               seeds: Sequence[int], start_scale: float | None = None):
    """``(x, sigmas, denoiser, finish)`` of a batch that edits ``edit``'s images: img2img's start part-way
    down the schedule, and for inpainting the denoiser that keeps the mask's black region and the finish
    that pastes it. A latent model (``autoencoder``) edits in latent space, as diffusers' pipelines."""
    init = edit.init_for(seeds, latents.device, latents.dtype)
    mask = edit.mask
    start = None
    if autoencoder is not None:  # into latent space, as diffusers' img2img / inpaint pipelines
        posterior, latents = seed_draws(seeds, latents.shape[1:], 2, latents.device, latents.dtype)
        with torch.no_grad():
            init = autoencoder.encode(init, noise=posterior).to(latents.dtype)
        if mask is not None:  # nearest-neighbour downsampling, as the pipelines
            mask = torch.nn.functional.interpolate(mask, size=tuple(latents.shape[2:]))
        # the pipelines blend the known region in after each step, not before the first
        start = float(sigmas[0]) if edit.strength == 1 else None
    x, run = img2img_start(init, latents, sigmas, edit.strength, start_scale)
    if mask is None:
        return x, run, denoiser, lambda out: out
    mask = mask.to(device=latents.device, dtype=latents.dtype)
    if start is None:
        x = torch.where(mask.bool(), x, init + latents * float(run[0]))  # the kept region starts noised
    inpainting = Inpainting(denoiser, init, mask, latents, start=start)
    return x, run, inpainting, lambda out: paste(out, init, mask)

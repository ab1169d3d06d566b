"""Images on disk and in memory: [-1, 1] tensors to uint8 as NVlabs does, atomic PNG writes and grids.

Shared by generation (writing PNGs) and FID (turning samples into the uint8 images a detector sees).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edm.checkpoint import atomic_write

__all__ = ["PNG_MODES", "from_uint8", "grid_shape", "image_layouts", "image_path", "read_png",
           "remove_stale_temporaries", "to_uint8", "write_grid", "write_png"]

PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_TEMP_NAME = re.compile(r"\.(\d+)\.png\..*\.tmp")  # what write_png's temporary files look like
_IMAGE_NAME = re.compile(r"\d{6,}\.png")  # image_path's names (and its subfolders' without .png)


def to_uint8(images) -> np.ndarray:
    """``[B, C, H, W]`` images in [-1, 1] -> uint8 ``[B, H, W, C]``, as NVlabs (x * 127.5 + 128, clip)."""
    import torch

    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_path(outdir, seed: int, subdirs: bool = False) -> Path:
    """``outdir/{seed:06d}.png``, or ``outdir/{seed - seed % 1000:06d}/{seed:06d}.png`` with subdirs."""
    outdir = Path(outdir)
    if subdirs:
        outdir = outdir / f"{seed - seed % 1000:06d}"
    return outdir / f"{seed:06d}.png"


def image_layouts(outdir) -> set[bool]:
    """The layouts of the images already in ``outdir``, as :func:`image_path`'s ``subdirs``: False for
    ``outdir/000042.png``, True for ``outdir/000000/000042.png`` (empty when it holds none)."""
    found = set()
    try:
        entries = list(os.scandir(outdir))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if entry.is_file() and _IMAGE_NAME.fullmatch(entry.name):
            found.add(False)
        elif entry.is_dir() and _IMAGE_NAME.fullmatch(entry.name + ".png") and _holds_image(entry.path):
            found.add(True)
        if len(found) == 2:
            break
    return found


def _holds_image(folder) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.is_file() and _IMAGE_NAME.fullmatch(entry.name) for entry in entries)


def write_png(path, image: np.ndarray) -> None:
    """Write one uint8 ``[H, W, C]`` image to ``path`` atomically (temporary file + rename)."""
    from PIL import Image

    path = Path(path)
    channels = image.shape[2]
    picture = Image.fromarray(image[:, :, 0] if channels == 1 else image, PNG_MODES[channels])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def read_png(path) -> np.ndarray:
    """A PNG as uint8 ``[H, W, C]`` (its own channels: L -> 1, LA -> 2, RGB -> 3, RGBA -> 4; palette
    images are expanded to RGB(A); 16-bit gray is scaled to 8 bits); ValueError (one line) for a file that
    is not a readable image, or a 32-bit integer or floating-point one (no fixed range to scale from)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            array = _pixels(picture, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    return array[:, :, None] if array.ndim == 2 else array


def gray16_to_uint8(picture) -> np.ndarray | None:
    """An open PIL image's 16-bit gray pixels scaled to uint8 ``[H, W]`` (v * 255 / 65535, rounded: PIL's
    convert would clip, 32768 -> 255), or None for an image of another mode."""
    mode = picture.mode
    if mode.startswith("I;16") or (mode == "I" and picture.format == "PNG"):  # a PNG's 16 bits (older PIL: I)
        return np.rint(np.asarray(picture, dtype=np.float64) / 257).astype(np.uint8)
    return None


def _pixels(picture, path) -> np.ndarray:
    """An open PIL image's pixels as uint8 (16-bit gray scaled, see :func:`gray16_to_uint8`)."""
    mode = picture.mode
    scaled = gray16_to_uint8(picture)
    if scaled is not None:
        return scaled
    if mode in ("I", "F"):
        kind = "a 32-bit integer" if mode == "I" else "a floating-point"
        raise ValueError(f"{path} is {kind} image (mode {mode}), whose range is not fixed: save it as an "
                         "8- or 16-bit PNG")
    if mode not in PNG_MODES.values():
        picture = picture.convert("RGBA" if "transparency" in picture.info or "A" in mode
                                  else ("L" if mode == "1" else "RGB"))
    return np.asarray(picture)


def from_uint8(images: np.ndarray):
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, H, W]`` in [-1, 1], the inverse of :func:`to_uint8`
    (``(u - 127.5) / 127.5``, as NVlabs' dataset loader; ``to_uint8`` gives back the same bytes)."""
    import torch

    return (torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() - 127.5) / 127.5


def remove_stale_temporaries(seeds: Sequence[int], outdir: Path, subdirs: bool) -> None:
    """Remove temporary files left by a killed run for these seeds (only this process writes them)."""
    mine = set(seeds)
    folders = {image_path(outdir, s, subdirs).parent for s in seeds}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and int(match.group(1)) in mine:
                Path(entry.path).unlink(missing_ok=True)


def grid_shape(n: int) -> tuple[int, int]:
    """``(rows, cols)`` of a near-square grid for ``n`` images: ``cols = ceil(sqrt(n))``."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def write_grid(paths: Sequence[Path], grid_path, shape: Sequence[int]) -> tuple[int, int]:
    """Tile the PNGs ``paths`` (in order, row by row, empty cells black) into one PNG at ``grid_path``.

    ``shape`` is the images' ``(C, H, W)``. Returns the grid's ``(width, height)`` in pixels.
    """
    from PIL import Image

    channels, height, width = (int(s) for s in shape)
    rows, cols = grid_shape(len(paths))
    canvas = np.zeros((rows * height, cols * width, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            tile = np.asarray(image.convert(PNG_MODES[channels]))
        tile = tile.reshape(height, width, channels)
        r, c = divmod(i, cols)
        canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile
    write_png(grid_path, canvas)
    return cols * width, rows * height

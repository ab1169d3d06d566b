"""Where the images to score come from: one :class:`ImageSource` for folders, zips, arrays, the built-in
digits and images generated in memory.

``open_images(src, num=None, seed=0, batch=64)`` takes

* ``"digits"``: scikit-learn's 8x8 digits (1797 images), mapped to uint8 exactly as the generator maps
  its output (:func:`tools.images.to_uint8`), so generated and real digits share one pixel scale;
* a folder of images (png, jpg, jpeg, webp, bmp; searched recursively, in sorted path order);
* a ``.zip`` archive of such images (sorted member names);
* a ``.npy`` uint8 array or an ``.npz`` holding one (key ``images``, else ``arr_0``, else its first
  array), NHWC or NCHW (told apart by which axis has 1 or 3 channels) or NHW.

All images must have one size. Grayscale images stay 1-channel (unless the set mixes grayscale and
colour: then all become RGB); RGBA loses its alpha. Iterating a source yields uint8 torch tensors
``[B, C, H, W]``. ``num`` selects that many images as NVlabs' ``fid.py`` does (``max_size`` of its
datasets): ``np.random.RandomState(seed % 2**31)`` shuffles the indices, the first ``num`` are kept,
in sorted order. Every problem (missing, empty, unreadable, mixed sizes, too few images) is a
ValueError naming the file.

``ImageSource.from_batches(batches, shape, count)`` wraps images made on the fly (e.g. by a sampler):
nothing is stored, so memory does not grow with ``count``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tools.common import one_line
from tools.images import gray16_to_uint8

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "open_images", "select_indices"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_ARRAY_KEYS = ("images", "arr_0")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def select_indices(count: int, num: int | None = None, seed: int = 0) -> np.ndarray:
    """The indices NVlabs' datasets keep for ``max_size=num, random_seed=seed`` (int64, sorted).

    All ``count`` when ``num`` is None or ``count <= num``; else a seeded shuffle's first ``num``.
    """
    indices = np.arange(count, dtype=np.int64)
    if num is not None and count > num:
        np.random.RandomState(seed % (1 << 31)).shuffle(indices)
        indices = np.sort(indices[:num])
    return indices


def _nchw(array: np.ndarray, where: str) -> np.ndarray:
    """A uint8 image array as ``[N, C, H, W]`` with C in (1, 3): NHWC, NCHW or NHW in.

    The channel axis is the one of size 1 or 3 (the last one when both are: NVlabs' NHWC); 4 channels
    (RGBA) only where no axis has 1 or 3.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images, got {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:  # NHWC when the last axis can be channels (NVlabs' layout), else NCHW
        last, second = array.shape[3], array.shape[1]
        if last in (1, 3) or (last == 4 and second not in (1, 3)):
            array = array.transpose(0, 3, 1, 2)
        elif second not in (1, 3, 4):
            raise ValueError(f"{where}: cannot tell the channel axis of shape {list(array.shape)} "
                             "(need NHWC or NCHW with 1, 3 or 4 channels)")
    else:
        raise ValueError(f"{where}: expected images [N, H, W, C], [N, C, H, W] or [N, H, W], "
                         f"got shape {list(array.shape)}")
    if array.shape[1] == 4:  # RGBA -> RGB
        array = array[:, :3]
    return array


class ImageSource:
    """A sequence of same-sized uint8 images, read in batches of ``batch``.

    ``len(source)`` is the number of images (after selection), ``source.shape`` their ``(C, H, W)``,
    ``source.name`` a description. Iterating yields uint8 ``[B, C, H, W]`` tensors. ``shard(rank, world)``
    is the part one of ``world`` processes reads (every ``world``-th image).
    """

    def __init__(self, name: str, shape: Sequence[int], indices: np.ndarray | None,
                 read: Callable[[np.ndarray], np.ndarray] | None, *, batch: int = 64,
                 batches: Iterable | None = None, count: int | None = None):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.batch = int(batch)
        self._indices = indices
        self._read = read  # indices -> uint8 [B, C, H, W]
        self._batches = batches
        self._count = len(indices) if indices is not None else (None if count is None else int(count))

    @classmethod
    def from_batches(cls, batches: Iterable, shape: Sequence[int], count: int | None,
                     name: str = "images") -> ImageSource:
        """Images made on the fly: ``batches`` yields uint8 ``[B, C, H, W]`` tensors or ``[B, H, W, C]``
        numpy arrays (as :func:`tools.images.to_uint8` returns), ``count`` images of ``shape`` in all
        (None: as many as come).

        It can be iterated once (when ``batches`` is a generator); a batch of the wrong shape, or a total
        other than ``count``, raises ValueError.
        """
        return cls(name, shape, None, None, batches=batches, count=count)

    @property
    def count(self) -> int | None:
        """The number of images, or None for batches of unknown number."""
        return self._count

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError(f"{self.name}: the number of images is not known before they are read")
        return self._count

    def __repr__(self) -> str:
        count = "?" if self._count is None else self._count
        return f"ImageSource({self.name!r}, {count} images of {list(self.shape)})"

    @property
    def indices(self) -> np.ndarray | None:
        """The selected indices into the underlying images (None for in-memory batches)."""
        return self._indices

    def shard(self, rank: int, world: int) -> ImageSource:
        """This process's share: images ``rank, rank + world, ...`` of the selection."""
        if world == 1:
            return self
        if self._indices is None:
            raise ValueError("in-memory batches cannot be sharded; split what makes them instead")
        return ImageSource(f"{self.name} (part {rank} of {world})", self.shape, self._indices[rank::world],
                           self._read, batch=self.batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._indices is None:
            yield from self._iter_batches()
            return
        for start in range(0, len(self._indices), self.batch):
            chunk = self._read(self._indices[start:start + self.batch])
            yield torch.from_numpy(np.ascontiguousarray(chunk))

    def _iter_batches(self) -> Iterator[torch.Tensor]:
        seen = 0
        for item in self._batches:
            if isinstance(item, np.ndarray):
                if item.ndim == 4 and item.shape[1:] == (self.shape[1], self.shape[2], self.shape[0]):
                    item = item.transpose(0, 3, 1, 2)
                item = torch.from_numpy(np.ascontiguousarray(item))
            if not isinstance(item, torch.Tensor) or item.dtype != torch.uint8 or item.ndim != 4 \
                    or tuple(item.shape[1:]) != self.shape:
                got = f"{item.dtype} {list(item.shape)}" if hasattr(item, "shape") else type(item).__name__
                want = ", ".join(map(str, self.shape))
                raise ValueError(f"{self.name}: expected uint8 batches of [B, {want}], got {got}")
            seen += item.shape[0]
            yield item
        if self._count is not None and seen != self._count:
            raise ValueError(f"{self.name}: expected {self._count} images, got {seen}")


# ---------------------------------------------------------------------------------------------------
# Files of images


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES


class _ImageFiles:
    """Image files read by ``opener(name)`` (a folder's paths or a zip's members)."""

    def __init__(self, names: list[str], opener: Callable[[str], object], describe: Callable[[str], str]):
        from PIL import Image

        self.names, self.opener, self.describe = names, opener, describe
        size, first, gray = None, None, True
        for name in names:  # headers only: cheap, and catches mixed sizes before any work
            try:
                with opener(name) as f, Image.open(f) as image:
                    image_size, mode = image.size, image.mode
            except (OSError, ValueError, SyntaxError, zipfile.BadZipFile) as e:
                raise ValueError(f"cannot read image {describe(name)}: {one_line(e)}") from None
            if size is None:
                size, first = image_size, name
            elif image_size != size:
                raise ValueError(f"images of different sizes: {describe(name)} is "
                                 f"{image_size[0]}x{image_size[1]}, {describe(first)} is {size[0]}x{size[1]}")
            gray = gray and _is_gray(mode)
        self.mode = "L" if gray else "RGB"
        self.shape = (1 if gray else 3, size[1], size[0])

    def read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for i, index in enumerate(indices):
            name = self.names[int(index)]
            try:
                with self.opener(name) as f, Image.open(f) as image:
                    pixels = self._pixels(image)
            except (OSError, ValueError, SyntaxError, zipfile.BadZipFile) as e:
                raise ValueError(f"cannot read image {self.describe(name)}: {one_line(e)}") from None
            out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return out

    def _pixels(self, image) -> np.ndarray:
        """One image's uint8 pixels in this source's mode: 16-bit gray scaled as ``edm generate`` reads it."""
        scaled = gray16_to_uint8(image)
        if scaled is not None:
            return scaled if self.mode == "L" else np.repeat(scaled[:, :, None], 3, axis=2)
        if image.mode in ("I", "F"):  # 32-bit integer or float: no fixed range to scale from
            raise ValueError(f"unsupported image mode {image.mode} (need 8- or 16-bit images)")
        if image.mode in ("RGBA", "LA", "PA", "P") and self.mode == "RGB":
            image = image.convert("RGBA")
        return np.asarray(image.convert(self.mode))


def _folder(path: Path) -> tuple[list[str], Callable, Callable]:
    names = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise ValueError(f"no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    return names, (lambda name: open(path / name, "rb")), (lambda name: str(path / name))


def _zip(path: Path) -> tuple[list[str], Callable, Callable]:
    try:
        archive = zipfile.ZipFile(path)
        names = sorted(info.filename for info in archive.infolist()
                       if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read zip archive {path}: {one_line(e)}") from None
    if not names:
        raise ValueError(f"no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")

    def opener(name):  # decoded from bytes, so a bad member fails with the member's name
        return io.BytesIO(archive.read(name))

    return names, opener, (lambda name: f"{path}:{name}")


def _array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                if not keys:
                    raise ValueError("it holds no arrays")
                key = next((k for k in _ARRAY_KEYS if k in keys), keys[0])
                array = data[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"cannot read images from {path}: {one_line(e)}") from None
    array = _nchw(array, str(path))
    if len(array) == 0:
        raise ValueError(f"no images in {path}")
    return array


def _digits() -> np.ndarray:
    from edm.data import load_digits
    from tools.images import to_uint8

    return to_uint8(load_digits().images).transpose(0, 3, 1, 2)


def open_images(src, *, num: int | None = None, seed: int = 0, batch: int = 64) -> ImageSource:
    """An :class:`ImageSource` over ``src`` (see the module docstring); ``num`` images chosen by ``seed``."""
    if num is not None and (isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1):
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if isinstance(src, np.ndarray):
        array, name = _nchw(src, "the array"), "array"
    elif isinstance(src, str) and src == "digits":
        array, name = _digits(), "digits"
    else:
        path = Path(src).expanduser()
        name = str(path)
        if not path.exists():
            raise ValueError(f"{path} not found (give 'digits', a folder or zip of images, or a .npz/.npy)")
        array = None
        if path.is_dir():
            files = _ImageFiles(*_folder(path))
        elif path.suffix.lower() == ".zip":
            files = _ImageFiles(*_zip(path))
        elif path.suffix.lower() in (".npz", ".npy"):
            array = _array(path)
        else:
            raise ValueError(f"unsupported image source {path}: expected a folder, a .zip, a .npz or a .npy")
    if array is not None:
        count, shape = len(array), array.shape[1:]
        read = array.__getitem__
    else:
        count, shape, read = len(files.names), files.shape, files.read
    if num is not None and count < num:
        raise ValueError(f"found {count} images in {name}, but --num asks for {num}")
    return ImageSource(name, shape, select_indices(count, num, seed), read, batch=batch)

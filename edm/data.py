"""Training data sets as tensors: images float32 ``[N, C, H, W]`` in [-1, 1], labels int64 ``[N]`` or None.

``load_dataset(spec)`` takes

* ``"digits"``: scikit-learn's 8x8 handwritten digits (1797 images, 1 channel, 10 classes), pixel
  values ``0..16`` mapped by ``x / 8 - 1``; ``"digits-train"`` its first :data:`DIGITS_TRAIN` images
  (``load_digits()`` order) and ``"digits-held-out"`` the rest, the split the models trained for
  super-resolution keep; ``"digits-4x4-train"`` / ``"digits-4x4-held-out"`` the same images average-pooled
  2x to 4x4;
* a folder of images (png, jpg, jpeg, bmp, gif, webp, tif, tiff; searched recursively), all of one
  size; grayscale when every image is, else RGB; when every image sits inside a first-level
  subfolder, the sorted subfolder names are the classes;
* an ``.npz`` / ``.npy`` file of uint8 images, NHWC or NCHW (or NHW for grayscale); an ``.npz`` holds
  the images under ``images`` (or ``x``, ``arr_0``, or its only array) and optional labels under
  ``labels`` (or ``y``).

Missing, empty or inconsistent input raises ValueError naming the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "load_dataset", "register_dataset", "load_digits", "load_image_folder", "load_array",
           "IMAGE_SUFFIXES", "DIGITS_TRAIN", "subset", "pooled", "named_datasets"]

#: digits with index < DIGITS_TRAIN (``load_digits()`` order) train the split models; the rest is held out
DIGITS_TRAIN = 1400

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGE_KEYS = ("images", "x", "arr_0")
_LABEL_KEYS = ("labels", "y")


@dataclass
class Dataset:
    """``images`` float32 ``[N, C, H, W]`` in [-1, 1]; ``labels`` int64 ``[N]`` or None."""

    images: Tensor
    labels: Tensor | None
    num_classes: int
    name: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def std(self) -> float:
        """Standard deviation of all pixel values (a natural ``sigma_data``)."""
        return float(self.images.double().std())

    def one_hot(self, index: Tensor) -> Tensor | None:
        """Float one-hot labels of the samples ``index``, or None for an unlabelled set."""
        if self.labels is None or not self.num_classes:
            return None
        return torch.nn.functional.one_hot(self.labels[index], self.num_classes).to(self.images.dtype)


def load_dataset(spec) -> Dataset:
    """A named dataset (``"digits"``; ``"digits-text"``, strings rendered on the fly, once
    :mod:`edm.digits_text` is imported, as :mod:`edm.train` does), or the folder / ``.npz`` / ``.npy`` at
    the path ``spec``."""
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"dataset not found: {path} (give 'digits', an image folder, or a .npz/.npy file)")
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() in (".npz", ".npy"):
        return load_array(path)
    raise ValueError(f"unsupported dataset file {path}: expected a folder of images or a .npz/.npy array")


_NAMED: dict[str, Callable[[], Dataset]] = {}


def register_dataset(name: str):
    """Decorator: ``@register_dataset("name")`` makes a loader (no arguments) loadable by name."""

    def decorate(loader):
        if name in _NAMED:
            raise ValueError(f"dataset {name!r} is already registered")
        _NAMED[name] = loader
        return loader

    return decorate


@register_dataset("digits")
def load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:  # pragma: no cover - scikit-learn ships with the test extra
        raise ValueError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)") from None
    digits = sklearn_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return Dataset(images, labels, 10, "digits", [str(i) for i in range(10)])


def subset(dataset: Dataset, index: slice, name: str) -> Dataset:
    """The samples ``index`` of ``dataset``, called ``name``."""
    labels = None if dataset.labels is None else dataset.labels[index]
    return Dataset(dataset.images[index], labels, dataset.num_classes, name, dataset.class_names)


def pooled(dataset: Dataset, factor: int, name: str) -> Dataset:
    """``dataset`` with its images average-pooled ``factor`` x ``factor`` (the low-resolution versions a
    super-resolution model is conditioned on), called ``name``."""
    images = torch.nn.functional.avg_pool2d(dataset.images, factor)
    return Dataset(images, dataset.labels, dataset.num_classes, name, dataset.class_names)


def _register_split(name: str, part: slice, factor: int = 1) -> None:
    def loader() -> Dataset:
        data = subset(load_digits(), part, name)
        return pooled(data, factor, name) if factor > 1 else data

    register_dataset(name)(loader)


_register_split("digits-train", slice(0, DIGITS_TRAIN))
_register_split("digits-held-out", slice(DIGITS_TRAIN, None))
_register_split("digits-4x4-train", slice(0, DIGITS_TRAIN), 2)
_register_split("digits-4x4-held-out", slice(DIGITS_TRAIN, None), 2)


def named_datasets() -> list[str]:
    """The datasets loadable by name, sorted."""
    return sorted(_NAMED)


def _uint8_to_float(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32) / 127.5 - 1.0


def load_image_folder(root) -> Dataset:
    from PIL import Image

    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    pictures = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                pictures.append(image.copy())
        except OSError as e:
            raise ValueError(f"cannot read image {file}: {e}") from None
    size = pictures[0].size
    for file, picture in zip(files, pictures):
        if picture.size != size:
            raise ValueError(f"image {file} is {picture.size[0]}x{picture.size[1]}, but {files[0]} is "
                             f"{size[0]}x{size[1]}: all images must have the same size")
    gray = all(p.mode in ("1", "L", "I", "I;16", "F") for p in pictures)
    mode = "L" if gray else "RGB"
    arrays = np.stack([np.asarray(p.convert(mode), dtype=np.uint8) for p in pictures])
    if gray:
        arrays = arrays[:, :, :, None]
    images = _uint8_to_float(arrays.transpose(0, 3, 1, 2))

    parts = [f.relative_to(root).parts for f in files]
    labels, num_classes, class_names = None, 0, None
    if all(len(p) >= 2 for p in parts):
        class_names = sorted({p[0] for p in parts})
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[p[0]] for p in parts], dtype=torch.int64)
        num_classes = len(class_names)
    return Dataset(images, labels, num_classes, str(root), class_names)


def _to_nchw(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(f"images in {path} have shape {array.shape}; expected [N, H, W], NHWC or NCHW")
    last, first = array.shape[-1] in (1, 3, 4), array.shape[1] in (1, 3, 4)
    if last and (not first or array.shape[-1] <= array.shape[1]):  # ambiguous: the smaller axis
        return array.transpose(0, 3, 1, 2)
    if first:
        return array
    raise ValueError(f"images in {path} have shape {array.shape}: cannot tell the channel axis "
                     "(expected 1, 3 or 4 channels first or last)")


def load_array(path) -> Dataset:
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arrays = {"images": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.keys()}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    keys = list(arrays)
    key = next((k for k in _IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        raise ValueError(f"{path} has no image array: expected a key among "
                         f"{', '.join(_IMAGE_KEYS)} (found {', '.join(keys) or 'none'})")
    images = arrays[key]
    labels = next((arrays[k] for k in _LABEL_KEYS if k in keys), None)
    if images.dtype != np.uint8:
        raise ValueError(f"images in {path} are {images.dtype}; expected uint8 pixel values 0..255")
    if images.shape[0] == 0 or images.size == 0:
        raise ValueError(f"{path} holds no images")
    images = _uint8_to_float(_to_nchw(images, path))
    num_classes = 0
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels in {path} must be {images.shape[0]} integers, got {labels.dtype} "
                             f"{labels.shape}")
        if labels.min() < 0:
            raise ValueError(f"labels in {path} must be >= 0")
        num_classes = int(labels.max()) + 1
        labels = torch.from_numpy(labels.astype(np.int64))
    return Dataset(images, labels, num_classes, str(path))

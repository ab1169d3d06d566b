"""Scoring images as a library call: ``score(source, ref)`` -> ``{"fd_digits": ..., ...}``, and reference
statistics: ``make_reference(data, dest)``. The ``edm fid`` commands and ``edm bench`` are thin layers over
these.

* ``source``: an image source for :func:`tools.fid.sources.open_images` (``"digits"``, a folder, a
  ``.zip``, a ``.npz``/``.npy``), a uint8 array of images (NHWC or NCHW), an
  :class:`~tools.fid.sources.ImageSource`, or any iterable of uint8 image batches (``[B, C, H, W]`` tensors
  or ``[B, H, W, C]`` arrays, e.g. generated on the fly; under torchrun, this rank's share).
* ``ref``: ``"digits"`` (the shipped statistics, or the dataset itself when features are needed), a
  statistics ``.npz`` (``mu``, ``sigma`` as NVlabs' ``fid.py`` writes them), statistics given directly as
  ``(mu, sigma)`` or ``{"mu": ..., "sigma": ...}``, or any image source as above (every metric).
* ``metrics``: ``fd`` (the Frechet distance, reported as ``fd_<detector>``, and as ``fid`` too with the
  Inception detector), ``kid`` and ``pr`` (precision/recall; both need the reference's images).

Bad arguments raise :class:`FidError` (a :class:`tools.common.BadInput` naming the argument); problems
found while reading the images raise ValueError; missing detector weights raise
:class:`tools.fid.detectors.DetectorWeightsMissing`, whose message says which file to fetch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.common import BadInput, check_writable_file, one_line
from tools.device import resolve_device
from tools.ranks import Ranks, one_process

from . import MIN_IMAGES, TOO_FEW
from .detectors import DetectorWeightsMissing, get_detector
from .frechet import frechet_distance, kid, precision_recall
from .sources import ImageSource, open_images
from .stats import FeatureStats, compute_statistics, load_ref, load_ref_metadata, save_ref

__all__ = ["DETECTORS", "METRICS", "FidError", "Reference", "fd_reference", "make_reference",
           "open_reference", "parse_metrics", "score", "shipped_ref"]

REFS = Path(__file__).resolve().parent / "refs"
METRICS = ("fd", "kid", "pr")
FEATURE_METRICS = ("kid", "pr")
DETECTORS = ("digits", "inception")
_ALIASES = {"fid": "fd"}
_KEEP_ALL = 1 << 40  # keep every feature row (KID, precision/recall) of a source of unknown length


class FidError(BadInput):
    """Bad input to the scoring library; ``param`` names the argument (``ref``, ``detector``, ...)."""


def shipped_ref(name: str) -> Path | None:
    """The shipped reference statistics called ``name`` (``refs/NAME.npz``), or None."""
    path = REFS / f"{name}.npz"
    return path if path.is_file() else None


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fd,kid"`` or a list -> the metrics, without repeats; ``fid`` is another name for ``fd``."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [_ALIASES.get(m.strip().lower(), m.strip().lower()) for m in items if str(m).strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        what = ", ".join(unknown) or repr(metrics)
        raise FidError(f"unknown metric {what}; valid: fid (or fd), kid, pr", "metrics")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------
# Sources


def as_source(source, *, param: str, num: int | None = None, seed: int = 0, batch: int = 64) -> ImageSource:
    """Any accepted ``source`` as an :class:`ImageSource` (see the module docstring)."""
    if isinstance(source, ImageSource):
        return source
    if isinstance(source, (str, os.PathLike, np.ndarray)):
        try:
            opened = open_images(source, num=num, seed=seed, batch=batch)
        except ValueError as e:
            raise FidError(one_line(e), param) from None
        if opened.count < MIN_IMAGES:  # found now, not after the detector has read it
            raise FidError(f"{opened.name} holds only {opened.count} image: {TOO_FEW}", param)
        return opened
    if isinstance(source, Iterable):
        if num is not None:
            raise FidError("num selects from a stored set of images; a stream of batches is used whole",
                           "num")
        return _stream(iter(source), param, batch)
    raise FidError(f"{param}: expected an image source, an array or batches of images, got "
                   f"{type(source).__name__}", param)


def _stream(batches, param: str, batch: int) -> ImageSource:
    """Batches of images of unknown number: the first one tells their shape."""
    first = next(batches, None)
    if first is None:
        raise FidError(f"{param}: no images", param)
    if isinstance(first, np.ndarray) and first.ndim == 4:  # arrays are NHWC, as to_uint8 returns them
        shape = (first.shape[3], first.shape[1], first.shape[2])
    else:  # tensors are NCHW
        shape = tuple(first.shape[1:])

    def chained():
        yield first
        yield from batches

    source = ImageSource.from_batches(chained(), shape, None, name="batches")
    source.batch = batch
    return source


# ---------------------------------------------------------------------------------------------------
# The reference and the detector


@dataclass
class Reference:
    """``ref`` resolved: statistics (``mu``, ``sigma`` and their metadata) or a source of images."""

    name: str
    stats: tuple[np.ndarray, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: ImageSource | None = None


def _load_stats(path: Path) -> Reference:
    try:
        mu, sigma = load_ref(path)
    except (ValueError, OSError, KeyError) as e:
        raise FidError(f"{path}: {one_line(e)}", "ref") from None
    try:
        meta = load_ref_metadata(path) or {}
    except (ValueError, OSError, KeyError):
        meta = {}
    return Reference(name=str(path), stats=(mu, sigma), meta=dict(meta))


def _npz_has_stats(path: Path) -> bool | None:
    """True: keys mu and sigma; False: an array of uint8 images; None: neither (or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.keys())
            if {"mu", "sigma"} <= keys:
                return True
            return any(data[k].dtype == np.uint8 and data[k].ndim in (3, 4) for k in keys)  # images
    except Exception:  # a broken file: load_ref names the problem
        return None


def resolve_ref(ref, need_features: bool, detector: str | None, *, batch: int = 64) -> Reference:
    """``ref`` (see the module docstring) as a :class:`Reference`; FidError naming ``ref`` when it cannot
    be."""
    no_images = ("holds statistics (mu, sigma) only: KID and precision/recall need the reference images; "
                 "give an image source as ref")
    if isinstance(ref, Reference):
        return ref
    if isinstance(ref, Mapping) or (isinstance(ref, tuple) and len(ref) == 2):
        mu, sigma = (ref["mu"], ref["sigma"]) if isinstance(ref, Mapping) else ref
        if need_features:
            raise FidError(f"the given statistics {no_images}", "ref")
        meta = dict(ref.get("meta") or {}) if isinstance(ref, Mapping) else {}
        return Reference(name="statistics", stats=(np.asarray(mu, np.float64), np.asarray(sigma, np.float64)),
                         meta=meta)
    if isinstance(ref, str) and ref == "digits":
        shipped = shipped_ref("digits")
        if shipped is not None and not need_features and detector in (None, "digits"):
            return _load_stats(shipped)
        return Reference(name="digits", source=as_source("digits", param="ref", batch=batch))
    if isinstance(ref, (str, os.PathLike)):
        path = Path(ref).expanduser()
        if path.suffix.lower() == ".npz" and path.is_file() and _npz_has_stats(path) is not False:
            found = _load_stats(path)  # statistics, or a file that is neither: load_ref says what is wrong
            if need_features:
                raise FidError(f"{path} {no_images}", "ref")
            return found
        return Reference(name=str(path), source=as_source(ref, param="ref", batch=batch))
    return Reference(name=type(ref).__name__, source=as_source(ref, param="ref", batch=batch))


def open_reference(ref, metrics: str | Sequence[str] = ("fd",), *, detector=None,
                   batch: int = 64) -> Reference:
    """``ref`` checked as far as it can be without the images it scores (a missing or unreadable file, too
    few images, statistics where ``metrics`` need images): for a caller that checks it before making them,
    and passes the result to :func:`score`."""
    need_features = any(m in FEATURE_METRICS for m in parse_metrics(metrics))
    return resolve_ref(ref, need_features, getattr(detector, "name", detector), batch=batch)


def default_detector(meta: Mapping | None, shape) -> str:
    """The reference's detector when it names one, else ``digits`` for 1x8x8 images, else ``inception``."""
    if meta and meta.get("detector") in DETECTORS:
        return meta["detector"]
    return "digits" if tuple(shape) == (1, 8, 8) else "inception"


def load_detector(name, weights, device, shape):
    """The detector ``name`` (or a detector already loaded, reused as it is), checked once on a blank batch
    of ``shape`` (a wrong image size fails here)."""
    if not isinstance(name, str):
        detector = name
    elif name not in DETECTORS:
        raise FidError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}", "detector")
    else:
        try:
            detector = get_detector(name, device=device, weights=weights)
        except DetectorWeightsMissing:
            raise
        except ValueError as e:
            raise FidError(one_line(e), "detector_weights" if weights else "detector") from None
    try:
        detector(torch.zeros((1, *shape), dtype=torch.uint8))
    except (ValueError, RuntimeError) as e:
        raise FidError(f"{one_line(e)} (images are {list(shape)})", "detector") from None
    return detector


def _check_against(ref: Reference, detector, shape) -> None:
    if ref.stats is None:  # images: _reference_and_detector checked their shape
        return
    made = ref.meta.get("detector")
    if made and made != detector.name:
        raise FidError(f"{ref.name} was made with detector {made!r}, not {detector.name!r}", "detector")
    mu, sigma = ref.stats
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FidError(f"{ref.name}: mu {list(mu.shape)} and sigma {list(sigma.shape)} do not match", "ref")
    if mu.shape[0] != detector.dim:
        made = f" (made with detector {made!r})" if made else ""
        raise FidError(f"{ref.name} has {mu.shape[0]}-d features{made}, detector {detector.name!r} gives "
                       f"{detector.dim}-d: use the same detector as the reference", "ref")


def statistics(source: ImageSource, detector, device, ranks: Ranks, *, keep: bool,
               progress: bool = False) -> FeatureStats:
    """Feature statistics of this rank's share of ``source``, summed over ranks."""
    if source.indices is not None:
        mine = source.shard(ranks.rank, ranks.world)
        count = len(mine)
    else:  # made on the fly: already this rank's share
        mine, count = source, source.count
    keep_rows = (source.count or _KEEP_ALL) if keep else 0
    total = None if count is None else math.ceil(count / source.batch)  # batches, for the bar
    return compute_statistics(iter(mine), detector, device=device, keep=keep_rows,
                              progress=progress and ranks.rank == 0, total=total)


def _reference_and_detector(ref, shape, need_features: bool, detector, detector_weights, device,
                            batch: int) -> tuple[Reference, Any]:
    """``ref`` resolved for images of ``shape`` and the detector they are compared by, both checked: an
    image reference's shape before the detector is loaded (a wrong size fails fast), statistics after."""
    found = resolve_ref(ref, need_features, getattr(detector, "name", detector), batch=batch)
    if found.source is not None and tuple(found.source.shape) != tuple(shape):
        raise FidError(f"{found.name} holds {list(found.source.shape)} images, the images are {list(shape)}",
                       "ref")
    name = detector or default_detector(found.meta, shape)
    try:
        det = load_detector(name, detector_weights, device, shape)
    except FidError as e:
        if detector is not None or e.param != "detector":
            raise
        raise _unfit_detector(found, name, shape, e) from None
    _check_against(found, det, shape)
    return found, det


def _unfit_detector(found: Reference, name: str, shape, error: FidError) -> FidError:
    """The error of a detector that was not asked for and does not take the images: the reference's (it
    names ``ref``, and what would fit) or the images' own default (it names none)."""
    if found.meta.get("detector") != name:
        return FidError(one_line(error))
    fits = default_detector(None, shape)
    instead = f", or their statistics under the {fits!r} detector" if fits != name else ""
    return FidError(f"{found.name} holds statistics of the {name!r} detector, which does not take these "
                    f"{list(shape)} images: give a reference of such images{instead}", "ref")


# ---------------------------------------------------------------------------------------------------
# The calls


def score(source, ref, metrics: str | Sequence[str] = ("fd",), *, detector=None,  # noqa: PLR0913 (public)
          detector_weights=None, device=None, batch: int = 64, num: int | None = None, seed: int = 0,
          ranks: Ranks | None = None, progress: bool = False) -> dict[str, Any]:
    """Score the images of ``source`` against ``ref`` (see the module docstring).

    Returns ``{"fd_<detector>": ..., ["fid": ...,] ["kid": ..., "precision": ..., "recall": ...,]
    "detector": name, "ref": name, "num": images scored}``. ``num``/``seed`` pick ``num`` images of a stored
    source as NVlabs' ``fid.py`` does. ``detector`` defaults to the reference's, else ``digits`` for 1x8x8
    images, else ``inception``; a detector already loaded (e.g. by :func:`fd_reference`) is reused as it
    is. Under torchrun, pass ``ranks`` (started): each rank reads its share and
    the statistics are summed; every rank gets the result.
    """
    metrics = parse_metrics(metrics)
    need_features = any(m in FEATURE_METRICS for m in metrics)
    device = resolve_device(device)
    source = as_source(source, param="source", num=num, seed=seed, batch=batch)
    found, det = _reference_and_detector(ref, source.shape, need_features, detector, detector_weights, device,
                                         batch)
    ranks = ranks or one_process()
    ref_stats = None
    if found.source is not None:
        ref_stats = statistics(found.source, det, device, ranks, keep=need_features, progress=progress)
    stats = statistics(source, det, device, ranks, keep=need_features, progress=progress)
    mu, sigma = stats.mean_cov()
    mu_ref, sigma_ref = found.stats if ref_stats is None else ref_stats.mean_cov()
    result: dict[str, Any] = {}
    if "fd" in metrics:
        fd = float(frechet_distance(mu, sigma, mu_ref, sigma_ref))
        result[f"fd_{det.name}"] = fd
        if det.name == "inception":
            result["fid"] = fd
    if "kid" in metrics:
        result["kid"] = float(kid(stats.features(), ref_stats.features()))
    if "pr" in metrics:
        precision, recall = precision_recall(ref_stats.features(), stats.features())
        result["precision"], result["recall"] = float(precision), float(recall)
    return {**result, "detector": det.name, "ref": found.name, "num": stats.count}


def fd_reference(ref, shape: Sequence[int], *, detector: str | None = None, detector_weights=None,
                 device="cpu", batch: int = 64, progress: bool = False):
    """What images of ``shape`` are scored against by FD: ``(detector, mu, sigma, name)``, checked.

    For callers that compute their images' statistics themselves (``edm bench``). One process: an image
    reference is read whole.
    """
    device = resolve_device(device)
    found, det = _reference_and_detector(ref, shape, False, detector, detector_weights, device, batch)
    if found.stats is not None:
        mu, sigma = found.stats
    else:
        mu, sigma = statistics(found.source, det, device, one_process(), keep=False,
                               progress=progress).mean_cov()
    return det, mu, sigma, found.name


def make_reference(data, dest=None, *, detector: str | None = None,  # noqa: PLR0913 (public)
                   detector_weights=None, device=None, batch: int = 64, num: int | None = None, seed: int = 0,
                   ranks: Ranks | None = None, progress: bool = False) -> dict[str, Any]:
    """Reference statistics of the images ``data``: written to ``dest`` (NVlabs' ``mu``, ``sigma`` plus
    metadata, atomically, on rank 0) when given, and returned as ``{"mu", "sigma", "meta"}``.

    ``dest`` is checked before any work: its folder is created if missing and must be writable.
    """
    if dest is not None:
        dest = check_writable_file(dest, "dest", example="ref.npz")
    device = resolve_device(device)
    source = as_source(data, param="data", num=num, seed=seed, batch=batch)
    name = detector or default_detector(None, source.shape)
    det = load_detector(name, detector_weights, device, source.shape)
    ranks = ranks or one_process()
    stats = statistics(source, det, device, ranks, keep=False, progress=progress)
    mu, sigma = stats.mean_cov()
    meta = dict(detector=name, dim=int(det.dim), num=stats.count, source=source.name,
                seed=seed if num is not None else None)
    meta = {k: v for k, v in meta.items() if v is not None}
    if dest is not None and ranks.rank == 0:
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_ref(dest, mu, sigma, **meta)
    return {"mu": mu, "sigma": sigma, "meta": meta}

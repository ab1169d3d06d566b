"""FID / FD evaluation: detectors, feature statistics, Frechet distance, KID, precision/recall.

Core numerics live in :mod:`tools.fid.frechet` (distances) and :mod:`tools.fid.stats` (streaming
statistics, reference files). Detectors (:mod:`tools.fid.detectors`) and image sources
(:mod:`tools.fid.sources`) are imported lazily, on first access of their names.
"""

from __future__ import annotations

import importlib

from tools.fid.frechet import frechet_distance, kid, precision_recall
from tools.fid.stats import FeatureStats, compute_statistics, load_ref, load_ref_metadata, save_ref

_LAZY = {
    "get_detector": "tools.fid.detectors",
    "list_detectors": "tools.fid.detectors",
    "open_images": "tools.fid.sources",
}

__all__ = [
    "FeatureStats",
    "compute_statistics",
    "frechet_distance",
    "get_detector",
    "kid",
    "list_detectors",
    "load_ref",
    "load_ref_metadata",
    "open_images",
    "precision_recall",
    "save_ref",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

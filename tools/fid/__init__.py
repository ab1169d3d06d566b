"""FID / FD evaluation: ``score(source, ref)`` and ``make_reference(data, dest)`` (:mod:`tools.fid.scoring`),
detectors, streaming feature statistics, the Frechet distance, KID and precision/recall.

Core numerics live in :mod:`tools.fid.frechet` (distances) and :mod:`tools.fid.stats` (streaming
statistics, reference files); detectors in :mod:`tools.fid.detectors`, image sources in
:mod:`tools.fid.sources`; the ``edm fid`` commands in :mod:`tools.fid.cli`. Names are imported on first
use, so the CLI starts without torch.
"""

from tools.common import lazy_exports

KID_NOTE = ("KID is the unbiased MMD^2 with kernel (x.y/d + 1)^3 on the detector's features: its scale "
            "grows up to the 6th power of the feature scale, so values compare only within one detector, "
            "and it averages 0 for sets from one distribution, so small negative values mean "
            "indistinguishable at this sample size.")

#: the fewest images a set or an image reference may have: a covariance of fewer is undefined
MIN_IMAGES = 2
TOO_FEW = f"FD needs at least {MIN_IMAGES} images (a covariance of fewer is undefined)"

_EXPORTS = {
    "FidError": ".scoring", "Reference": ".scoring", "fd_reference": ".scoring", "make_reference": ".scoring",
    "score": ".scoring", "shipped_ref": ".scoring", "open_reference": ".scoring",
    "frechet_distance": ".frechet", "kid": ".frechet", "precision_recall": ".frechet",
    "FeatureStats": ".stats", "compute_statistics": ".stats", "load_ref": ".stats",
    "load_ref_metadata": ".stats", "save_ref": ".stats",
    "get_detector": ".detectors", "list_detectors": ".detectors",
    "ImageSource": ".sources", "open_images": ".sources",
}
__all__ = sorted([*_EXPORTS, "KID_NOTE", "MIN_IMAGES", "TOO_FEW"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

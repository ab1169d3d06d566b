"""Streaming feature statistics (mean / covariance), reduced across ranks, and reference ``.npz`` files.

``FeatureStats`` accumulates, in float64 on the features' device, the count, the sum and the sum of outer
products of the features *shifted by the mean of the first batch* (the shifted-data algorithm: the same
sums as the textbook ``sum x``, ``sum x x^T`` but without the cancellation in
``sum x x^T - n mu mu^T`` when the mean is large against the spread). ``reduce()`` brings every rank's
sums to one common shift and all-reduces them.

Reference files are NVlabs ``fid.py``'s format: an ``.npz`` with ``mu`` ``[dim]`` and ``sigma``
``[dim, dim]``, plus (ours only) metadata as 0-d arrays; either tool reads the other's files.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from numpy.lib.npyio import NpzFile

from edm.checkpoint import atomic_write
from tools.common import one_line

__all__ = ["FeatureStats", "compute_statistics", "load_ref", "load_ref_metadata", "save_ref"]


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class FeatureStats:
    """Streaming float64 mean and covariance of ``dim``-dimensional features.

    ``update(features)`` takes ``[B, dim]`` tensors (any float dtype, any device; accumulation is float64
    on that device). The first ``keep`` rows are also kept (on CPU, in their own dtype) for KID and
    precision/recall. ``reduce()`` sums everything over the ranks of an initialised
    ``torch.distributed`` process group (no-op otherwise); ``mean_cov()`` gives numpy float64
    ``(mu, sigma)`` with the unbiased covariance, as ``np.cov(features, rowvar=False)``.
    """

    def __init__(self, dim: int, keep: int = 0, *, device=None):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if int(keep) < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.dim = int(dim)
        self.keep = int(keep)
        self._device = torch.device(device) if device is not None else None
        self._count = 0
        self._shift: torch.Tensor | None = None  # [dim] float64
        self._sum: torch.Tensor | None = None  # sum of (x - shift)
        self._outer: torch.Tensor | None = None  # sum of (x - shift)(x - shift)^T
        self._kept: list[torch.Tensor] = []
        self._num_kept = 0
        self._reduced = False

    @property
    def count(self) -> int:
        return self._count

    @property
    def reduced(self) -> bool:
        return self._reduced

    def _allocate(self, device: torch.device, shift: torch.Tensor | None = None) -> None:
        self._device = device
        zeros = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self._shift = shift if shift is not None else zeros
        self._sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        if self._reduced:
            raise RuntimeError("FeatureStats.update() after reduce(): the statistics are already final")
        if not isinstance(features, torch.Tensor):
            features = torch.as_tensor(np.asarray(features))
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [B, {self.dim}], got {list(features.shape)}")
        if features.shape[0] == 0:
            return
        x = features.detach().to(torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or infinity")
        if self._sum is None:
            self._allocate(x.device, shift=x.mean(dim=0))
        elif x.device != self._sum.device:
            x = x.to(self._sum.device)
        centred = x - self._shift
        self._sum += centred.sum(dim=0)
        self._outer.addmm_(centred.T, centred)
        self._count += x.shape[0]
        if self._num_kept < self.keep:
            rows = features.detach()[: self.keep - self._num_kept].to("cpu", copy=True)
            self._kept.append(rows)
            self._num_kept += rows.shape[0]

    @torch.no_grad()
    def reduce(self) -> FeatureStats:
        """Sum the statistics over all ranks (every rank must call it); idempotent. Returns ``self``."""
        if self._reduced:
            return self
        self._reduced = True
        if not _dist_active():
            return self
        device = _comm_device()
        if self._sum is None:
            self._allocate(device)
        home = self._sum.device
        n = torch.tensor([float(self._count)], dtype=torch.float64, device=device)
        shift = self._shift.to(device)
        s = self._sum.to(device)
        q = self._outer.to(device)
        # Common shift: the count-weighted mean of the ranks' shifts.
        totals = torch.cat([n, shift * n])
        dist.all_reduce(totals)
        n_total = totals[0]
        common = totals[1:] / n_total if n_total > 0 else torch.zeros_like(shift)
        # Re-centre this rank's sums on the common shift (exact algebra, small corrections).
        d = shift - common
        q = q + torch.outer(d, s) + torch.outer(s, d) + n * torch.outer(d, d)
        s = s + n * d
        dist.all_reduce(s)
        dist.all_reduce(q)
        self._count = int(round(float(n_total)))
        self._shift, self._sum, self._outer = common.to(home), s.to(home), q.to(home)
        if self.keep > 0:
            self._gather_kept(device)
        return self

    def _gather_kept(self, device: torch.device) -> None:
        local = self.features()
        dtype = local.dtype if local.numel() else torch.float32
        world = dist.get_world_size()
        sizes = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        all_sizes = [int(t) for t in all_sizes]
        dtypes = [None] * world
        dist.all_gather_object(dtypes, str(dtype) if local.shape[0] else None)
        names = [t for t in dtypes if t is not None]
        if names:
            dtype = getattr(torch, names[0].split(".")[-1])
        width = max(all_sizes)
        if width == 0:
            return
        padded = torch.zeros(width, self.dim, dtype=dtype, device=device)
        padded[: local.shape[0]] = local.to(device=device, dtype=dtype)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        rows = torch.cat([p[:size] for p, size in zip(parts, all_sizes)])[: self.keep].cpu()
        self._kept = [rows]
        self._num_kept = rows.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu [dim], sigma [dim, dim])`` as numpy float64; sigma is unbiased (divides by count - 1)."""
        if self._count < 2:
            raise ValueError(f"need at least 2 feature rows for a covariance, have {self._count}")
        n = self._count
        mean_c = self._sum / n
        mu = (self._shift + mean_c).cpu().numpy()
        sigma = (self._outer - n * torch.outer(mean_c, mean_c)) / (n - 1)
        sigma = 0.5 * (sigma + sigma.T)
        return mu, sigma.cpu().numpy()

    def features(self) -> torch.Tensor:
        """The kept feature rows ``[min(keep, count), dim]`` (CPU tensor, the features' dtype)."""
        if not self._kept:
            return torch.zeros(0, self.dim)
        if len(self._kept) > 1:
            self._kept = [torch.cat(self._kept)]
        return self._kept[0]

    def __repr__(self) -> str:
        return (f"FeatureStats(dim={self.dim}, count={self._count}, kept={self._num_kept}, "
                f"reduced={self._reduced})")


@torch.no_grad()
def compute_statistics(batches, detector, *, device="cpu", keep: int = 0, progress: bool = False,
                       total: int | None = None) -> FeatureStats:
    """Run ``detector`` over ``batches`` (uint8 ``[B, C, H, W]`` tensors) and accumulate its features.

    Features are never held in memory beyond the current batch (and the first ``keep`` rows). The result
    is already reduced across ranks. ``total``: number of batches, for the progress bar only.
    """
    device = torch.device(device)
    stats = FeatureStats(int(detector.dim), keep) if getattr(detector, "dim", None) else None
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, unit="batch", file=sys.stderr, desc="features")
        except ImportError:  # pragma: no cover - tqdm is a dependency of the test extra only
            bar = None
    try:
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8 or batch.ndim != 4:
                got = f"{batch.dtype} {list(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch)
                raise ValueError(f"batches must be uint8 tensors [B, C, H, W], got {got}")
            feats = detector(batch.to(device))
            if stats is None:
                stats = FeatureStats(int(feats.shape[1]), keep)
            stats.update(feats)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if stats is None:
        raise ValueError("compute_statistics: no batches and the detector has no .dim")
    return stats.reduce()


# ----------------------------------------------------------------------------------------------------------
# Reference statistics files


def _check_mu_sigma(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise ValueError(f"{where}: mu must be a non-empty 1-d vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: sigma must be [{mu.shape[0]}, {mu.shape[0]}] to match mu, "
                         f"got shape {sigma.shape}")
    for name, arr in (("mu", mu), ("sigma", sigma)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{where}: {name} has non-numeric dtype {arr.dtype}")


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def save_ref(path, mu, sigma, **metadata) -> Path:
    """Write reference statistics: ``.npz`` with ``mu``, ``sigma`` (float64) and metadata as 0-d arrays.

    Written atomically to exactly ``path`` (no ``.npz`` appended). Metadata values must be scalars
    (numbers, strings, bools): nothing that would need pickle to read back. Returns the path.
    """
    path = Path(path)
    mu = _to_numpy(mu).astype(np.float64)
    sigma = _to_numpy(sigma).astype(np.float64)
    _check_mu_sigma(mu, sigma, str(path))
    arrays = {"mu": mu, "sigma": sigma}
    for key, value in metadata.items():
        arr = np.asarray(value)
        if arr.ndim != 0 or arr.dtype == object:
            raise ValueError(f"{path}: metadata {key!r} must be a scalar (number, string, bool), "
                             f"got {type(value).__name__}")
        arrays[key] = arr

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


def _open_ref(path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: reference statistics file not found")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: cannot read reference statistics ({one_line(e)})") from None
    missing = [k for k in ("mu", "sigma") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: reference statistics lack key(s) {', '.join(missing)} "
                         f"(has {', '.join(sorted(arrays)) or 'nothing'})")
    _check_mu_sigma(arrays["mu"], arrays["sigma"], str(path))
    return arrays


def load_ref(path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` as float64 from an ``.npz`` (ours or NVlabs'); bad files raise ``ValueError``."""
    arrays = _open_ref(path)
    return arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)


def load_ref_metadata(path) -> dict:
    """The metadata stored beside ``mu``/``sigma`` (Python scalars); ``{}`` for NVlabs files."""
    arrays = _open_ref(path)
    meta = {}
    for key, arr in arrays.items():
        if key in ("mu", "sigma"):
            continue
        meta[key] = arr.item() if arr.ndim == 0 else arr
    return meta


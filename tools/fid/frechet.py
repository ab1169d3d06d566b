"""Distances between feature distributions: Frechet distance, KID, k-NN precision/recall.

``frechet_distance`` works in float64 numpy through a factor of ``S1`` and one symmetric eigenvalue problem
instead of a general matrix square root (``scipy.linalg.sqrtm`` of the non-symmetric ``S1 @ S2``): with
``S1 = A A^T`` (Cholesky when ``S1`` is positive definite, else the symmetric square root from ``eigh`` with
negative round-off eigenvalues clipped to 0), ``S1 S2`` is similar to the symmetric PSD matrix
``A^T S2 A``, so ``tr((S1 S2)^(1/2)) = sum(sqrt(eigvalsh(A^T S2 A)))``. These are symmetric problems
(stable, no complex round-off, many times faster than ``sqrtm``), and rank-deficient covariances need no
diagonal offset (eigenvalues of ``A^T S2 A`` at round-off level count as zero).

``kid`` and ``precision_recall`` take features as numpy arrays or torch tensors ``[N, dim]``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["frechet_distance", "kid", "precision_recall", "KID_NOTE"]

from . import KID_NOTE  # noqa: E402  (kept in the package so the CLI's help shows it without torch)


def _as_numpy64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})".splitlines()[0]) from None
    return arr


def _check_stats(mu, sigma, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = _as_numpy64(mu, f"mu{which}")
    sigma = _as_numpy64(sigma, f"sigma{which}")
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise ValueError(f"mu{which} must be a non-empty 1-d vector, got shape {mu.shape}")
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"sigma{which} must be a square matrix, got shape {sigma.shape}")
    if sigma.shape[0] != mu.shape[0]:
        raise ValueError(f"sigma{which} is {sigma.shape} but mu{which} has dimension {mu.shape[0]}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{which}/sigma{which} contain NaN or infinity")
    return mu, sigma


def _sym_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root of a (nearly) symmetric PSD matrix."""
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    np.clip(w, 0.0, None, out=w)
    return (v * np.sqrt(w)) @ v.T


def _root_factor(sigma: np.ndarray) -> np.ndarray:
    """``A`` with ``sigma = A A^T``: the Cholesky factor when sigma is positive definite (an order of
    magnitude cheaper than an eigendecomposition), else the symmetric square root. Either way
    ``sigma1 sigma2`` is similar to the symmetric PSD ``A^T sigma2 A``."""
    try:
        return np.linalg.cholesky(0.5 * (sigma + sigma.T))
    except np.linalg.LinAlgError:
        return _sym_sqrt(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^(1/2) sigma2 sigma1^(1/2))^(1/2))``.
    Inputs are numpy arrays or torch tensors; mismatched dimensions, non-square covariances or
    non-finite values raise ``ValueError``.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: statistics 1 are {mu1.shape[0]}-d, statistics 2 are "
                         f"{mu2.shape[0]}-d")
    root1 = _root_factor(sigma1)
    inner = root1.T @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    # Null directions of a rank-deficient product come out as +-eps*||inner|| round-off, and sqrt turns
    # each into sqrt(eps*||inner||), which adds up over hundreds of them: treat eigenvalues below
    # eps * max as zero (their true contribution is at most as large as the noise they carry).
    eig[eig < np.finfo(np.float64).eps * max(float(eig[-1]), 0.0)] = 0.0
    tr_covmean = float(np.sqrt(eig).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _as_feature_matrix(x, name: str) -> np.ndarray:
    arr = _as_numpy64(x, name)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, dim] matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def kid(features1, features2, *, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD^2 estimate with the cubic polynomial kernel.

    Kernel: ``k(x, y) = (x.y / d + 1)^3``, ``d`` the feature dimension, as in Binkowski et al. 2018
    ("Demystifying MMD GANs"), NVlabs' stylegan2-ada ``kernel_inception_distance`` and clean-fid.
    Estimator: for subsets ``X``, ``Y`` of ``m`` rows each,
    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2``, averaged over ``num_subsets`` random subsets of
    ``m = min(N1, N2, max_subset_size)`` rows drawn without replacement from each set (as NVlabs).
    Deterministic for a given ``seed``.

    Units: the value is not scale-free. With ``a = x.y / d`` the kernel is ``a^3 + 3 a^2 + 3 a + 1``;
    the constant cancels in the estimator, so scaling every feature by ``c`` gives
    ``KID(c) = c^6 K3 + 3 c^4 K2 + 3 c^2 K1`` (``Kj`` the same estimate with kernel ``a^j``): it is in
    units of ``(x.y / d)^3``, the features' square cubed, when ``x.y / d`` is large (as with the
    ``digits`` detector, whose 64-d post-ReLU features have ``x.y / d`` around 30, so its KID runs to
    hundreds or more), and dominated by the lower powers when ``x.y / d`` is small. KID values are
    therefore comparable only between runs of one detector, never between detectors whose features
    have different scales (Inception pool3 vs ``digits``).

    Sign: the estimator is unbiased, so when both sets come from one distribution its expectation is
    exactly 0 and a single value is 0 plus sampling noise, negative about as often as positive. A
    small negative KID (relative to the values seen for genuinely different sets with the same
    detector and set sizes) means "indistinguishable at this sample size", not an error.
    """
    x_all = _as_feature_matrix(features1, "features1")
    y_all = _as_feature_matrix(features2, "features2")
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feature dimensions differ: {x_all.shape[1]} vs {y_all.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {x_all.shape[0]} and {y_all.shape[0]}")
    dim = x_all.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / dim + 1.0) ** 3
        kyy = (y @ y.T / dim + 1.0) ** 3
        kxy = (x @ y.T / dim + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kxy.mean()
    return float(total / num_subsets)


def _as_feature_tensor(x, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(_as_numpy64(x, name))
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, dim] matrix, got shape {tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return t


def _subsample(t: torch.Tensor, max_rows: int | None, generator: torch.Generator) -> torch.Tensor:
    if max_rows is None or t.shape[0] <= max_rows:
        return t
    idx = torch.randperm(t.shape[0], generator=generator)[:max_rows].sort().values
    return t[idx.to(t.device)]


def _knn_radii(ref: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``ref`` to its k-th nearest other row (the row itself is the 0-th)."""
    radii = []
    for start in range(0, ref.shape[0], chunk):
        d = torch.cdist(ref[start:start + chunk], ref)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(ref: torch.Tensor, radii: torch.Tensor, query: torch.Tensor, chunk: int) -> float:
    """Fraction of ``query`` rows inside at least one ball ``B(ref_i, radii_i)``."""
    inside = 0
    for start in range(0, query.shape[0], chunk):
        d = torch.cdist(query[start:start + chunk], ref)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / query.shape[0]


def precision_recall(real, fake, *, k: int = 3, max_rows: int | None = 10000, seed: int = 0,
                     chunk: int = 1024, dtype: torch.dtype = torch.float32,
                     device=None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) from k-NN manifold estimates.

    Each set's manifold is the union of balls around its rows with radius the distance to the row's
    k-th nearest neighbour (itself excluded). Precision: fraction of ``fake`` rows inside the real
    manifold; recall: fraction of ``real`` rows inside the fake manifold. Sets larger than ``max_rows``
    are subsampled (deterministically, from ``seed``). Pairwise distances are computed ``chunk`` rows at
    a time with ``torch.cdist`` in ``dtype`` on ``device`` (default: the inputs' device, CPU for numpy).
    """
    real_t = _as_feature_tensor(real, "real", dtype, device)
    fake_t = _as_feature_tensor(fake, "fake", dtype, device)
    if real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"feature dimensions differ: {real_t.shape[1]} vs {fake_t.shape[1]}")
    fake_t = fake_t.to(real_t.device)
    generator = torch.Generator().manual_seed(seed)
    real_t = _subsample(real_t, max_rows, generator)
    fake_t = _subsample(fake_t, max_rows, generator)
    if k < 1 or k >= min(real_t.shape[0], fake_t.shape[0]):
        raise ValueError(f"k must be in [1, {min(real_t.shape[0], fake_t.shape[0]) - 1}], got {k}")
    chunk = max(1, int(chunk))
    real_radii = _knn_radii(real_t, k, chunk)
    fake_radii = _knn_radii(fake_t, k, chunk)
    precision = _coverage(real_t, real_radii, fake_t, chunk)
    recall = _coverage(fake_t, fake_radii, real_t, chunk)
    return precision, recall

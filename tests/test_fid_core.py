"""FID core numerics: Frechet distance, streaming statistics, reference files, KID, precision/recall.

Oracles: pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm``), numpy's mean/cov, a closed form
for commuting covariances, and a single-process run for the 2-process torch.distributed reduction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid import fid_score
from scipy import fft

from tools.fid import (
    FeatureStats,
    compute_statistics,
    frechet_distance,
    kid,
    load_ref,
    load_ref_metadata,
    precision_recall,
    save_ref,
)

REPO = Path(__file__).resolve().parents[1]


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _features(rng, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features with a decaying spectrum (like pooled CNN activations)."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    scale = 1.0 / np.sqrt(1.0 + np.arange(d))
    return np.abs(rng.standard_normal((n, d)) * scale @ mix + 0.3) + shift


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------------------------------------- Frechet


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = _stats(_features(rng, 500, 64))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # Rank-deficient (fewer samples than dimensions) too.
    mu, sigma = _stats(_features(rng, 40, 64))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


@pytest.mark.parametrize("n", [2000, 150], ids=["well-conditioned", "rank-deficient"])
def test_fd_matches_pytorch_fid(n):
    rng = np.random.default_rng(n)
    d = 256
    m1, s1 = _stats(_features(rng, n, d))
    m2, s2 = _stats(_features(rng, n, d, shift=0.05) * 1.1)
    ours = frechet_distance(m1, s1, m2, s2)
    ref = float(fid_score.calculate_frechet_distance(m1, s1, m2, s2))
    assert _rel(ours, ref) < 1e-6, (ours, ref)


@pytest.mark.slow
def test_fd_2048d_closed_form_rank_deficient():
    """Commuting covariances S_i = Q diag(l_i) Q^T: FD = |dmu|^2 + sum (sqrt l1 - sqrt l2)^2 exactly.

    2048-d, half the eigenvalues zero (like covariances of 1000 samples of 2048-d features). The
    2048-d comparison against pytorch-fid's sqrtm itself (~30 s here) is in bench/fd.py.
    """
    rng = np.random.default_rng(1)
    d = 2048
    q = fft.dct(np.eye(d), norm="ortho", axis=0)[:, rng.permutation(d)]  # orthogonal, cheaper than a QR
    l1 = rng.gamma(0.5, 1.0, d) / (1.0 + np.arange(d))
    l2 = l1 * rng.uniform(0.5, 2.0, d)
    l1[1000:] = 0.0
    l2[1200:] = 0.0
    s1 = (q * l1) @ q.T
    s2 = (q * l2) @ q.T
    m1, m2 = rng.standard_normal(d) * 0.01, rng.standard_normal(d) * 0.01
    exact = float((m1 - m2) @ (m1 - m2) + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum())
    assert _rel(frechet_distance(m1, s1, m2, s2), exact) < 1e-6


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm on constant-pixel covariances
def test_fd_matches_pytorch_fid_on_digit_pixels():
    from sklearn import datasets
    x = datasets.load_digits().data.astype(np.float64)  # [1797, 64], pixels 0..16; some constant pixels
    a, b = x[::2], x[1::2]
    m1, s1 = _stats(a)
    m2, s2 = _stats(b)
    ours = frechet_distance(m1, s1, m2, s2)
    ref = float(fid_score.calculate_frechet_distance(m1, s1, m2, s2))
    assert ours > 0.1
    assert _rel(ours, ref) < 1e-6, (ours, ref)
    # And against a clearly different set (zeros and ones vs the rest).
    y = datasets.load_digits()
    low = y.data[y.target <= 1].astype(np.float64)
    m3, s3 = _stats(low)
    ours = frechet_distance(m1, s1, m3, s3)
    assert _rel(ours, float(fid_score.calculate_frechet_distance(m1, s1, m3, s3))) < 1e-6
    assert ours > 10 * frechet_distance(m1, s1, m2, s2)


def test_fd_accepts_torch_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    mu, sigma = _stats(_features(rng, 100, 8))
    t = frechet_distance(torch.from_numpy(mu), torch.from_numpy(sigma), mu.astype(np.float32), sigma)
    assert abs(t) < 1e-5
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    with pytest.raises(ValueError, match="square"):
        frechet_distance(mu, sigma[:, :4], mu, sigma)
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(mu, sigma[:4, :4], mu, sigma)
    bad = sigma.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN") as info:
        frechet_distance(mu, sigma, mu, bad)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feature_stats_equal_numpy_mean_cov(dtype):
    rng = np.random.default_rng(3)
    x = _features(rng, 1000, 48, shift=100.0)  # a large mean stresses the cancellation in the covariance
    t = torch.from_numpy(x).to(dtype)
    stats = FeatureStats(48, keep=300)
    start = 0
    for size in [1, 7, 64, 128, 300, 500]:  # batches of different sizes, 1000 rows in all
        stats.update(t[start:start + size])
        start += size
    assert start == 1000 and stats.count == 1000
    mu, sigma = stats.reduce().mean_cov()
    xr = t.double().numpy()  # the rows as the detector gave them
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, xr.mean(axis=0), rtol=1e-12, atol=0)
    ref = np.cov(xr, rowvar=False)
    assert np.abs(sigma - ref).max() <= 1e-10 * np.abs(ref).max()
    kept = stats.features()
    assert kept.shape == (300, 48) and kept.dtype == dtype
    assert torch.equal(kept, t[:300])


def test_feature_stats_errors():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        stats.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(torch.full((2, 4), float("nan")))
    stats.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_cov()
    stats.reduce()
    with pytest.raises(RuntimeError):
        stats.update(torch.zeros(1, 4))


class _ToyDetector:
    """Mean pixel value per channel and per image quadrant: 12 features from uint8 [B, 3, H, W]."""

    dim = 12

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        x = images.float() / 255.0
        h, w = x.shape[2] // 2, x.shape[3] // 2
        quads = [x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]]
        return torch.cat([q.mean(dim=(2, 3)) for q in quads], dim=1)


def test_compute_statistics_streams_batches():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8, generator=gen)
    det = _ToyDetector()
    batches = (images[i:i + 16] for i in range(0, 70, 16))
    stats = compute_statistics(batches, det, keep=20, progress=False)
    assert stats.count == 70 and stats.reduced
    feats = det(images).double().numpy()
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-15)
    assert stats.features().shape == (20, 12)
    with pytest.raises(ValueError, match="uint8"):
        compute_statistics([images.float()], det)


# ---------------------------------------------------------------------------------------------- ref files


def test_save_load_ref_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = _stats(_features(rng, 50, 16))
    path = tmp_path / "ref.npz"
    assert save_ref(path, mu, sigma, detector="toy", count=50, resolution=8) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]  # no temporary left behind
    mu2, sigma2 = load_ref(path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    assert load_ref_metadata(path) == {"detector": "toy", "count": 50, "resolution": 8}
    with np.load(path, allow_pickle=False) as f:  # what NVlabs' fid.py reads
        assert np.array_equal(f["mu"], mu) and np.array_equal(f["sigma"], sigma)
    # A name not ending in .npz is written as given.
    other = tmp_path / "ref.stats"
    save_ref(other, torch.from_numpy(mu), torch.from_numpy(sigma))
    assert other.is_file() and np.array_equal(load_ref(other)[1], sigma)


def test_nvlabs_style_npz_loads(tmp_path):
    rng = np.random.default_rng(5)
    mu, sigma = _stats(_features(rng, 50, 16))
    path = tmp_path / "nvlabs.npz"
    with open(path, "wb") as f:  # as NVlabs' fid.py: np.savez(f, mu=mu, sigma=sigma)
        np.savez(f, mu=mu, sigma=sigma)
    mu2, sigma2 = load_ref(path)
    assert np.array_equal(mu2, mu) and np.array_equal(sigma2, sigma)
    assert load_ref_metadata(path) == {}


def _bad_refs(tmp_path: Path) -> dict[str, Path]:
    bad = {}
    mu, sigma = np.zeros(4), np.eye(4)
    bad["missing"] = tmp_path / "missing.npz"
    bad["directory"] = tmp_path
    p = tmp_path / "nosigma.npz"
    np.savez(p, mu=mu)
    bad["no sigma"] = p
    p = tmp_path / "shape.npz"
    np.savez(p, mu=mu, sigma=np.eye(5))
    bad["wrong shape"] = p
    p = tmp_path / "mu2d.npz"
    np.savez(p, mu=np.eye(4), sigma=sigma)
    bad["2-d mu"] = p
    p = tmp_path / "text.npz"
    p.write_text("not an archive\n")
    bad["text"] = p
    p = tmp_path / "plain.npy"
    np.save(p, mu)
    bad["npy"] = p
    p = tmp_path / "pickled.npz"
    np.savez(p, mu=np.array([{"a": 1}], dtype=object), sigma=sigma)
    bad["pickled"] = p
    p = tmp_path / "truncated.npz"
    np.savez(tmp_path / "full.npz", mu=mu, sigma=sigma)
    p.write_bytes((tmp_path / "full.npz").read_bytes()[:100])
    bad["truncated"] = p
    return bad


def test_bad_refs_raise_one_line_value_error(tmp_path):
    for what, path in _bad_refs(tmp_path).items():
        for fn in (load_ref, load_ref_metadata):
            with pytest.raises(ValueError) as info:
                fn(path)
            msg = str(info.value)
            assert str(path) in msg and "\n" not in msg, (what, msg)
    with pytest.raises(ValueError, match="scalar"):
        save_ref(tmp_path / "x.npz", np.zeros(2), np.eye(2), extra={"a": 1})
    with pytest.raises(ValueError, match="sigma"):
        save_ref(tmp_path / "x.npz", np.zeros(2), np.eye(3))
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------- KID, P/R


def test_kid():
    rng = np.random.default_rng(6)
    pool = _features(rng, 800, 32)  # one distribution, split in two halves
    a, b = pool[:400], pool[400:]
    same = kid(a, a, num_subsets=20, max_subset_size=200)
    iid = kid(a, b, num_subsets=20, max_subset_size=200)
    far = kid(a, torch.from_numpy(b + 0.5), num_subsets=20, max_subset_size=200)
    assert abs(same) < 2e-3 and abs(iid) < 2e-3
    assert far > 1.0 and far > 100 * max(abs(iid), abs(same))
    assert kid(a, b, num_subsets=5, seed=1) == kid(a, b, num_subsets=5, seed=1)
    with pytest.raises(ValueError, match="dimensions"):
        kid(a, b[:, :8])



def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    """The unbiased MMD^2 estimate averages 0 over independent pairs of samples from one distribution,
    so single draws are often negative; samples from a shifted distribution score clearly above that."""
    draws = 60
    same, shifted = [], []
    for seed in range(draws):
        rng = np.random.default_rng(1000 + seed)
        x, y = rng.standard_normal((50, 16)), rng.standard_normal((50, 16))
        same.append(kid(x, y, num_subsets=1))  # one subset of all 50 rows: the whole sets
        shifted.append(kid(x, y + 0.5, num_subsets=1))
    same, shifted = np.array(same), np.array(shifted)
    standard_error = same.std(ddof=1) / np.sqrt(draws)
    assert abs(same.mean()) < 3 * standard_error  # expectation 0: a few standard errors at most
    assert (same < 0).sum() >= draws // 4 and (same > 0).sum() >= draws // 4  # noise of either sign
    assert shifted.min() > same.max() and shifted.mean() > 50 * standard_error


def test_kid_note_is_one_line():
    from tools.fid.frechet import KID_NOTE

    assert "\n" not in KID_NOTE and "(x.y/d + 1)^3" in KID_NOTE
    assert "negative" in KID_NOTE and "6th power" in KID_NOTE

def test_precision_recall():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((300, 16))
    p, r = precision_recall(a, a.copy(), k=3)
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)
    far = rng.standard_normal((200, 16)) + 50.0
    p, r = precision_recall(a, far, k=3, chunk=64)
    assert p == 0.0 and r == 0.0
    # A fake set covering only part of the real one: high precision, lower recall.
    plane = rng.standard_normal((600, 2))
    half = plane[plane[:, 0] > 0.0]
    p, r = precision_recall(torch.from_numpy(plane), torch.from_numpy(half), k=3, max_rows=500)
    assert p > 0.9 and 0.4 < r < 0.7


# ---------------------------------------------------------------------------------------------- distributed

_DIST_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from tools.fid import FeatureStats

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.from_numpy(np.load(sys.argv[1]))
    # Uneven shards: rank 0 gets 300 rows (in batches of 64), rank 1 the other 500.
    part = x[:300] if rank == 0 else x[300:]
    stats = FeatureStats(x.shape[1], keep=400)
    for i in range(0, part.shape[0], 64):
        stats.update(part[i:i + 64])
    stats.reduce()
    mu, sigma = stats.mean_cov()
    if rank == 0:
        np.savez(sys.argv[2], mu=mu, sigma=sigma, count=stats.count, kept=stats.features().numpy())
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_distributed_reduce_matches_single_process(tmp_path):
    rng = np.random.default_rng(8)
    x = _features(rng, 800, 24, shift=3.0)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "reduce.py"
    script.write_text(_DIST_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = FeatureStats(24)
    single.update(torch.from_numpy(x))
    mu1, sigma1 = single.reduce().mean_cov()
    with np.load(tmp_path / "out.npz") as out:
        assert int(out["count"]) == 800
        np.testing.assert_allclose(out["mu"], mu1, rtol=1e-10, atol=0)
        assert np.abs(out["sigma"] - sigma1).max() <= 1e-10 * np.abs(sigma1).max()
        # Kept rows: rank 0's 300, then the first 100 of rank 1's.
        np.testing.assert_array_equal(out["kept"], x[:400])

"""KID against the estimator of Binkowski et al. 2018 ("Demystifying MMD GANs") written out as sums.

The oracle is the unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``:
``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
- 2 sum_{i, j} k(x_i, y_j) / m^2``, as explicit python loops over pairs, and cross-checked against
scikit-learn's ``polynomial_kernel(degree=3, gamma=1/d, coef0=1)``. With both sets of ``m`` rows and
``max_subset_size >= m`` every subset ``kid`` draws is a permutation of all rows, so its value is the
oracle's exactly, however many subsets it averages.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import polynomial_kernel

from tools.fid import kid


def _cubic(d: int):
    def kernel(a, b) -> float:
        return (sum(float(u) * float(v) for u, v in zip(a, b)) / d + 1.0) ** 3

    return kernel


def mmd2_loops(x, y, kernel) -> float:
    """Unbiased MMD^2 of equal-size sets, as sums over index pairs (i != j within a set)."""
    m = len(x)
    assert len(y) == m
    xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / m**2


def mmd2_sklearn(x, y) -> float:
    m, d = x.shape
    kxx, kyy, kxy = (polynomial_kernel(a, b, degree=3, gamma=1.0 / d, coef0=1.0)
                     for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return off_diagonal - 2.0 * kxy.mean()


@pytest.mark.parametrize("m,d,shift", [(12, 3, 0.0), (20, 6, 0.4), (30, 2, 1.5)])
def test_kid_is_the_unbiased_cubic_mmd(m, d, shift):
    rng = np.random.default_rng(m + d)
    x, y = rng.standard_normal((m, d)), rng.standard_normal((m, d)) * 0.8 + shift
    expected = mmd2_loops(x, y, _cubic(d))
    assert mmd2_sklearn(x, y) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    for subsets, seed in ((1, 0), (3, 5)):
        assert kid(x, y, num_subsets=subsets, max_subset_size=1000, seed=seed) == pytest.approx(
            expected, rel=1e-10, abs=1e-12)


def test_two_points_each_by_hand():
    """d = 1, X = {0, 1}, Y = {2, 3}, k(a, b) = (ab + 1)^3:
    within X: k(0, 1) = 1; within Y: k(2, 3) = 7^3 = 343 (each pair counted twice over m(m-1) = 2);
    across: k(0,2) + k(0,3) + k(1,2) + k(1,3) = 1 + 1 + 27 + 64 = 93, mean 23.25;
    KID = 1 + 343 - 2 * 23.25 = 297.5."""
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    assert mmd2_loops(x, y, _cubic(1)) == 297.5
    assert kid(x, y, num_subsets=1) == pytest.approx(297.5, rel=1e-12)


def test_constant_sets_closed_form():
    """All rows of X equal a, all rows of Y equal b: every kernel value is known, so for any m
    KID = k(a, a) + k(b, b) - 2 k(a, b). a = (1, 1), b = (1, -1), d = 2: a.a/d = b.b/d = 1 and
    a.b/d = 0, so KID = 2^3 + 2^3 - 2 * 1^3 = 14."""
    x, y = np.tile([1.0, 1.0], (7, 1)), np.tile([1.0, -1.0], (9, 1))
    assert kid(x, y, num_subsets=4, max_subset_size=5, seed=2) == pytest.approx(14.0, rel=1e-12)
    assert kid(x, x, num_subsets=2) == pytest.approx(0.0, abs=1e-12)


def test_kernel_only_sees_dot_products():
    """k depends on x.y only: KID is unchanged by a rotation of the feature space, by the order of
    the rows, and is symmetric in the two sets (whole-set subsets, so nothing random remains)."""
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((25, 5)), rng.standard_normal((25, 5)) + 0.3
    rotation, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    base = kid(x, y, num_subsets=1)
    assert kid(x @ rotation, y @ rotation, num_subsets=1) == pytest.approx(base, rel=1e-10)
    assert kid(x[::-1], y[rng.permutation(25)], num_subsets=1) == pytest.approx(base, rel=1e-10)
    assert kid(y, x, num_subsets=1) == pytest.approx(base, rel=1e-10)


def _power_kernel(d: int, power: int):
    def kernel(a, b) -> float:
        return (sum(float(u) * float(v) for u, v in zip(a, b)) / d) ** power

    return kernel


def test_kid_units_under_feature_scaling():
    """k = (a + 1)^3 = a^3 + 3 a^2 + 3 a + 1 with a = x.y / d; the constant cancels, so features scaled
    by c give KID(c) = c^6 K3 + 3 c^4 K2 + 3 c^2 K1 (Kj: the same estimator with kernel a^j, computed
    by the loop oracle): neither scale-free nor exactly c^6."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 4)) * 1.2 + 0.3
    k1, k2, k3 = (mmd2_loops(x, y, _power_kernel(4, power)) for power in (1, 2, 3))
    for c in (0.1, 0.5, 1.0, 2.0, 100.0):
        expected = c**6 * k3 + 3 * c**4 * k2 + 3 * c**2 * k1
        assert kid(c * x, c * y, num_subsets=1) == pytest.approx(expected, rel=1e-10, abs=1e-15), c
    assert kid(100 * x, 100 * y, num_subsets=1) / 100**6 == pytest.approx(k3, rel=1e-3)  # large c: c^6


def test_scaling_law_holds_for_random_subsets_too():
    """The same subsets for every c (they depend on the seed and sizes only), so KID(c) is still the
    polynomial c^6 K3 + 3 c^4 K2 + 3 c^2 K1: fit it at three scales, predict two others."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 8)), rng.standard_normal((40, 8)) * 1.2 + 0.3

    def subsets(c):
        return kid(c * x, c * y, num_subsets=4, max_subset_size=25, seed=3)

    scales = np.array([1.0, 2.0, 3.0])
    coef = np.linalg.solve(np.stack([scales**6, scales**4, scales**2], axis=1), [subsets(c) for c in scales])
    for c in (0.5, 5.0):
        assert subsets(c) == pytest.approx(coef @ [c**6, c**4, c**2], rel=1e-9)
    assert subsets(0.0) == 0.0

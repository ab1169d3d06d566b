"""Improved precision/recall (Kynkaanniemi et al. 2019) against a brute-force k-NN written out here.

The oracle follows the paper's definition literally, in float64 python: the radius of a point is the
distance to its k-th nearest OTHER point of its own set (the point itself, at distance 0, does not
count), and a query point is "in the manifold" when it lies in at least one such closed ball.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tools.fid import precision_recall


def _distance(a, b) -> float:
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def _radii(ref, k: int) -> list[float]:
    """Distance from each row to its k-th nearest other row (1-based: k=1 is the nearest other row)."""
    radii = []
    for i, row in enumerate(ref):
        others = sorted(_distance(row, other) for j, other in enumerate(ref) if j != i)
        radii.append(others[k - 1])
    return radii


def _coverage(ref, radii, query) -> float:
    inside = sum(any(_distance(q, r) <= rad for r, rad in zip(ref, radii)) for q in query)
    return inside / len(query)


def brute_force(real, fake, k: int) -> tuple[float, float]:
    """(precision, recall) from the definition: explicit distances, each row's neighbours sorted."""
    return _coverage(real, _radii(real, k), fake), _coverage(fake, _radii(fake, k), real)


def brute_force_counting_self(real, fake, k: int) -> tuple[float, float]:
    """The off-by-one reading (the point itself taken as its own nearest neighbour): radius = the
    (k-1)-th nearest other row, 0 for k = 1. Used only to show a test set tells the two apart."""
    def radii(ref):
        return [0.0] * len(ref) if k == 1 else _radii(ref, k - 1)

    return _coverage(real, radii(real), fake), _coverage(fake, radii(fake), real)


def test_hand_worked_one_dimensional_case():
    """1-D points, k = 1 (radius = distance to the nearest other point), worked by hand:

    real  -10, 0, 1, 3, 7  -> radii 10, 1, 1, 2, 4 -> balls [-20, 0], [-1, 1], [0, 2], [1, 5], [3, 11]
    fake  0.5, 2.5, 5.5, 12 -> radii 2, 2, 3, 6.5 -> balls [-1.5, 2.5], [0.5, 4.5], [2.5, 8.5], [5.5, 18.5]
    precision: 0.5, 2.5, 5.5 lie in the real union [-20, 11], 12 does not -> 3/4
    recall: 0, 1, 3, 7 lie in the fake union [-1.5, 18.5], -10 does not -> 4/5
    """
    real = np.array([[-10.0], [0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[0.5], [2.5], [5.5], [12.0]])
    assert brute_force(real, fake, 1) == (0.75, 0.8)
    assert precision_recall(real, fake, k=1) == (0.75, 0.8)
    assert precision_recall(real, fake, k=1, dtype=torch.float64) == (0.75, 0.8)
    # Counting a point as its own neighbour gives zero radii: only exact copies would be covered.
    assert brute_force_counting_self(real, fake, 1) == (0.0, 0.0)


def test_hand_worked_second_neighbour():
    """k = 2 on 1-D points: real 0, 1, 3, 7, 15 have 2nd-nearest-other distances 3, 2, 3, 6, 12, so the
    real manifold is [-3, 27]; fake -2.5, 4.5, 26 lie inside, 28 outside -> precision 3/4. (With the
    1st neighbour instead the radii are 1, 1, 2, 4, 8, the union [-1, 23], and precision 1/4.)"""
    real = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    fake = np.array([[-2.5], [4.5], [26.0], [28.0]])
    assert _radii(real, 2) == [3.0, 2.0, 3.0, 6.0, 12.0]
    precision, _ = precision_recall(real, fake, k=2)
    assert precision == 0.75
    assert brute_force(real, fake, 2)[0] == 0.75 and brute_force_counting_self(real, fake, 2)[0] == 0.25


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_brute_force_on_random_sets(k, seed):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((40, 5))
    fake = rng.standard_normal((35, 5)) + 0.7  # overlapping, not identical
    expected = brute_force(real, fake, k)
    # The sets are small enough to tell the neighbour counts apart (else the test could not see them).
    assert expected != brute_force_counting_self(real, fake, k)
    # Fewer rows than max_rows, and max_rows=None: no subsampling either way; chunks of any size.
    assert precision_recall(real, fake, k=k) == expected
    assert precision_recall(real, fake, k=k, max_rows=None, chunk=7, dtype=torch.float64) == expected
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk=1) == expected


def test_swapping_the_sets_swaps_precision_and_recall():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((30, 4)), rng.standard_normal((25, 4)) + 0.5
    precision, recall = precision_recall(real, fake, k=3)
    assert precision_recall(fake, real, k=3) == (recall, precision)
    assert (precision, recall) == brute_force(real, fake, 3)

"""Interior values of the continuous schedules, worked out by hand (literal numbers, not formulas).

Every schedule returns its ``n`` nonzero levels followed by one appended 0. The ranges are chosen so
the hand arithmetic is exact: uniform spacing in sigma, powers of two for the geometric schedules, a
7th power for Karras' rho = 7. Schedules without a hand case here are compared with k-diffusion
(karras, exponential, polyexponential, vp) or the EDM paper's formulas elsewhere in the suite.
"""

from __future__ import annotations

import pytest
import torch

from samplers import schedules

CASES = [
    # linear, uniform in sigma: 8.5 -> 0.5 in 4 equal gaps of 2.
    ("linear", 5, 0.5, 8.5, {}, [8.5, 6.5, 4.5, 2.5, 0.5]),
    # linear, 3 gaps of 8/3: 8.5, 8.5 - 8/3 = 35/6, 8.5 - 16/3 = 19/6, 0.5.
    ("linear", 4, 0.5, 8.5, {}, [8.5, 35 / 6, 19 / 6, 0.5]),
    # linear, one step is sigma_max alone.
    ("linear", 1, 0.5, 8.5, {}, [8.5]),
    # exponential, uniform in log sigma: 16 -> 1 in 4 halvings.
    ("exponential", 5, 1.0, 16.0, {}, [16.0, 8.0, 4.0, 2.0, 1.0]),
    # ve: t = sigma^2 geometric from 256 to 1 (ratio 1/4), so sigma halves too.
    ("ve", 5, 1.0, 16.0, {}, [16.0, 8.0, 4.0, 2.0, 1.0]),
    # karras, rho = 7: sigma^(1/7) uniform from 128^(1/7) = 2 to 1: 2, 1.5, 1 -> 128, 1.5^7, 1.
    ("karras", 3, 1.0, 128.0, {"rho": 7.0}, [128.0, 17.0859375, 1.0]),
    # karras, rho = 1 is uniform in sigma.
    ("karras", 3, 1.0, 5.0, {"rho": 1.0}, [5.0, 3.0, 1.0]),
    # polyexponential, rho = 2: log2 sigma = 9 (1 - i/3)^2 = 9, 4, 1, 0.
    ("polyexponential", 4, 1.0, 512.0, {"rho": 2.0}, [512.0, 16.0, 2.0, 1.0]),
]


@pytest.mark.parametrize("name,n,sigma_min,sigma_max,options,levels", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_hand_computed_levels(name, n, sigma_min, sigma_max, options, levels):
    sigmas = schedules.get(name)(n, sigma_min, sigma_max, **options)
    assert sigmas.dtype == torch.float64
    assert sigmas.tolist() == pytest.approx([*levels, 0.0], rel=1e-12, abs=0)


def test_linear_gaps_are_equal_in_sigma_not_in_log_sigma():
    """The defining property at a glance: equal differences, unequal ratios."""
    sigmas = schedules.get("linear")(6, 0.002, 80.0)[:-1]
    gaps = sigmas[:-1] - sigmas[1:]
    torch.testing.assert_close(gaps, torch.full_like(gaps, (80.0 - 0.002) / 5), rtol=1e-12, atol=0)
    ratios = sigmas[1:] / sigmas[:-1]
    assert ratios.max() - ratios.min() > 0.5

"""The newer schedules: ays (Align Your Steps), beta, kl_optimal, linear_quadratic."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta as beta_dist

from _support import assert_schedule
from samplers import schedules

NEW = ["ays", "beta", "kl_optimal", "linear_quadratic"]
POW2 = 2.0 ** torch.arange(10, dtype=torch.float64)

# The published 10-step tables (Sabour et al. 2024), written out again here as the oracle.
AYS = {
    "sd15": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def ddpm_table(M=1000):
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, M) ** 2
    abar = np.cumprod(1 - betas)
    return torch.tensor(np.sqrt((1 - abar) / abar), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Registry


def test_registered_with_options_and_references():
    for name in NEW:
        sp = schedules.spec(name)
        assert sp.fn is schedules.get(name) and sp.reference and sp.description
        assert "\n" not in sp.description and not sp.needs_table
    assert dict(schedules.spec("ays").options) == {"model": "sd15"}
    assert dict(schedules.spec("beta").options) == {"alpha": 0.6, "beta": 0.6}
    assert dict(schedules.spec("kl_optimal").options) == {}
    assert dict(schedules.spec("linear_quadratic").options) == {
        "threshold_noise": 0.025, "linear_steps": None, "mapping": "linear"}
    assert schedules.spec("ays").range_optional and schedules.spec("beta").range_optional
    assert not schedules.spec("kl_optimal").range_optional


@pytest.mark.parametrize("name,kw", [
    ("ays", {}), ("ays", {"model": "svd"}), ("ays", {"sigma_min": 0.002, "sigma_max": 80.0}),
    ("beta", {"sigma_min": 0.002, "sigma_max": 80.0}), ("beta", {"sigmas": ddpm_table()}),
    ("beta", {"sigma_min": 0.1, "sigma_max": 5.0, "alpha": 2.0, "beta": 0.3}),
    ("kl_optimal", {"sigma_min": 0.002, "sigma_max": 80.0}),
    ("linear_quadratic", {"sigma_max": 1.0}), ("linear_quadratic", {"sigma_max": 80.0, "mapping": "flow"}),
])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 11, 40, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_structure(name, kw, n, dtype):
    s = schedules.get(name)(n, dtype=dtype, **kw)
    assert s.dtype == dtype
    assert_schedule(s, n)
    if "sigma_max" in kw:
        assert s[0].item() == pytest.approx(kw["sigma_max"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# ays


@pytest.mark.parametrize("model", sorted(AYS))
def test_ays_reproduces_published_table_at_ten_steps(model):
    """10 steps: the 11 published levels, the last (the model's sigma_min) replaced by 0 (ComfyUI)."""
    s = schedules.ays(10, model=model)
    assert s[:-1].tolist() == AYS[model][:10] and s[-1] == 0


@pytest.mark.parametrize("model", sorted(AYS))
def test_ays_interpolates_log_linearly(model):
    table = np.array(AYS[model])
    # 20 steps: 21 uniform positions hit every table level and every geometric midpoint.
    s = schedules.ays(20, model=model)[:-1].numpy()
    np.testing.assert_allclose(s[::2], table[:10], rtol=1e-12)
    np.testing.assert_allclose(s[1::2], np.sqrt(table[:-1] * table[1:]), rtol=1e-12)
    for n in [1, 2, 3, 7, 9, 13, 50, 200]:  # np.interp of log sigma over uniform positions
        xs, new = np.linspace(0, 1, 11), np.linspace(0, 1, n + 1)
        expected = np.exp(np.interp(new, xs, np.log(table[::-1])))[::-1][:-1]
        out = schedules.ays(n, model=model)
        assert_schedule(out, n)
        np.testing.assert_allclose(out[:-1].numpy(), expected, rtol=1e-12)
        assert out[0].item() == table[0]


def test_ays_range_rescales_in_log_sigma():
    table = np.array(AYS["sd15"])
    # Giving the table's own ends changes nothing.
    torch.testing.assert_close(schedules.ays(10, table[-1], table[0]), schedules.ays(10), rtol=1e-12, atol=0)
    lo, hi = 0.002, 80.0
    frac = (np.log(table) - np.log(table[-1])) / (np.log(table[0]) - np.log(table[-1]))
    expected = np.exp(np.log(lo) + frac * (np.log(hi) - np.log(lo)))
    np.testing.assert_allclose(schedules.ays(10, lo, hi)[:-1].numpy(), expected[:10], rtol=1e-12)
    # Rescaling commutes with resampling: 20 steps hit the rescaled levels at even positions.
    np.testing.assert_allclose(schedules.ays(20, lo, hi)[:-1:2].numpy(), expected[:10], rtol=1e-12)
    # One end given: the other stays the table's.
    s = schedules.ays(10, None, 20.0)
    assert s[0].item() == 20.0
    s = schedules.ays(5, 0.1)
    assert s[0].item() == table[0]
    # Not clipped: a narrow range keeps every level distinct and inside it.
    s = schedules.ays(30, 0.5, 2.0)
    assert_schedule(s, 30)
    assert s[0].item() == 2.0 and s[-2].item() > 0.5


def test_ays_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of sd15, sdxl, svd"):
        schedules.ays(10, model="sd3")
    with pytest.raises(ValueError, match="model must be"):
        schedules.ays(10, model=None)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.ays(10, 20.0)  # above the sd15 table's top
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.ays(10, None, 0.01)  # below the table's bottom
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.ays(10, 5.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# beta


@pytest.mark.parametrize("n", [1, 2, 5, 18, 40])
@pytest.mark.parametrize("a,b", [(0.6, 0.6), (1.0, 1.0), (2.0, 0.5), (0.3, 3.0)])
def test_beta_continuous_is_beta_quantiles_in_log_sigma(n, a, b):
    lo, hi = 0.002, 80.0
    s = schedules.beta(n, lo, hi, alpha=a, beta=b)
    assert_schedule(s, n)
    q = beta_dist.ppf(1 - np.arange(n) / n, a, b)
    frac = (np.log(s[:-1].numpy()) - math.log(lo)) / (math.log(hi) - math.log(lo))
    np.testing.assert_allclose(frac, q, rtol=1e-10, atol=1e-12)
    assert s[0].item() == pytest.approx(hi, rel=1e-12) and s[-2] > lo


def test_beta_uniform_is_exponential_without_its_last_level():
    """alpha = beta = 1: quantiles 1 - i/n, so uniform in log sigma, stopping one step above sigma_min."""
    torch.testing.assert_close(schedules.beta(8, 0.01, 10.0, alpha=1.0, beta=1.0)[:-1],
                               schedules.exponential(9, 0.01, 10.0)[:-2], rtol=1e-12, atol=0)


def test_beta_defaults_are_0_6():
    torch.testing.assert_close(schedules.beta(7, 0.1, 10.0),
                               schedules.beta(7, 0.1, 10.0, alpha=0.6, beta=0.6))


@pytest.mark.parametrize("n", [1, 3, 10, 30])
def test_beta_table_picks_entries_like_comfyui(n):
    table = ddpm_table()
    s = schedules.beta(n, sigmas=table)
    idx = np.rint(beta_dist.ppf(1 - np.linspace(0, 1, n, endpoint=False), 0.6, 0.6) * 999).astype(int)
    keep = [i for k, i in enumerate(idx) if k == 0 or i != idx[k - 1]]
    torch.testing.assert_close(s, torch.cat([table[keep], t([0.0])]), rtol=0, atol=0)


def test_beta_table_hand_values_range_and_dedupe():
    # POW2 entries 0..9; quantiles for n=2 (alpha=beta=1): 1, 0.5 -> index rint(9), rint(4.5)=4.
    torch.testing.assert_close(schedules.beta(2, sigmas=POW2, alpha=1.0, beta=1.0), t([512, 16, 0]))
    # Range [3, 300] keeps entries 2..8 (4..256); n=2: 2 + rint(6), 2 + rint(3) -> 256, 32.
    torch.testing.assert_close(schedules.beta(2, 3.0, 300.0, sigmas=POW2, alpha=1.0, beta=1.0),
                               t([256, 32, 0]))
    s = schedules.beta(40, sigmas=POW2)  # more steps than entries: each index once, fewer steps
    assert_schedule(s)
    assert len(s) <= 11 and set(s[:-1].tolist()) <= set(POW2.tolist())


def test_beta_bad_arguments():
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max"):
        schedules.beta(5, None, 10.0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="alpha"):
            schedules.beta(5, 0.1, 10.0, alpha=bad)
        with pytest.raises(ValueError, match="beta: beta"):
            schedules.beta(5, 0.1, 10.0, beta=bad)
    with pytest.raises(ValueError, match="ascending"):
        schedules.beta(5, sigmas=POW2.flip(0))
    with pytest.raises(ValueError, match="overlap"):
        schedules.beta(5, 1000.0, 2000.0, sigmas=POW2)


# ---------------------------------------------------------------------------------------------------
# kl_optimal


@pytest.mark.parametrize("n", [1, 2, 5, 18, 40])
@pytest.mark.parametrize("lo,hi", [(0.002, 80.0), (0.0292, 14.6146), (0.1, 1.5)])
def test_kl_optimal_closed_form(n, lo, hi):
    ti = np.arange(n) / (n - 1) if n > 1 else np.zeros(1)
    expected = np.append(np.tan(ti * np.arctan(lo) + (1 - ti) * np.arctan(hi)), 0.0)
    s = schedules.kl_optimal(n, lo, hi)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-12, atol=0)
    assert s[0].item() == pytest.approx(hi, rel=1e-12)
    if n > 1:
        assert s[-2].item() == pytest.approx(lo, rel=1e-12)


def test_kl_optimal_is_uniform_in_atan_sigma():
    s = schedules.kl_optimal(12, 0.002, 80.0)[:-1]
    d = np.diff(np.arctan(s.numpy()))
    np.testing.assert_allclose(d, d[0], rtol=1e-9)


def test_kl_optimal_needs_a_range():
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max"):
        schedules.kl_optimal(5, None, 10.0)
    with pytest.raises(ValueError, match="unknown option"):
        schedules.kl_optimal(5, 0.1, 10.0, rho=7.0)


# ---------------------------------------------------------------------------------------------------
# linear_quadratic


def lq_time(s, sigma_max=1.0):
    """Normalized time u_0..u_n from a 'linear'-mapped schedule (u_n = 1 is the final 0)."""
    return 1 - s.numpy() / sigma_max


def test_linear_quadratic_hand_values():
    # n = 6, L = 3, threshold 0.025: u = i/120 for i < 3, then 0.025 + (i-3)/120 + c (i-3)^2 with
    # c = (1 - 0.025 - 3/120) / 9 so that u_6 = 1.
    c = 0.95 / 9
    u = [0, 1 / 120, 2 / 120, 0.025, 0.025 + 1 / 120 + c, 0.025 + 2 / 120 + 4 * c]
    expected = [2.0 * (1 - x) for x in u] + [0.0]
    torch.testing.assert_close(schedules.linear_quadratic(6, None, 2.0), t(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,L,thr", [(10, None, 0.025), (30, None, 0.025), (31, 7, 0.1), (50, 40, 0.3),
                                     (2, None, 0.025), (3, 2, 0.5)])
def test_linear_quadratic_defining_properties(n, L, thr):
    s = schedules.linear_quadratic(n, None, 1.0, threshold_noise=thr, linear_steps=L)
    assert_schedule(s, n)
    L = n // 2 if L is None else L
    u = lq_time(s)
    i = np.arange(n + 1)
    assert u[0] == 0 and u[-1] == 1
    np.testing.assert_allclose(u[:L + 1], thr * i[:L + 1] / L, atol=1e-12)  # linear up to the threshold
    quad = u[L:]
    if len(quad) >= 3:  # constant second differences: a quadratic in the step index
        d2 = np.diff(quad, 2)
        np.testing.assert_allclose(d2, d2[0], atol=1e-12)
    # Continuous slope at L: the quadratic's derivative there, u_{L+1} - u_L - (second difference)/2
    # for a quadratic through the points, equals the linear slope thr / L.
    c = (1 - thr - thr / L * (n - L)) / (n - L) ** 2
    np.testing.assert_allclose(u[L + 1] - u[L] - c, thr / L, atol=1e-12)


def test_linear_quadratic_mappings():
    lin = schedules.linear_quadratic(20, None, 3.0)
    unit = schedules.linear_quadratic(20, None, 1.0)
    np.testing.assert_allclose(lin.numpy(), 3.0 * unit.numpy(), rtol=1e-12)
    flow = schedules.linear_quadratic(20, 0.002, 80.0, mapping="flow")
    u = lq_time(schedules.linear_quadratic(20, None, 1.0))
    s_max = 80.0 / 81.0
    s = s_max * (1 - u)
    np.testing.assert_allclose(flow.numpy(), s / (1 - s), rtol=1e-12)
    assert flow[0].item() == pytest.approx(80.0, rel=1e-12)
    # Back to flow time, the 'flow' mapping is the 'linear' one with sigma_max = s_max.
    np.testing.assert_allclose((flow / (1 + flow)).numpy(), s_max * (1 - u), rtol=1e-12)


def test_linear_quadratic_one_step_and_sigma_min_floor():
    torch.testing.assert_close(schedules.linear_quadratic(1, None, 5.0), t([5.0, 0.0]))
    s = schedules.linear_quadratic(10, 0.002, 1.0)
    assert s[-2] >= 0.002
    with pytest.raises(ValueError, match="below sigma_min"):
        schedules.linear_quadratic(10, 0.5, 1.0)


def test_linear_quadratic_bad_arguments():
    f = schedules.linear_quadratic
    with pytest.raises(ValueError, match="needs sigma_max"):
        f(5, 0.01)
    for thr in (0.0, 1.0, -0.1, float("nan"), "x"):
        with pytest.raises(ValueError, match="threshold_noise"):
            f(5, None, 1.0, threshold_noise=thr)
    for L in (0, 5, 7, -1, 2.5, True):
        with pytest.raises(ValueError, match="linear_steps"):
            f(5, None, 1.0, linear_steps=L)
    with pytest.raises(ValueError, match="mapping"):
        f(5, None, 1.0, mapping="cosine")
    with pytest.raises(ValueError, match="turns back"):
        f(10, None, 1.0, linear_steps=2, threshold_noise=0.9)  # overshoots 1, then comes back
    assert_schedule(f(10, None, 1.0, linear_steps=9, threshold_noise=0.999), 10)  # u_9 = 0.999: fine



# ---------------------------------------------------------------------------------------------------
# Shared argument checks


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("n", [0, -1, 2.0, True, None])
def test_bad_step_count(name, n):
    with pytest.raises(ValueError, match=r"n \(number of steps\)"):
        schedules.get(name)(n, 0.01, 10.0)


@pytest.mark.parametrize("name", NEW)
def test_bad_range(name):
    fn = schedules.get(name)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        fn(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        fn(5, 0.0, 1.0)

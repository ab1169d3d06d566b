"""ipndm_v and heunpp2 against ComfyUI's updates written out here step by step (their published form, on a
toy denoiser and an unequal schedule), and their NFE on every kind of step."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import Counting, mixture, start
from samplers.adams import AB_COEFFS, ipndm_v_weights

pytestmark = pytest.mark.usefixtures("one_thread")

# Unequal steps (ratios far from 1) so that weights for equal steps would show; ends in 0.
SIGMAS = [20.0, 11.0, 7.5, 3.0, 2.2, 0.9, 0.31, 0.05, 0.0]


def comfy_ipndm_v(model, x, sigmas, max_order=4):
    """ComfyUI's sample_ipndm_v: its coefficient formulas as published (h_n, h_n_1, ... its names)."""
    buffer = []  # earlier derivatives, oldest first
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        h_n = t_next - t_cur
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + h_n * d_cur
        elif order == 2:
            h_n_1 = t_cur - sigmas[i - 1]
            x_next = x + h_n * ((2 + h_n / h_n_1) / 2 * d_cur - (h_n / h_n_1) / 2 * buffer[-1])
        elif order == 3:
            h_n_1, h_n_2 = t_cur - sigmas[i - 1], sigmas[i - 1] - sigmas[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            c1 = (2 + h_n / h_n_1) / 2 + temp
            c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            c3 = temp * h_n_1 / h_n_2
            x_next = x + h_n * (c1 * d_cur + c2 * buffer[-1] + c3 * buffer[-2])
        else:
            h_n_1, h_n_2 = t_cur - sigmas[i - 1], sigmas[i - 1] - sigmas[i - 2]
            h_n_3 = sigmas[i - 2] - sigmas[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = (((1 - h_n / (3 * (h_n + h_n_1))) / 2
                      + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2)))
                     * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2))
                     / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
            ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
            c1 = (2 + h_n / h_n_1) / 2 + temp1 + temp2
            c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + h_n_1 / h_n_2 + ratio) * temp2
            c3 = temp1 * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + ratio * (1 + h_n_2 / h_n_3)) * temp2
            c4 = -temp2 * ratio * h_n_1 / h_n_2
            x_next = x + h_n * (c1 * d_cur + c2 * buffer[-1] + c3 * buffer[-2] + c4 * buffer[-3])
        buffer = (buffer + [d_cur])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


def comfy_heunpp2(model, x, sigmas):
    """ComfyUI's sample_heunpp2 without churn: Euler onto the last level, weighted Heun onto the one before,
    Heun++ (a third evaluation two levels on) elsewhere, weights scaled by sigmas[0]."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigma_next)) / sigma_next
            w2 = sigma_next / (2 * sigmas[0])
            x = x + ((1 - w2) * d + w2 * d_2) * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigma_next)) / sigma_next
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigma_next)
            d_3 = (x_3 - model(x_3, sigmas[i + 2])) / sigmas[i + 2]
            w2, w3 = sigma_next / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
@pytest.mark.parametrize("sigmas", [SIGMAS, SIGMAS[:-1]], ids=["to-zero", "to-sigma-min"])
def test_ipndm_v_is_comfyui_s_update(max_order, sigmas):
    gm, x = mixture(), start(sigma_max=sigmas[0])
    expected = comfy_ipndm_v(gm, x.clone(), sigmas, max_order)
    got = samplers.sample(gm, x.clone(), torch.tensor(sigmas, dtype=torch.float64), "ipndm_v",
                          max_order=max_order)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_ipndm_v_on_equal_steps():
    """Up to third order the weights on equal steps are the classic AB ones (ipndm's); the published fourth
    order ones are AB3's plus 11/24 of the third backward difference, where AB4 has 3/8."""
    for n in range(1, 4):
        assert ipndm_v_weights([-0.5] * n) == pytest.approx(AB_COEFFS[n - 1], rel=1e-14)
    def ab3_plus(weight):  # AB3 plus ``weight`` times the third backward difference d - 3 d_1 + 3 d_2 - d_3
        return [a + weight * t for a, t in zip((*AB_COEFFS[2], 0.0), (1, -3, 3, -1))]

    assert ipndm_v_weights([-0.5] * 4) == pytest.approx(ab3_plus(11 / 24), rel=1e-14)
    assert AB_COEFFS[3] == pytest.approx(ab3_plus(3 / 8), rel=1e-14)
    sigmas = torch.linspace(4.0, 0.5, 9, dtype=torch.float64)  # equal steps, not ending in 0
    gm, x = mixture(), start(sigma_max=4.0)
    torch.testing.assert_close(samplers.sample(gm, x.clone(), sigmas, "ipndm_v", max_order=3),
                               samplers.sample(gm, x.clone(), sigmas, "ipndm", max_order=3),
                               rtol=1e-12, atol=1e-12)


def test_ipndm_v_weights_against_exact_adams_bashforth():
    """What ipndm_v_weights' docstring says of the published weights, on one unequal history: order 2
    integrates 1 and s exactly over the step; order 3 is the exact AB3 (which integrates s^2 too) plus
    ((b - a)(a + b) + b (c - a)) / (2 b (b + c)) times (1, -(1 + b/c), b/c); order 4's weights sum to
    1 + t2 rho (c/d - b/c), not 1."""
    nodes = [3.0, 4.5, 7.0, 10.0]  # sigma_i, sigma_{i-1}, ... (a decreasing schedule read backwards)
    sigma_next = 1.7
    h = [sigma_next - nodes[0]] + [nodes[k] - nodes[k + 1] for k in range(3)]
    a, b, c, d = h

    def integrates(weights, p):
        integral = (sigma_next ** (p + 1) - nodes[0] ** (p + 1)) / (p + 1)
        return a * sum(w * s**p for w, s in zip(weights, nodes)) == pytest.approx(integral, rel=1e-12)

    assert integrates(ipndm_v_weights(h[:2]), 0) and integrates(ipndm_v_weights(h[:2]), 1)
    excess = ((b - a) * (a + b) + b * (c - a)) / (2 * b * (b + c))
    exact = [w - excess * v for w, v in zip(ipndm_v_weights(h[:3]), (1, -(1 + b / c), b / c))]
    assert all(integrates(exact, p) for p in range(3))
    assert not integrates(ipndm_v_weights(h[:3]), 2)
    rho = b * (b + c) / (c * (c + d))
    t2 = (((1 - a / (3 * (a + b))) / 2 + (1 - a / (2 * (a + b))) * a / (6 * (a + b + c)))
          * a * (a + b) * (a + b + c) / (b * (b + c) * (b + c + d)))
    assert sum(ipndm_v_weights(h)) == pytest.approx(1 + t2 * rho * (c / d - b / c), rel=1e-12)
    assert abs(sum(ipndm_v_weights(h)) - 1) > 0.01


@pytest.mark.parametrize("sigmas", [SIGMAS, SIGMAS[:-1], SIGMAS[-3:], SIGMAS[-2:]],
                         ids=["to-zero", "to-sigma-min", "two-steps", "one-step"])
def test_heunpp2_is_comfyui_s_update(sigmas):
    gm, x = mixture(), start(sigma_max=sigmas[0])
    expected = comfy_heunpp2(gm, x.clone(), sigmas)
    got = samplers.sample(gm, x.clone(), torch.tensor(sigmas, dtype=torch.float64), "heunpp2")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("end", [0.0, 0.05])
def test_heunpp2_nfe_is_counted_exactly(steps, end):
    """3 evaluations a step, 2 on the last but one, 1 on the last, whether or not the schedule ends in 0;
    the booking 3 (N - 1) is exact from 2 steps on."""
    sigmas = [float(s) for s in torch.linspace(10.0, 0.1, steps)] + [end]
    model = Counting(mixture())
    samplers.sample(model, start(batch=1, sigma_max=10.0), torch.tensor(sigmas, dtype=torch.float64),
                    "heunpp2")
    assert model.calls == samplers.registry.nfe_on("heunpp2", sigmas) == max(1, 3 * steps - 3)
    if steps > 1:
        assert samplers.get("heunpp2").nfe(steps) == model.calls
        assert samplers.steps_for_nfe("heunpp2", model.calls) == steps


def test_heunpp2_refuses_to_run_in_parts():
    """Its weights use the schedule's first level and its last steps are special: a corrector or RePaint's
    resampling (which run a sampler part by part) cannot split it."""
    with pytest.raises(ValueError, match="whole schedule"):
        samplers.registry.nfe_on("heunpp2", SIGMAS, corrector_steps=1)


def test_new_samplers_are_listed():
    for name in ("ipndm_v", "heunpp2"):
        spec = samplers.get(name)
        assert name in samplers.list() and spec.reference and spec.description
        assert not spec.stochastic
    assert math.isclose(samplers.get("ipndm_v").nfe(7), 7)

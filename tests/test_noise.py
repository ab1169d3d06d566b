"""Per-seed noise: batch invariance of every stochastic sampler, and the law of the noise sources."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers.noise import BrownianNoise, SeededNormal, latents

SEEDS = [3, 5, 7]
SHAPE = (3, 5, 7)  # odd sizes: batch tails fall at different vector-lane positions


def toy_denoiser(x, sigma):
    """Elementwise and nonlinear, so its output for a sample cannot depend on the batch around it."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x / torch.sqrt(1 + s**2)) * 0.8


CHURN = {"s_churn": 30.0, "s_tmin": 0.05, "s_tmax": 50.0}
STOCHASTIC = [(name, {}) for name in samplers.list() if samplers.get(name).stochastic] + [
    ("euler", CHURN), ("heun", CHURN), ("dpm_2", CHURN), ("edm", CHURN), ("ddim", {"eta": 0.5}),
    ("dpm_fast", {"eta": 0.5}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
]


def run(name, options, seeds, dtype=torch.float32):
    sigmas = samplers.schedules.get("karras")(8, 0.01, 20.0)
    x = latents(seeds, SHAPE, dtype=dtype) * sigmas[0]
    return samplers.sample(toy_denoiser, x, sigmas, name, seeds=seeds, **options)


@pytest.mark.parametrize("case", STOCHASTIC, ids=lambda c: c[0] + ("-" + "-".join(c[1]) if c[1] else ""))
def test_seed_gives_the_same_sample_whatever_the_batch(case):
    name, options = case
    together = run(name, options, SEEDS)
    for i, seed in enumerate(SEEDS):
        alone = run(name, options, [seed])
        assert torch.equal(together[i], alone[0]), f"seed {seed} differs in a batch"
    shuffled = run(name, options, SEEDS[::-1])
    assert torch.equal(shuffled, together.flip(0))
    # and the noise really is used: another seed gives another sample
    assert not torch.equal(run(name, options, [4])[0], together[0])


def test_deterministic_samplers_ignore_seeds():
    """Samplers not flagged stochastic draw no noise with their default options."""
    sigmas = samplers.schedules.get("karras")(6, 0.01, 20.0)
    x = latents([1], SHAPE) * sigmas[0]
    for name in samplers.list():
        if not samplers.get(name).stochastic:
            a = samplers.sample(toy_denoiser, x, sigmas, name, seeds=[1])
            b = samplers.sample(toy_denoiser, x, sigmas, name, seeds=[2])
            assert torch.equal(a, b), name


def test_latents_equal_nvlabs_per_seed_generators():
    """Stream 0 is NVlabs' StackedRandomGenerator: torch.Generator().manual_seed(seed % 2**32)."""
    ours = latents([0, 1, 2**40 + 5], SHAPE)
    for row, seed in zip(ours, [0, 1, 2**40 + 5]):
        expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed % (1 << 32)))
        assert torch.equal(row, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_latents_of_every_dtype_are_the_float32_stream_cast(dtype):
    """NVlabs draws float32 per seed and casts: float64 latents are the float32 ones exactly."""
    x32 = latents([0, 1, 2**40 + 5], SHAPE, dtype=torch.float32)
    x = latents([0, 1, 2**40 + 5], SHAPE, dtype=dtype)
    assert x.dtype == dtype and torch.equal(x, x32.to(dtype))


def test_the_float64_latent_stream_is_named_and_drawn_in_float64():
    """The second, explicitly named stream: the same per-seed generators drawing float64 directly."""
    x = latents([0, 3], SHAPE, dtype=torch.float64, stream="float64")
    for row, seed in zip(x, [0, 3]):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(row, torch.randn(SHAPE, generator=gen, dtype=torch.float64))
    assert not torch.equal(x, latents([0, 3], SHAPE, dtype=torch.float64))  # not NVlabs' latents
    with pytest.raises(ValueError, match="unknown latent stream"):
        latents([0], SHAPE, stream="nope")


def test_sampler_noise_stream_differs_from_the_latent_stream():
    noise = SeededNormal([11], SHAPE)
    assert not torch.allclose(noise.draw()[0], latents([11], SHAPE)[0])


def test_seeded_normal_is_standard_normal_and_reproducible():
    a = SeededNormal(list(range(4)), (4096,), draws_hint=3)
    draws = torch.stack([a.draw() for _ in range(5)])  # crosses a block boundary
    assert abs(draws.mean().item()) < 0.02 and abs(draws.std().item() - 1) < 0.02
    b = SeededNormal(list(range(4)), (4096,), draws_hint=3)
    assert torch.equal(draws, torch.stack([b.draw() for _ in range(5)]))
    assert not torch.equal(draws[0], draws[1])


def test_seeded_normal_dtypes_share_the_draws():
    x32 = SeededNormal([9], SHAPE, dtype=torch.float32).draw()
    x16 = SeededNormal([9], SHAPE, dtype=torch.bfloat16).draw()
    assert x16.dtype == torch.bfloat16 and torch.equal(x16, x32.to(torch.bfloat16))


def _brownian(n=200_000):
    return BrownianNoise(SeededNormal([0], (n,), dtype=torch.float64).draw)


def test_brownian_overlapping_increments_have_brownian_covariance():
    """dpmpp_sde asks for (t -> s) then (t -> u) with u < s < t: normalised increments must be N(0, 1)
    with correlation sqrt((t - s) / (t - u))."""
    t, s, u = 5.0, 2.0, 0.5
    w = _brownian()
    z1, z2 = w(t, s)[0], w(t, u)[0]
    for z in (z1, z2):
        assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.015
    corr = torch.corrcoef(torch.stack([z1, z2]))[0, 1].item()
    assert abs(corr - math.sqrt((t - s) / (t - u))) < 0.01
    z3 = w(u, 0.1)[0]  # the next, disjoint interval is independent
    assert abs(torch.corrcoef(torch.stack([z2, z3]))[0, 1].item()) < 0.01


def test_brownian_bridge_fills_in_between_known_points():
    t, u, s = 4.0, 1.0, 3.0
    w = _brownian()
    whole = w(t, u)[0] * math.sqrt(t - u)  # W(u) - W(t)
    part = w(t, s)[0] * math.sqrt(t - s)  # W(s) - W(t), revealed afterwards: a bridge point
    assert abs(part.var().item() - (t - s)) < 0.02 * (t - s)
    cov = ((part - part.mean()) * (whole - whole.mean())).mean().item()
    assert abs(cov - (t - s)) < 0.03
    rest = w(s, u)[0] * math.sqrt(s - u)  # consistent path: the pieces add up exactly
    assert torch.allclose(part + rest, whole, atol=1e-12)


def test_brownian_refuses_to_go_back_up():
    w = _brownian(8)
    w(5.0, 4.0)
    w(4.0, 3.0)
    with pytest.raises(ValueError, match="towards sigma = 0"):
        w(6.0, 5.0)


@pytest.mark.parametrize("seeds", [[1, 2], [1]])
def test_bad_seeds_are_rejected(seeds):
    sigmas = samplers.schedules.get("karras")(4, 0.1, 10.0)
    x = torch.zeros(3, *SHAPE)
    with pytest.raises(ValueError, match="seeds"):
        samplers.sample(toy_denoiser, x, sigmas, "euler_ancestral", seeds=seeds)
    with pytest.raises(ValueError, match="seeds"):
        samplers.sample(toy_denoiser, x, sigmas, "euler_ancestral", seeds=[1, -2, 3])

"""Editing: img2img's start (diffusers' strength rule), inpainting (the kept region stays on the noised
init image for every deterministic sampler and is the init image at the end) and RePaint's resampling
(counted evaluations, count 1 is a plain run, batch invariance)."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from _support import Counting
from edm.gaussian_mixture import GaussianMixture
from samplers import registry
from samplers.editing import Inpainting, img2img_start, img2img_steps, paste

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 4, 4)
KARRAS = samplers.schedules.get("karras")
GM = GaussianMixture.random(SHAPE, k=4, seed=0, dtype=torch.float64)  # couples the pixels: a smooth, exact D


# --- img2img ---------------------------------------------------------------------------------------

STRENGTHS = [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.29, 0.3, 1 / 3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.75, 0.8,
             0.85, 0.9, 0.95, 0.99, 0.999, 1.0]


def diffusers_rule(n: int, strength: float) -> int:
    """StableDiffusionImg2ImgPipeline.get_timesteps: the number of timesteps it keeps."""
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    return n - t_start


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 18, 25, 32, 50, 64, 100, 250, 1000])
def test_img2img_steps_is_diffusers_rule(n):
    for strength in STRENGTHS:
        expected = diffusers_rule(n, strength)
        if expected == 0:
            with pytest.raises(ValueError, match="runs no step"):
                img2img_steps(n, strength)
        else:
            assert img2img_steps(n, strength) == expected, (n, strength)
    assert img2img_steps(n, 1.0) == n
    assert img2img_steps(10, 0.3) == 3 and img2img_steps(100, 0.29) == 28  # floor of 28.999...
    assert img2img_steps(7, 0.5) == 3


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.0000001, 2.0, math.nan, math.inf])
def test_img2img_strength_out_of_range(strength):
    with pytest.raises(ValueError, match="strength"):
        img2img_steps(10, strength)
    with pytest.raises(ValueError, match="strength"):
        img2img_start(torch.zeros(1, 2), torch.zeros(1, 2), [2.0, 1.0, 0.0], strength)


def test_img2img_start():
    sigmas = KARRAS(10, 0.02, 30.0).double()
    g = torch.Generator().manual_seed(0)
    init = torch.rand(2, *SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    latents = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    x, run = img2img_start(init, latents, sigmas, 1.0)  # plain generation: no trace of init
    assert torch.equal(x, latents * float(sigmas[0])) and torch.equal(run, sigmas)
    for strength, taken in ((0.5, 5), (0.35, 3), (0.99, 9), (0.1, 1)):
        x, run = img2img_start(init, latents, sigmas, strength)
        assert torch.equal(run, sigmas[10 - taken:]) and run[-1] == 0 and len(run) == taken + 1
        assert torch.equal(x, init + float(sigmas[10 - taken]) * latents)
    # a list schedule, float32 latents: the init is cast to the latents' dtype
    x, run = img2img_start(init, latents.float(), sigmas.tolist(), 0.5)
    assert x.dtype == torch.float32 and run.tolist() == sigmas[5:].tolist()


@pytest.mark.parametrize("n", [4, 10, 25, 50])
def test_img2img_matches_diffusers_ddim_schedule(n):
    """Through a diffusers DDIMScheduler's timesteps: the part of the schedule diffusers' img2img pipeline
    runs (timesteps[t_start:]) and its start, scheduler.add_noise(init, noise, t_start) in VP variables,
    which is init + sigma * noise in our VE variables."""
    import diffusers
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(n)
    abar = scheduler.alphas_cumprod.double()
    timesteps = scheduler.timesteps
    sigma_of = ((1 - abar) / abar).sqrt()
    sigmas = torch.cat([sigma_of[timesteps], torch.zeros(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(n)
    init = torch.rand(1, *SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(1, *SHAPE, generator=g, dtype=torch.float64)
    for strength in (0.3, 0.5, 0.75, 0.9):
        init_timestep = min(int(n * strength), n)  # diffusers' get_timesteps, as documented
        t_start = max(n - init_timestep, 0)
        kept = timesteps[t_start * scheduler.order:]
        x, run = img2img_start(init, noise, sigmas, strength)
        torch.testing.assert_close(run[:-1], sigma_of[kept], rtol=0, atol=0)
        vp = scheduler.add_noise(init, noise, kept[:1])
        torch.testing.assert_close(x * abar[kept[0]].sqrt(), vp, rtol=1e-12, atol=1e-12)


# --- inpainting ------------------------------------------------------------------------------------


def _problem(seeds, mask_kind="left"):
    latents = samplers.noise.latents(seeds, SHAPE, dtype=torch.float64)
    init = GM.sample(len(seeds), generator=torch.Generator().manual_seed(99))
    mask = torch.zeros(1, *SHAPE, dtype=torch.float64)
    if mask_kind == "left":
        mask[..., :2] = 1  # generate the two left columns, keep the rest
    else:  # per channel: generate channel 0's top half
        mask[:, 0, :2] = 1
    return init, mask, latents


def _start(init, mask, latents, sigma0):
    """The state an inpainting run starts from: the kept region noised from the init image (as edm
    generate does)."""
    return torch.where(mask.bool(), latents * sigma0, init + latents * sigma0)


def test_inpainting_wrapper_output():
    init, mask, latents = _problem([0, 1, 2])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64) * 2
    sigma = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    seen = []

    def denoiser(x_in, sigma, **cond):
        seen.append(x_in)
        return GM(x_in, sigma)

    out = Inpainting(denoiser, init, mask, latents)(x, sigma)
    keep = ~mask.bool().expand_as(x)
    assert torch.equal(out[keep], init[keep])  # exactly the init image where it keeps
    x_in = torch.where(keep, init + sigma[:, None, None, None] * latents, x)
    torch.testing.assert_close(seen[0], x_in, rtol=0, atol=1e-15)
    torch.testing.assert_close(out[~keep], GM(x_in, sigma)[~keep], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="0 \\(keep\\) or 1"):
        Inpainting(denoiser, init, mask * 0.5, latents)
    with pytest.raises(ValueError, match="broadcast"):
        Inpainting(denoiser, init, mask, latents[..., :3])


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpm_2", "lms"])
@pytest.mark.parametrize("mask_kind", ["left", "channel"])
def test_inpainting_keeps_the_known_region_on_the_noised_init(sampler, mask_kind):
    seeds = [3, 1, 4]
    init, mask, latents = _problem(seeds, mask_kind)
    sigmas = KARRAS(8, 0.02, 20.0)
    x = _start(init, mask, latents, 20.0)
    keep = ~mask.bool().expand_as(x)
    states = []
    out = samplers.sample(Inpainting(GM, init, mask, latents), x, sigmas, sampler, seeds=seeds,
                          callback=lambda info: states.append((info["x"], info["sigma"])))
    assert len(states) == 8
    for state, sigma in states:
        known = init + sigma * latents
        torch.testing.assert_close(state[keep], known[keep], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[keep], init[keep], rtol=0, atol=1e-12)
    final = paste(out, init, mask)
    assert torch.equal(final[keep], init[keep])
    assert torch.equal(final[~keep], out[~keep])
    assert (final[~keep] - init[~keep]).abs().max() > 1e-2  # the generated region is new


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_inpainting_batch_invariance(sampler):
    seeds = [3, 1, 4]
    init, mask, latents = _problem(seeds)
    sigmas = KARRAS(6, 0.02, 20.0)

    def run(idx):
        wrapped = Inpainting(GM, init[idx], mask, latents[idx])
        x = _start(init[idx], mask, latents[idx], 20.0)
        out = samplers.sample(wrapped, x, sigmas, sampler, seeds=[seeds[i] for i in idx])
        return paste(out, init[idx], mask)

    together = run([0, 1, 2])
    assert torch.equal(together, torch.cat([run([i]) for i in range(3)]))
    assert torch.equal(together[[2, 0, 1]], run([2, 0, 1]))


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_inpainting_with_a_stochastic_sampler(sampler):
    seeds = [3, 1, 4]
    init, mask, latents = _problem(seeds)
    sigmas = KARRAS(8, 0.02, 20.0)
    x = _start(init, mask, latents, 20.0)
    out = samplers.sample(Inpainting(GM, init, mask, latents), x, sigmas, sampler, seeds=seeds)
    keep = ~mask.bool().expand_as(x)
    final = paste(out, init, mask)
    assert torch.equal(final[keep], init[keep])
    assert (final[~keep] - init[~keep]).abs().max() > 1e-2
    ode = samplers.sample(Inpainting(GM, init, mask, latents), x, sigmas, "euler")
    assert (out[~keep] - ode[~keep]).abs().max() > 1e-3  # the noise really entered


# --- RePaint's resampling --------------------------------------------------------------------------




def _by_hand(name, steps, jump, count):
    """Evaluations of RePaint over a schedule ending in 0: parts of ``jump`` steps, all but the last solved
    ``count`` times; a part ending above 0 costs every step in full, the last part's final step costs
    ``last``."""
    per_step, last = samplers.get(name).step_costs()
    total = 0
    for a in range(0, steps, jump):
        b = min(a + jump, steps)
        if b < steps:
            total += count * (b - a) * per_step
        else:
            total += (b - a - 1) * per_step + last
    return total


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "euler_ancestral", "dpmpp_sde", "euler", "dpm_2"])
@pytest.mark.parametrize("resample", [(2, 3), (4, 2), (1, 2), (3, 4), (10, 3)])
def test_resample_counts(sampler, resample):
    seeds = [5, 6]
    sigmas = KARRAS(7, 0.02, 20.0)
    init, mask, latents = _problem(seeds)
    model = Counting(Inpainting(GM, init, mask, latents))
    x = _start(init, mask, latents, 20.0)
    steps = []
    samplers.sample(model, x, sigmas, sampler, seeds=seeds, resample=resample,
                    callback=lambda info: steps.append(info["i"]))
    expected = registry.nfe_on(sampler, sigmas, resample=resample)
    assert model.calls == expected == _by_hand(sampler, 7, *resample)
    # the steps visited: each part repeated count times (but the last)
    jump, count = resample
    order = []
    for a in range(0, 7, jump):
        b = min(a + jump, 7)
        order += list(range(a, b)) * (count if b < 7 else 1)
    assert steps == order


def test_resample_count_by_hand():
    sigmas = KARRAS(6, 0.02, 20.0)
    assert registry.nfe_on("euler", sigmas, resample=(2, 3)) == 2 * 3 + 2 * 3 + 2
    assert registry.nfe_on("heun", sigmas, resample=(2, 3)) == 4 * 3 + 4 * 3 + 3
    assert registry.nfe_on("heun", sigmas, resample=(4, 2)) == 8 * 2 + 3
    assert registry.nfe_on("heun", sigmas, resample=(6, 5)) == 11  # one part: no resampling


@pytest.mark.parametrize("sampler", ["heun", "euler_ancestral", "dpmpp_sde", "dpmpp_2m"])
def test_resample_count_one_is_a_plain_run(sampler):
    seeds = [5, 6, 7]
    init, mask, latents = _problem(seeds)
    sigmas = KARRAS(6, 0.02, 20.0)
    x = _start(init, mask, latents, 20.0)
    wrapped = Inpainting(GM, init, mask, latents)
    plain = samplers.sample(wrapped, x, sigmas, sampler, seeds=seeds)
    for jump in (1, 2, 6):
        again = samplers.sample(wrapped, x, sigmas, sampler, seeds=seeds, resample=(jump, 1))
        assert torch.equal(again, plain)
    resampled = samplers.sample(wrapped, x, sigmas, sampler, seeds=seeds, resample=(2, 2))
    assert (resampled - plain).abs().max() > 1e-3  # the jumps add fresh noise
    keep = ~mask.bool().expand_as(x)
    assert torch.equal(paste(resampled, init, mask)[keep], init[keep])


def test_resample_jump_is_the_forward_process():
    """One part of one step solved twice with euler and D = 0: x -> (s1/s0) x, then up to s0 with fresh
    noise of std sqrt(s0^2 - s1^2), then down again."""
    draws = []

    def zero(x, sigma, **cond):
        draws.append(x.clone())
        return torch.zeros_like(x)

    x = torch.ones(1, 3, dtype=torch.float64) * 4.0
    out = samplers.sample(zero, x, [4.0, 1.0, 0.0], "euler", seeds=[0], resample=(1, 2))
    assert len(draws) == 3
    torch.testing.assert_close(draws[0], x, rtol=0, atol=0)
    jumped = draws[1]  # x after the first solve (1.0) and the jump back up to 4.0
    z = (jumped - 1.0) / math.sqrt(4.0**2 - 1.0**2)
    assert z.abs().max() > 1e-3  # fresh noise
    torch.testing.assert_close(draws[2], jumped / 4.0, rtol=0, atol=1e-15)  # solved down again
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun", "dpmpp_sde"])
def test_resample_batch_invariance(sampler):
    seeds = [3, 1, 4]
    init, mask, latents = _problem(seeds)
    sigmas = KARRAS(6, 0.02, 20.0)

    def run(idx):
        wrapped = Inpainting(GM, init[idx], mask, latents[idx])
        x = _start(init[idx], mask, latents[idx], 20.0)
        return samplers.sample(wrapped, x, sigmas, sampler, seeds=[seeds[i] for i in idx], resample=(2, 3))

    together = run([0, 1, 2])
    assert torch.equal(together, torch.cat([run([i]) for i in range(3)]))
    assert torch.equal(together[[1, 2, 0]], run([1, 2, 0]))


def test_resample_errors():
    x = torch.ones(1, 3, dtype=torch.float64)
    for bad in ((0, 2), (2, 0), (1.5, 2), (True, 2), (2,), "ab", 3):
        with pytest.raises(ValueError, match="resample"):
            samplers.sample(lambda x, s: x, x, [2.0, 1.0, 0.0], "euler", resample=bad)
    with pytest.raises(ValueError, match="noise override"):
        samplers.sample(lambda x, s: x, x, [2.0, 1.0, 0.0], "euler", resample=(1, 2),
                        noise=lambda s, t: torch.zeros_like(x))

"""CFG++ (Chung et al. 2024) as the samplers run it: each declaring sampler against its update written out
here, on a toy whose conditional and unconditional denoisers are exact (Gaussian data, a different mean
and spread per condition); with CFG++ off every sampler is unchanged bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers.guidance import CFGPlusPlus, ClassifierFreeGuidance, Thresholded
from samplers.registry import cfg_pp_samplers

MU_COND, S_COND = 1.0, 0.5
MU_UNCOND, S_UNCOND = -0.5, 1.5
W = 1.5
SIGMAS = [8.0, 2.0, 0.6, 0.0]  # three steps
DIM = 4


def gaussian_x0(x, sigma, mu, s):
    """E[y | x] for y ~ N(mu, s^2) per coordinate and x = y + sigma n."""
    return (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)


def toy(x, sigma, class_labels):
    """The conditional model for labelled rows, the unconditional one for all-zero (dropped) labels."""
    sigma = sigma.reshape(-1, 1)
    dropped = (class_labels.abs().sum(dim=1) == 0).reshape(-1, 1)
    return torch.where(dropped, gaussian_x0(x, sigma, MU_UNCOND, S_UNCOND),
                       gaussian_x0(x, sigma, MU_COND, S_COND))


def d_cond(x, s):
    return gaussian_x0(x, s, MU_COND, S_COND)


def d_uncond(x, s):
    return gaussian_x0(x, s, MU_UNCOND, S_UNCOND)


def d_guided(x, s):
    return d_cond(x, s) + W * (d_cond(x, s) - d_uncond(x, s))


def ancestral(s, s_next, eta=1.0):
    if eta == 0 or s_next == 0:
        return s_next, 0.0
    up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    return math.sqrt(s_next**2 - up**2), up


class Draws:
    """A fixed list of normal draws handed out in order: the sampler's noise and the oracle's alike."""

    def __init__(self, count=8):
        self.draws = list(torch.randn(count, 2, DIM, generator=torch.Generator().manual_seed(5),
                                      dtype=torch.float64))

    def __call__(self, *_):
        return self.draws.pop(0)


# --- the CFG++ updates, written out (ComfyUI's *_cfg_pp, in sigma form with alpha = 1) --------------


def euler_ancestral_oracle(x, sigmas, noise, guided_x0, uncond_x0, eta=1.0):
    for s, s_next in zip(sigmas, sigmas[1:]):
        if s_next == 0:
            x = guided_x0(x, s)
            continue
        down, up = ancestral(s, s_next, eta)
        x = guided_x0(x, s) + down * (x - uncond_x0(x, s)) / s
        if up:
            x = x + up * noise()
    return x


def dpmpp_2m_oracle(x, sigmas, noise, guided_x0, uncond_x0):
    old_uncond = None
    for i, (s, s_next) in enumerate(zip(sigmas, sigmas[1:])):
        guided, uncond = guided_x0(x, s), uncond_x0(x, s)
        if s_next == 0:
            x = guided
            continue
        h = math.log(s / s_next)
        mix = -math.exp(-h) * uncond
        if old_uncond is not None:
            r = math.log(sigmas[i - 1] / s) / h
            mix = mix - math.expm1(-h) / (2 * r) * (guided - old_uncond)
        x = guided + mix + math.exp(-h) * x
        old_uncond = uncond
    return x


def dpmpp_2s_ancestral_oracle(x, sigmas, noise, guided_x0, uncond_x0):
    for s, s_next in zip(sigmas, sigmas[1:]):
        guided, uncond = guided_x0(x, s), uncond_x0(x, s)
        down, up = ancestral(s, s_next)
        if down == 0:
            x = guided
        else:
            s_mid = math.sqrt(s * down)  # r = 1/2 in lambda
            shifted = x + (guided - uncond)
            x_2 = (s_mid / s) * shifted + (1 - s_mid / s) * guided
            x = (down / s) * shifted + (1 - down / s) * guided_x0(x_2, s_mid)
        if s_next > 0:
            x = x + up * noise()
    return x


def res_multistep_oracle(x, sigmas, noise, guided_x0, uncond_x0, eta=0.0):
    """RES multistep in ComfyUI's b1, b2 form (c2 from the previous step to its sigma_down). Under CFG++
    the step runs from x + (D_guided - D_uncond) with D_guided as its x0 and the previous step's
    unconditional x0 as the history, as dpmpp_2m_cfg_pp; ComfyUI's res_multistep_cfg_pp weights
    D_uncond instead of D_guided in the b1 term (see the module's docstring)."""
    old = None
    for i, (s, s_next) in enumerate(zip(sigmas, sigmas[1:])):
        guided, uncond = guided_x0(x, s), uncond_x0(x, s)
        down, up = ancestral(s, s_next, eta)
        shifted = x + (guided - uncond)
        if down == 0:
            x = guided
        elif old is None:
            x = guided + down * (shifted - guided) / s
        else:
            old_uncond, old_down = old
            h = math.log(s / down)
            c2 = (math.log(old_down / sigmas[i - 1])) / h  # (t_prev - t_old) / h with t = -log sigma
            phi1 = -math.expm1(-h) / h
            phi2 = (phi1 - 1) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = math.exp(-h) * shifted + h * (b1 * guided + b2 * old_uncond)
        if s_next > 0 and up:
            x = x + up * noise()
        old = (uncond, down)
    return x


def gradient_estimation_oracle(x, sigmas, noise, guided_x0, uncond_x0, gamma=2.0):
    old_d = None
    for s, s_next in zip(sigmas, sigmas[1:]):
        guided, d = guided_x0(x, s), (x - uncond_x0(x, s)) / s
        if s_next == 0:
            x = guided
        else:
            x = guided + d * s_next
            if old_d is not None:
                x = x + (gamma - 1) * (d - old_d) * (s_next - s)
        old_d = d
    return x


#: sampler -> oracle(x, sigmas, noise, guided_x0, uncond_x0)
ORACLES = {
    "euler": lambda *args: euler_ancestral_oracle(*args, eta=0.0),
    "ddim": lambda *args: euler_ancestral_oracle(*args, eta=0.0),
    "euler_ancestral": euler_ancestral_oracle,
    "dpmpp_2m": dpmpp_2m_oracle,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral_oracle,
    "res_multistep": res_multistep_oracle,
    "res_multistep_ancestral": lambda *args: res_multistep_oracle(*args, eta=1.0),
    "gradient_estimation": gradient_estimation_oracle,
}


def start():
    latents = torch.randn(2, DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    return latents * SIGMAS[0], {"class_labels": labels}


def test_every_declared_sampler_has_an_oracle_here():
    assert sorted(ORACLES) == cfg_pp_samplers()


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_cfg_pp_sampler_equals_its_update(name):
    x, cond = start()
    got = samplers.sample(CFGPlusPlus(toy, W), x, SIGMAS, name, cond=cond, noise=Draws())
    want = ORACLES[name](x, SIGMAS, Draws(), d_guided, d_uncond)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plain = samplers.sample(ClassifierFreeGuidance(toy, W), x, SIGMAS, name, cond=cond, noise=Draws())
    assert (got - plain).abs().max() > 1e-3  # CFG++ is another sampler than plain CFG on this toy


class SamePair:
    """A denoiser offering with_unconditional whose two outputs are one tensor: CFG++ that changes nothing."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def __call__(self, x, sigma, **cond):
        return self.denoiser(x, sigma, **cond)

    def with_unconditional(self, x, sigma, **cond):
        out = self.denoiser(x, sigma, **cond)
        return out, out


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_without_cfg_pp_the_numbers_are_unchanged_bit_for_bit(name):
    """The loops' CFG++ path with target = direction is the plain path: same bits, same draws."""
    x, cond = start()
    plain = ClassifierFreeGuidance(toy, W)
    got = samplers.sample(SamePair(plain), x, SIGMAS, name, cond=cond, noise=Draws())
    want = samplers.sample(plain, x, SIGMAS, name, cond=cond, noise=Draws())
    assert torch.equal(got, want)


def test_res_multistep_ancestral_at_eta_0_is_res_multistep():
    x, cond = start()
    guided = ClassifierFreeGuidance(toy, W)
    got = samplers.sample(guided, x, SIGMAS, "res_multistep_ancestral", cond=cond, eta=0.0)
    assert torch.equal(got, samplers.sample(guided, x, SIGMAS, "res_multistep", cond=cond))


def test_plain_new_samplers_equal_their_updates():
    """Without guidance, gradient_estimation and res_multistep_ancestral are ComfyUI's: the oracles with
    one denoiser as both target and direction."""
    x, cond = start()

    def model(x, sigma, class_labels):
        return d_cond(x, sigma.reshape(-1, 1))

    for name in ("gradient_estimation", "res_multistep_ancestral"):
        got = samplers.sample(model, x, SIGMAS, name, cond=cond, noise=Draws())
        want = ORACLES[name](x, SIGMAS, Draws(), d_cond, d_cond)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_guider_gives_both_predictions_of_one_call():
    x, cond = start()
    calls = []

    def counted(x, sigma, class_labels):
        calls.append(x.shape[0])
        return toy(x, sigma, class_labels)

    sigma = torch.full((2,), 2.0, dtype=torch.float64)
    guided, uncond = CFGPlusPlus(counted, W).with_unconditional(x, sigma, **cond)
    assert calls == [4]
    assert torch.equal(guided, ClassifierFreeGuidance(toy, W)(x, sigma, **cond))
    torch.testing.assert_close(uncond, d_uncond(x, 2.0), rtol=1e-14, atol=0)
    assert torch.equal(CFGPlusPlus(toy, W)(x, sigma, **cond), guided)
    assert CFGPlusPlus(toy, 0.0).evaluations == 2  # CFG++ needs the unconditional prediction even at w = 0
    _, uncond_0 = CFGPlusPlus(toy, 0.0).with_unconditional(x, sigma, **cond)
    torch.testing.assert_close(uncond_0, d_uncond(x, 2.0), rtol=1e-14, atol=0)


def test_outside_the_guidance_interval_a_step_is_plain():
    x, cond = start()
    sigma = torch.tensor([2.0, 0.5], dtype=torch.float64)
    guided, direction = CFGPlusPlus(toy, W, interval=(1.0, 5.0)).with_unconditional(x, sigma, **cond)
    torch.testing.assert_close(guided[0], d_guided(x[:1], 2.0)[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(direction[0], d_uncond(x[:1], 2.0)[0], rtol=1e-14, atol=0)
    assert torch.equal(guided[1], direction[1])
    torch.testing.assert_close(guided[1], d_cond(x[1:], 0.5)[0], rtol=1e-14, atol=0)


def test_thresholding_forwards_the_pair_with_the_guided_part_thresholded():
    x, cond = start()
    sigma = torch.full((2,), 2.0, dtype=torch.float64)
    wrapped = Thresholded(CFGPlusPlus(toy, W), "static", limit=0.25)
    guided, uncond = wrapped.with_unconditional(x, sigma, **cond)
    assert torch.equal(guided, d_guided(x, 2.0).clamp(-0.25, 0.25))
    torch.testing.assert_close(uncond, d_uncond(x, 2.0), rtol=1e-14, atol=0)
    assert not hasattr(Thresholded(ClassifierFreeGuidance(toy, W)), "with_unconditional")
    got = samplers.sample(wrapped, x, SIGMAS, "euler", cond=cond)
    want = x
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        want = d_guided(want, s).clamp(-0.25, 0.25) + s_next / s * (want - d_uncond(want, s))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_inpainting_forwards_the_pair_keeping_the_known_region_in_both():
    from samplers.editing import Inpainting

    x, cond = start()
    sigma = torch.full((2,), 2.0, dtype=torch.float64)
    init = torch.full((1, DIM), 0.3, dtype=torch.float64)
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    pair = Inpainting(CFGPlusPlus(toy, W), init, mask, x / SIGMAS[0]).with_unconditional(x, sigma, **cond)
    kept = init.expand(2, DIM)[:, :2]
    blended = torch.cat([kept + 2.0 * x[:, :2] / SIGMAS[0], x[:, 2:]], dim=1)
    for got, want in zip(pair, (d_guided(blended, 2.0), d_uncond(blended, 2.0))):
        assert torch.equal(got[:, :2], kept)
        torch.testing.assert_close(got[:, 2:], want[:, 2:], rtol=1e-14, atol=1e-15)
    assert not hasattr(Inpainting(toy, init, mask, x), "with_unconditional")


def test_a_sampler_that_does_not_declare_cfg_pp_is_refused():
    x, cond = start()
    with pytest.raises(ValueError, match="does not take CFG\\+\\+") as caught:
        samplers.sample(CFGPlusPlus(toy, W), x, SIGMAS, "heun", cond=cond)
    message = str(caught.value)
    assert "\n" not in message and ", ".join(cfg_pp_samplers()) in message
    assert not samplers.get("heun").cfg_pp and samplers.get("euler").cfg_pp

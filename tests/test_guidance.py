"""Classifier-free guidance wrapper: the formula, one batched call, every sampler, batch invariance."""

from __future__ import annotations

import pytest
import torch

import edm
import samplers
from edm import networks
from samplers.guidance import ClassifierFreeGuidance, drop_class_labels, guided

K = 4  # classes
SHAPE = (2, 3, 3)


class ToyDenoiser:
    """A nonlinear, elementwise-per-sample conditional denoiser that records its batch sizes."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(K, *SHAPE, generator=g, dtype=torch.float64)
        self.calls: list[int] = []

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        shift = 0
        if class_labels is not None:
            shift = torch.einsum("bk,k...->b...", class_labels.to(x.dtype), self.weight)
        return torch.tanh(x / (1 + sigma**2) + shift / (1 + sigma))


def one_hot(labels):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), K).to(torch.float64)


def reference(denoiser, w, x, sigma, labels):
    """The guidance formula from two separate calls."""
    d_cond = denoiser(x, sigma, class_labels=labels)
    d_uncond = denoiser(x, sigma, class_labels=torch.zeros_like(labels))
    return d_cond + w * (d_cond - d_uncond)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, *SHAPE, generator=g, dtype=torch.float64) * 3
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 7.0], dtype=torch.float64)
    return x, sigma, one_hot([0, 1, 2, 3, 1])


@pytest.mark.parametrize("w", [0.5, 2.0, -0.5, 7.0])
def test_equals_formula_from_two_calls_in_one_batched_call(inputs, w):
    x, sigma, labels = inputs
    toy = ToyDenoiser()
    out = ClassifierFreeGuidance(toy, w)(x, sigma, class_labels=labels)
    assert toy.calls == [2 * len(x)]  # one call on cond + uncond
    torch.testing.assert_close(out, reference(ToyDenoiser(), w, x, sigma, labels), rtol=0, atol=1e-14)


@pytest.mark.parametrize("sigma", [0.7, torch.tensor(0.7, dtype=torch.float64),
                                   torch.full((5, 1, 1, 1), 0.7, dtype=torch.float64)])
def test_sigma_forms(inputs, sigma):
    x, _, labels = inputs
    out = ClassifierFreeGuidance(ToyDenoiser(), 1.5)(x, sigma, class_labels=labels)
    expected = reference(ToyDenoiser(), 1.5, x, torch.full((5,), 0.7, dtype=torch.float64), labels)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_w_zero_is_the_conditional_denoiser(inputs):
    x, sigma, labels = inputs
    toy = ToyDenoiser()
    out = ClassifierFreeGuidance(toy, 0)(x, sigma, class_labels=labels)
    assert toy.calls == [len(x)]  # no unconditional evaluation at all
    assert torch.equal(out, ToyDenoiser()(x, sigma, class_labels=labels))
    assert guided(toy, 0.0) is toy
    assert isinstance(guided(toy, 1.0), ClassifierFreeGuidance)
    assert ClassifierFreeGuidance(toy, 2.5).guidance_scale == 3.5


def test_custom_uncond(inputs):
    x, sigma, labels = inputs
    null = one_hot([3])  # a [1, K] "null class": broadcast over the batch
    toy = ToyDenoiser()
    expected = toy(x, sigma, class_labels=labels)
    expected = expected + 2 * (expected - toy(x, sigma, class_labels=null.expand(5, K)))
    for uncond in ({"class_labels": null}, lambda cond: {**cond, "class_labels": null}):
        out = ClassifierFreeGuidance(ToyDenoiser(), 2.0, negative=uncond)(x, sigma, class_labels=labels)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_errors(inputs):
    x, sigma, labels = inputs
    with pytest.raises(ValueError, match="class_labels"):
        ClassifierFreeGuidance(ToyDenoiser(), 1.0)(x, sigma)
    with pytest.raises(ValueError, match="class_labels"):
        drop_class_labels({})
    with pytest.raises(ValueError, match="finite"):
        ClassifierFreeGuidance(ToyDenoiser(), float("nan"))
    with pytest.raises(ValueError, match="number"):
        ClassifierFreeGuidance(ToyDenoiser(), "strong")
    with pytest.raises(ValueError, match="negative"):
        ClassifierFreeGuidance(ToyDenoiser(), 1.0, negative=3)
    with pytest.raises(ValueError, match="same arguments"):
        ClassifierFreeGuidance(ToyDenoiser(), 1.0, negative=lambda cond: {})(x, sigma, class_labels=labels)
    with pytest.raises(ValueError, match="batch dimension"):
        ClassifierFreeGuidance(ToyDenoiser(), 1.0, negative={"class_labels": one_hot([1, 2])})(
            x, sigma, class_labels=labels)


def test_protocol_attributes_are_forwarded():
    class Discrete(ToyDenoiser):
        sigma_min, sigma_max, sigma_data = 0.01, 10.0, 0.5

        def round_sigma(self, sigma):
            return torch.round(torch.as_tensor(sigma) * 10) / 10

    wrapped = ClassifierFreeGuidance(Discrete(), 1.0)
    assert (wrapped.sigma_min, wrapped.sigma_max, wrapped.sigma_data) == (0.01, 10.0, 0.5)
    assert float(wrapped.round_sigma(0.34)) == pytest.approx(0.3)
    plain = ClassifierFreeGuidance(ToyDenoiser(), 1.0)
    assert not hasattr(plain, "round_sigma")  # samplers then treat it as continuous-time
    with pytest.raises(AttributeError):
        plain.sigmas  # noqa: B018


SAMPLERS = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
            "dpmpp_2m_sde", "dpmpp_3m_sde", "edm", "ddim"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_with_guidance(sampler):
    """Sampling the wrapper equals sampling the formula written out with two separate calls."""
    seeds = [3, 1, 4, 1000]
    labels = one_hot([0, 2, 3, 1])
    sigmas = samplers.schedules.get("karras")(6, 0.02, 20.0)
    x = samplers.noise.latents(seeds, SHAPE, dtype=torch.float64) * sigmas[0]
    toy = ToyDenoiser()

    def by_hand(x, sigma, class_labels):
        return reference(toy, 1.5, x, sigma, class_labels)

    expected = samplers.sample(by_hand, x, sigmas, sampler, seeds=seeds, cond={"class_labels": labels})
    wrapper = ClassifierFreeGuidance(ToyDenoiser(), 1.5)
    out = samplers.sample(wrapper, x, sigmas, sampler, seeds=seeds, cond={"class_labels": labels})
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert set(wrapper.denoiser.calls) == {2 * len(seeds)}
    if not samplers.get(sampler).adaptive:
        assert len(wrapper.denoiser.calls) == samplers.get(sampler).nfe(6)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "heun"])
def test_batch_invariance(sampler):
    """A guided sample is bit-identical whatever batch it is sampled in, and wherever in it."""
    seeds = [7, 0, 12, 5, 3]
    labels = one_hot([1, 0, 3, 3, 2])
    sigmas = samplers.schedules.get("karras")(5, 0.02, 20.0)
    denoiser = ClassifierFreeGuidance(ToyDenoiser(), 2.0)

    def run(idx):
        x = samplers.noise.latents([seeds[i] for i in idx], SHAPE, dtype=torch.float64) * sigmas[0]
        return samplers.sample(denoiser, x, sigmas, sampler, seeds=[seeds[i] for i in idx],
                               cond={"class_labels": labels[idx]})

    together = run(list(range(5)))
    alone = torch.cat([run([i]) for i in range(5)])
    shuffled = run([4, 2, 0, 3, 1])[torch.tensor([2, 4, 1, 3, 0])]
    assert torch.equal(together, alone)
    assert torch.equal(together, shuffled)


def test_with_an_edm_network():
    """On a real (tiny, random) class-conditional UNet under EDM preconditioning."""
    torch.manual_seed(0)
    backbone = networks.build_network("unet", in_channels=1, resolution=8, model_channels=8, channel_mult=[1],
                                      num_blocks=1, attn_resolutions=[], num_classes=K, channels_per_head=8)
    for weight in backbone.parameters():  # zero-initialised output and residual convolutions: randomise
        if weight.ndim > 1 and not weight.any():
            torch.nn.init.normal_(weight, std=0.1)
    denoiser = edm.Precond(backbone.double().eval(), "edm", sigma_data=0.5)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 5.0], dtype=torch.float64)
    labels = one_hot([0, 3, 1])
    with torch.no_grad():
        out = ClassifierFreeGuidance(denoiser, 1.5)(x, sigma, class_labels=labels)
        expected = reference(denoiser, 1.5, x, sigma, labels)
        conditional = denoiser(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert (out - conditional).abs().max() > 1e-3  # the class matters: guidance is not a no-op here

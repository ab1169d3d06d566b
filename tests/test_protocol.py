"""samplers.protocol: the denoiser protocol, its optional attributes and the forwarding helper."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.guidance import ClassifierFreeGuidance
from samplers.protocol import OPTIONAL_ATTRIBUTE_DOCS, OPTIONAL_ATTRIBUTES, Denoiser, forward_attribute


class Discrete:
    sigma_min, sigma_max, sigma_data = 0.1, 10.0, 0.5
    sigmas = torch.tensor([0.1, 1.0, 10.0])

    def round_sigma(self, sigma):
        return sigma

    def __call__(self, x, sigma, **cond):
        return x * 0


def test_exports_and_docs():
    assert samplers.Denoiser is Denoiser and samplers.OPTIONAL_ATTRIBUTES is OPTIONAL_ATTRIBUTES
    assert OPTIONAL_ATTRIBUTES == ("sigma_min", "sigma_max", "sigma_data", "sigmas", "round_sigma")
    assert all(OPTIONAL_ATTRIBUTE_DOCS[name] for name in OPTIONAL_ATTRIBUTES)


def test_denoiser_is_runtime_checkable():
    assert isinstance(Discrete(), Denoiser)
    assert isinstance(lambda x, sigma: x, Denoiser)
    assert not isinstance(3, Denoiser)


def test_forward_attribute():
    inner = Discrete()
    for name in OPTIONAL_ATTRIBUTES:
        assert forward_attribute(inner, name) is not None
    with pytest.raises(AttributeError):
        forward_attribute(inner, "__call__")  # not a protocol attribute, though inner has it
    with pytest.raises(AttributeError):
        forward_attribute(lambda x, sigma: x, "round_sigma")  # a protocol attribute inner lacks


def test_guidance_forwards_exactly_the_protocol_attributes():
    wrapped = ClassifierFreeGuidance(Discrete(), w=1.0)
    assert all(hasattr(wrapped, name) for name in OPTIONAL_ATTRIBUTES)
    assert wrapped.sigma_data == 0.5
    plain = ClassifierFreeGuidance(lambda x, sigma, **cond: x, w=1.0)
    assert not any(hasattr(plain, name) for name in OPTIONAL_ATTRIBUTES)
    with pytest.raises(AttributeError, match="has no attribute 'anything'"):
        plain.anything  # noqa: B018

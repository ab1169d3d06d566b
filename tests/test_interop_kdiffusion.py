"""Models plug into k-diffusion and k-diffusion's models plug into ours (float64, <= 1e-6).

- our ``edm.Precond`` around a small random network, sampled by k-diffusion's ``sample_heun`` and by
  our ``heun``;
- k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` sampled by our samplers,
  against our ``edm.DiscreteTimeDenoiser`` around the same network.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import edm
import samplers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import k_diffusion.external as K_external
    import k_diffusion.sampling as K_sampling

TOL = 1e-6
SHAPE = (2, 8, 8)
NUM_CLASSES = 3


class TinyBackbone(nn.Module):
    """F(x_in, c_noise, class_labels=None): two convolutions modulated by the noise level and class."""

    def __init__(self, channels=SHAPE[0], hidden=8, num_classes=NUM_CLASSES):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.noise = nn.Linear(1, hidden)
        self.label = nn.Linear(num_classes, hidden, bias=False)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x_in, c_noise, class_labels=None):
        c_noise = torch.as_tensor(c_noise, dtype=x_in.dtype, device=x_in.device).reshape(-1, 1)
        h = self.conv_in(x_in) + self.noise(c_noise.expand(x_in.shape[0], 1))[:, :, None, None]
        if class_labels is not None:
            h = h + self.label(class_labels.to(x_in.dtype))[:, :, None, None]
        return self.conv_out(torch.tanh(h))


def backbone() -> TinyBackbone:
    torch.manual_seed(0)
    return TinyBackbone().double().eval().requires_grad_(False)


def start(sigma_max: float, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn((batch, *SHAPE), generator=g, dtype=torch.float64) * sigma_max


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("scheme", ["edm", "vp"])
def test_our_precond_in_k_diffusion_sample_heun(scheme):
    denoiser = edm.Precond(backbone(), scheme)
    sigma_min, sigma_max = (0.002, 80.0) if scheme == "edm" else (0.01, 30.0)
    sigmas = samplers.schedules.get("karras")(10, sigma_min, sigma_max).to(torch.float64)
    x = start(float(sigmas[0]))
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), NUM_CLASSES).double()

    theirs = K_sampling.sample_heun(denoiser, x, sigmas, extra_args={"class_labels": labels}, disable=True)
    ours = samplers.sample(denoiser, x, sigmas, "heun", cond={"class_labels": labels})
    assert theirs.dtype == ours.dtype == torch.float64
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("prediction, wrapper", [("eps", "DiscreteEpsDDPMDenoiser"),
                                                 ("v", "DiscreteVDDPMDenoiser")])
@pytest.mark.parametrize("sampler", ["heun", "ddim", "dpmpp_2m"])
def test_k_diffusion_discrete_wrapper_in_our_samplers(prediction, wrapper, sampler):
    net = backbone()
    abar = alphas_cumprod()
    theirs_model = getattr(K_external, wrapper)(net, abar, quantize=False)
    ours_model = edm.DiscreteTimeDenoiser(net, abar, prediction=prediction)
    assert torch.allclose(theirs_model.sigmas, ours_model.sigmas.cpu().to(theirs_model.sigmas.dtype))

    sigmas = samplers.schedules.get("karras")(8, float(ours_model.sigma_min), float(ours_model.sigma_max))
    sigmas = sigmas.to(torch.float64)
    x = start(float(sigmas[0]))
    via_k = samplers.sample(theirs_model, x, sigmas, sampler)
    via_ours = samplers.sample(ours_model, x, sigmas, sampler)
    assert torch.isfinite(via_k).all()
    assert (via_k - via_ours).abs().max().item() <= TOL


def test_k_diffusion_schedule_from_wrapper_drives_our_sampler():
    """k-diffusion's own discrete schedule (get_sigmas) is a valid schedule for our samplers."""
    net = backbone()
    theirs_model = K_external.DiscreteEpsDDPMDenoiser(net, alphas_cumprod(), quantize=True)
    ours_model = edm.DiscreteTimeDenoiser(net, alphas_cumprod(), prediction="eps", quantize=True)
    sigmas = theirs_model.get_sigmas(6).to(torch.float64)
    x = start(float(sigmas[0]), batch=2)
    theirs = K_sampling.sample_euler(theirs_model, x, sigmas, disable=True)
    ours = samplers.sample(ours_model, x, sigmas, "euler")
    assert (ours - theirs).abs().max().item() <= TOL

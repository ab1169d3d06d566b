"""Training losses: NVlabs semantics and the weighted-target identity."""

import math

import pytest
import torch
from torch import nn

import edm
from edm.loss import PrecondLoss, SchemeLoss, draw_noise, weighted_target_loss
from edm.wrappers import DiscreteTimeDenoiser

F64 = torch.float64


class ToyBackbone(nn.Module):
    """A small deterministic nonlinear F(x_in, c_noise, class_labels=None)."""

    def __init__(self, channels=3, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(channels, channels, generator=gen, dtype=F64) / channels)
        self.b = nn.Parameter(torch.randn(channels, generator=gen, dtype=F64))

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        c = c_noise.to(x.dtype).reshape(-1, 1, 1, 1)
        h = torch.einsum("ij,bjhw->bihw", self.w.to(x.dtype), x) + self.b.to(x.dtype).reshape(1, -1, 1, 1) * c
        if class_labels is not None:
            h = h + class_labels.to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(h)


def images(seed=0, batch=8, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 4, 4, generator=gen, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# NVlabs training/loss.py, written out by hand with an explicit generator


def nvlabs_edm_loss(net, y, gen, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
    rnd_normal = torch.randn([y.shape[0], 1, 1, 1], generator=gen, dtype=y.dtype)
    sigma = (rnd_normal * P_std + P_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    n = torch.randn(y.shape, generator=gen, dtype=y.dtype) * sigma
    D_yn = net(y + n, sigma)
    return weight * ((D_yn - y) ** 2)


def nvlabs_vp_loss(net, y, gen, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
    rnd_uniform = torch.rand([y.shape[0], 1, 1, 1], generator=gen, dtype=y.dtype)
    t = 1 + rnd_uniform * (epsilon_t - 1)
    sigma = ((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt()
    weight = 1 / sigma**2
    n = torch.randn(y.shape, generator=gen, dtype=y.dtype) * sigma
    return weight * ((net(y + n, sigma) - y) ** 2)


def nvlabs_ve_loss(net, y, gen, sigma_min=0.02, sigma_max=100):
    rnd_uniform = torch.rand([y.shape[0], 1, 1, 1], generator=gen, dtype=y.dtype)
    sigma = sigma_min * ((sigma_max / sigma_min) ** rnd_uniform)
    weight = 1 / sigma**2
    n = torch.randn(y.shape, generator=gen, dtype=y.dtype) * sigma
    return weight * ((net(y + n, sigma) - y) ** 2)


@pytest.mark.parametrize(
    "loss_fn, reference, scheme",
    [
        (edm.EDMLoss(), nvlabs_edm_loss, "edm"),
        (edm.loss.VPLoss(), nvlabs_vp_loss, "vp"),
        (edm.loss.VELoss(), nvlabs_ve_loss, "ve"),
    ],
)
def test_losses_match_nvlabs(loss_fn, reference, scheme):
    net = edm.Precond(ToyBackbone(), scheme)
    y = images()
    got = loss_fn(net, y, generator=torch.Generator().manual_seed(7))
    want = reference(net, y, torch.Generator().manual_seed(7))
    assert got.shape == y.shape and got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_edm_loss_custom_parameters():
    loss_fn = edm.EDMLoss(P_mean=0.3, P_std=0.5, sigma_data=1.0)
    net = edm.Precond(ToyBackbone(), "edm", sigma_data=1.0)
    y = images(1)
    got = loss_fn(net, y, generator=torch.Generator().manual_seed(3))
    want = nvlabs_edm_loss(net, y, torch.Generator().manual_seed(3), P_mean=0.3, P_std=0.5, sigma_data=1.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_loss_passes_labels_and_float32():
    seen = {}

    def denoiser(x, sigma, class_labels=None):
        seen["labels"], seen["sigma_shape"], seen["dtype"] = class_labels, sigma.shape, x.dtype
        return torch.zeros_like(x)

    y = images(dtype=torch.float32)
    labels = torch.arange(8)
    out = edm.EDMLoss()(denoiser, y, labels, generator=torch.Generator().manual_seed(0))
    assert seen["labels"] is labels and seen["sigma_shape"] == (8,) and seen["dtype"] == torch.float32
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_augment_pipe_output_is_used():
    def augment_pipe(images):
        return images.flip(-1), torch.ones(images.shape[0], 9)

    seen = {}

    def denoiser(x, sigma, augment_labels=None):
        seen["augment_labels"] = augment_labels
        return x * 0

    y = images()
    out = edm.EDMLoss()(denoiser, y, generator=torch.Generator().manual_seed(0), augment_pipe=augment_pipe)
    assert seen["augment_labels"].shape == (8, 9)
    gen = torch.Generator().manual_seed(0)
    sigma = (torch.randn(8, generator=gen, dtype=F64) * 1.2 - 1.2).exp().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * y.flip(-1) ** 2)


# ---------------------------------------------------------------------------------------------
# Weighted-target form == lambda ||D - y||^2


@pytest.mark.parametrize("scheme", ["edm", "vp", "ve", "iddpm"])
def test_weighted_target_equals_weighted_denoiser_error(scheme):
    net = edm.Precond(ToyBackbone(seed=1), scheme)
    y = images(2)
    gen = torch.Generator().manual_seed(11)
    sigma, n = draw_noise(net.scheme, y, gen)
    labels = torch.arange(8)

    lam = net.scheme.loss_weight(sigma).reshape(-1, 1, 1, 1)
    direct = lam * (net(y + n, sigma, class_labels=labels) - y) ** 2
    via_target = weighted_target_loss(net, y, n, sigma, class_labels=labels)
    torch.testing.assert_close(via_target, direct, rtol=1e-9, atol=1e-12)

    # and the two loss objects agree draw for draw
    a = PrecondLoss()(net, y, labels, generator=torch.Generator().manual_seed(5))
    b = SchemeLoss(scheme)(net, y, labels, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_weighted_target_gradients_match():
    net = edm.Precond(ToyBackbone(seed=2), "edm")
    y = images(3)
    sigma, n = draw_noise(net.scheme, y, torch.Generator().manual_seed(1))
    weighted_target_loss(net, y, n, sigma).sum().backward()
    g_target = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (net.scheme.loss_weight(sigma).reshape(-1, 1, 1, 1) * (net(y + n, sigma) - y) ** 2).sum().backward()
    for a, b in zip(g_target, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_eps_wrapper_loss_is_plain_eps_mse():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)

    def backbone(x, t):
        return torch.tanh(x * 2 + t.reshape(-1, 1, 1, 1) / 1000)

    D = DiscreteTimeDenoiser(backbone, torch.cumprod(1 - betas, 0))
    y = images(4)
    sigma, n = draw_noise(D.scheme, y, torch.Generator().manual_seed(2))
    eps = n / sigma.reshape(-1, 1, 1, 1)
    c_in = (sigma**2 + 1).rsqrt().reshape(-1, 1, 1, 1)
    eps_hat = D.backbone(c_in * (y + n), D.sigma_to_t(sigma))
    loss = weighted_target_loss(D, y, n, sigma)
    torch.testing.assert_close(loss, (eps_hat - eps) ** 2, rtol=1e-9, atol=1e-12)
    # DDPM training draws table levels
    assert bool(torch.isin(sigma, D.sigmas).all())


# ---------------------------------------------------------------------------------------------
# Training distributions of sigma


def draw(scheme, n=20000, seed=0, dtype=F64, **params):
    s = edm.schemes.get(scheme, **params)
    return s, s.sample_sigma((n,), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_vp_sigma_support():
    s, sigma = draw("vp")
    lo = math.sqrt(math.exp(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5) - 1)
    hi = math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1)
    assert s.sigma_min == pytest.approx(lo, rel=1e-9) and s.sigma_max == pytest.approx(hi, rel=1e-12)
    assert float(sigma.min()) >= lo * (1 - 1e-9) and float(sigma.max()) <= hi * (1 + 1e-12)
    # t = sigma_inv(sigma) is uniform on [epsilon_t, 1]
    t = s.sigma_inv(sigma)
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.005


def test_ve_sigma_support_and_log_uniform():
    _, sigma = draw("ve")
    assert float(sigma.min()) >= 0.02 and float(sigma.max()) <= 100 * (1 + 1e-12)
    u = (sigma.log() - math.log(0.02)) / math.log(100 / 0.02)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


def test_edm_sigma_lognormal():
    _, sigma = draw("edm")
    assert bool((sigma > 0).all())
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.03)


def test_iddpm_sigma_from_table():
    s, sigma = draw("iddpm", n=5000)
    assert bool(torch.isin(sigma, s.u[:1000]).all())
    assert float(sigma.min()) >= s.sigma_min and float(sigma.max()) <= s.sigma_max
    assert len(torch.unique(sigma)) > 900


@pytest.mark.parametrize("scheme", ["edm", "vp", "ve", "iddpm"])
def test_sample_sigma_dtype_and_reproducible(scheme):
    _, a = draw(scheme, n=16, seed=3, dtype=torch.float32)
    _, b = draw(scheme, n=16, seed=3, dtype=torch.float32)
    assert a.dtype == torch.float32 and a.shape == (16,)
    assert torch.equal(a, b)

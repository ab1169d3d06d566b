"""Preconditioning schemes (EDM Table 1), Precond and the eps/v/x0 wrappers."""

import math

import pytest
import torch
from torch import nn

import edm
from edm.precond import EDMScheme, IDDPMScheme, VEScheme, VPScheme
from edm.wrappers import ContinuousTimeDenoiser, DiscreteTimeDenoiser, vp_sigma_to_t, vp_t_to_sigma

F64 = torch.float64
SIGMAS = [0.002, 0.03, 0.5, 1.0, 7.3, 80.0]


# ---------------------------------------------------------------------------------------------
# Closed forms of EDM Table 1, written out independently of the library.


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return math.sqrt(math.exp(0.5 * beta_d * t * t + beta_min * t) - 1)


def vp_t(sigma, beta_d=19.9, beta_min=0.1):
    return (math.sqrt(beta_min**2 + 2 * beta_d * math.log1p(sigma * sigma)) - beta_min) / beta_d


def table1(name, s):
    """(c_skip, c_out, c_in, c_noise, lambda) at a Python float sigma."""
    if name == "edm":
        sd = 0.5
        return (
            sd**2 / (s**2 + sd**2),
            s * sd / math.sqrt(s**2 + sd**2),
            1 / math.sqrt(s**2 + sd**2),
            0.25 * math.log(s),
            (s**2 + sd**2) / (s * sd) ** 2,
        )
    if name == "vp":
        return 1.0, -s, 1 / math.sqrt(s**2 + 1), 999 * vp_t(s), 1 / s**2
    if name == "ve":
        return 1.0, s, 1.0, math.log(s / 2), 1 / s**2
    raise AssertionError(name)


def iddpm_u_reference(M=1000, C_1=0.001, C_2=0.008):
    """EDM Appendix C.3.4: u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1} / abar_j, C_1) - 1)."""
    abar = [math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2 for j in range(M + 1)]
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar[j - 1] / abar[j], C_1) - 1)
    return u


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_coefficients_match_table1(name):
    scheme = edm.schemes.get(name)
    sigma = torch.tensor(SIGMAS, dtype=F64)
    got = [scheme.c_skip(sigma), scheme.c_out(sigma), scheme.c_in(sigma), scheme.c_noise(sigma)]
    got.append(scheme.loss_weight(sigma))
    for i, s in enumerate(SIGMAS):
        want = table1(name, s)
        for k in range(5):
            assert got[k][i].item() == pytest.approx(want[k], rel=1e-12, abs=1e-12), (name, s, k)
    for value in got:
        assert value.dtype == F64 and value.shape == sigma.shape


def test_iddpm_coefficients_match_table1():
    scheme = edm.schemes.get("iddpm")
    u = iddpm_u_reference()
    for j in [0, 1, 17, 500, 998, 999]:
        s = u[j]
        sigma = torch.tensor([s], dtype=F64)
        assert scheme.c_skip(sigma).item() == 1
        assert scheme.c_out(sigma).item() == pytest.approx(-s, rel=1e-12)
        assert scheme.c_in(sigma).item() == pytest.approx(1 / math.sqrt(s**2 + 1), rel=1e-12)
        assert scheme.c_noise(sigma).item() == 999 - j
        assert scheme.loss_weight(sigma).item() == pytest.approx(1 / s**2, rel=1e-12)


def test_scheme_defaults_and_ranges():
    e = edm.schemes.get("edm")
    assert (e.sigma_data, e.sigma_min, e.sigma_max) == (0.5, 0.002, 80.0)
    vp = edm.schemes.get("vp")
    assert (vp.beta_d, vp.beta_min, vp.M, vp.epsilon_t) == (19.9, 0.1, 1000, 1e-5)
    assert vp.sigma_min == pytest.approx(vp_sigma(1e-5), rel=1e-9)
    assert vp.sigma_max == pytest.approx(vp_sigma(1.0), rel=1e-12)
    ve = edm.schemes.get("ve")
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    custom = edm.schemes.get("edm", sigma_data=1.0, sigma_max=10)
    assert custom.sigma_data == 1.0 and custom.sigma_max == 10.0
    assert isinstance(edm.schemes.get("ve"), VEScheme)
    assert sorted(edm.schemes.list()) == ["consistency", "edm", "flow", "iddpm", "ve", "vp"]


def test_vp_time_inverse():
    vp = VPScheme()
    t = torch.linspace(1e-5, 1, 101, dtype=F64)
    torch.testing.assert_close(vp.sigma_inv(vp.sigma(t)), t, rtol=1e-9, atol=1e-12)


def test_iddpm_float32_table_is_nvlabs_recipe():
    """NVlabs iDDPMPrecond: float32 tensors, alpha_bar(j) = sin(pi/2 j / M / (C_2 + 1))^2."""
    M, C_1, C_2 = 1000, 0.001, 0.008

    def alpha_bar(j):
        return (0.5 * math.pi * torch.as_tensor(j) / M / (C_2 + 1)).sin() ** 2

    u = torch.zeros(M + 1, dtype=torch.float32)
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    scheme = IDDPMScheme(u_dtype=torch.float32)
    assert torch.equal(scheme.u.float(), u)
    assert scheme.sigma_min == float(u[M - 1]) and scheme.sigma_max == float(u[0])
    torch.testing.assert_close(scheme.u, IDDPMScheme().u, rtol=2e-3, atol=0)


def test_iddpm_u_table_and_round_sigma():
    scheme = IDDPMScheme()
    u = scheme.u
    ref = torch.tensor(iddpm_u_reference(), dtype=F64)
    assert u.shape == (1001,)
    torch.testing.assert_close(u, ref, rtol=1e-12, atol=0)
    assert u[1000].item() == 0
    assert bool((u[:-1] > u[1:]).all()), "u must decrease strictly from u_0 to u_M = 0"
    assert scheme.sigma_min == u[999].item() and scheme.sigma_max == u[0].item()
    assert torch.equal(scheme.sigmas, u[:1000].flip(0))

    # round_sigma returns table members, the nearest ones, in the input dtype and shape
    gen = torch.Generator().manual_seed(0)
    sigma = (torch.rand(4, 8, generator=gen, dtype=F64) * 12 - 6).exp()
    rounded = scheme.round_sigma(sigma)
    assert rounded.shape == sigma.shape and rounded.dtype == F64
    nearest = u[(sigma.reshape(-1, 1) - u).abs().argmin(1)].reshape(sigma.shape)
    assert torch.equal(rounded, nearest)
    assert bool(torch.isin(rounded, u).all())
    assert scheme.round_sigma(torch.tensor(0.0)).item() == 0.0
    assert torch.equal(scheme.round_sigma(u), u)
    assert scheme.round_sigma(sigma.float()).dtype == torch.float32
    # c_noise = M - 1 - index of the nearest table entry
    j = (sigma.reshape(-1, 1) - u).abs().argmin(1).reshape(sigma.shape)
    torch.testing.assert_close(scheme.c_noise(sigma), (999 - j).to(F64), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Precond


class TargetBackbone(nn.Module):
    """Returns the exact training target (y - c_skip x) / c_out, using the closed forms above."""

    def __init__(self, name, y, sigma):
        super().__init__()
        self.name, self.y, self.sigma = name, y, sigma

    def forward(self, x_in, c_noise):
        rows = [table1(self.name, s) for s in self.sigma.tolist()]
        shape = (-1,) + (1,) * (x_in.ndim - 1)
        columns = (torch.tensor(c, dtype=x_in.dtype).reshape(shape) for c in zip(*rows, strict=True))
        c_skip, c_out, c_in, c_noise_ref, _ = columns
        torch.testing.assert_close(c_noise, c_noise_ref.reshape(-1), rtol=1e-12, atol=1e-12)
        x = x_in / c_in
        return (self.y - c_skip * x) / c_out


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_exact_target_backbone_recovers_clean_image(name):
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(len(SIGMAS), 3, 4, 4, generator=gen, dtype=F64)
    sigma = torch.tensor(SIGMAS, dtype=F64)
    x = y + sigma.reshape(-1, 1, 1, 1) * torch.randn(y.shape, generator=gen, dtype=F64)
    D = edm.Precond(TargetBackbone(name, y, sigma), name)
    torch.testing.assert_close(D(x, sigma), y, rtol=1e-10, atol=1e-10)


def test_exact_target_backbone_iddpm():
    scheme = IDDPMScheme()
    sigma = scheme.u[torch.tensor([0, 3, 250, 800, 999])]
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(5, 2, 3, generator=gen, dtype=F64)
    x = y + sigma.reshape(-1, 1, 1) * torch.randn(y.shape, generator=gen, dtype=F64)

    def backbone(x_in, c_noise):
        torch.testing.assert_close(c_noise, torch.tensor([999, 996, 749, 199, 0], dtype=F64))
        xs = x_in * (sigma**2 + 1).sqrt().reshape(-1, 1, 1)
        return (y - xs) / -sigma.reshape(-1, 1, 1)

    D = edm.Precond(backbone, "iddpm")
    torch.testing.assert_close(D(x, sigma), y, rtol=1e-9, atol=1e-9)
    assert torch.equal(D.sigmas, scheme.sigmas)
    assert D.sigmas[0].item() == D.sigma_min and D.sigmas[-1].item() == D.sigma_max


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma_form", ["float", "0dim", "vector", "column"])
def test_precond_sigma_forms_and_dtype(dtype, sigma_form):
    calls = []

    def backbone(x_in, c_noise, class_labels=None):
        calls.append((x_in.dtype, c_noise.shape, c_noise.dtype, class_labels))
        return torch.zeros_like(x_in)

    x = torch.randn(3, 2, 5, dtype=dtype)
    sigma = {
        "float": 2.0,
        "0dim": torch.tensor(2.0),
        "vector": torch.full((3,), 2.0),
        "column": torch.full((3, 1, 1), 2.0),
    }[sigma_form]
    D = edm.Precond(backbone)
    out = D(x, sigma, class_labels="cls")
    assert out.dtype == dtype and out.shape == x.shape
    assert calls == [(dtype, (3,), dtype, "cls")]
    # F = 0: D = c_skip x
    torch.testing.assert_close(out, x * 0.25 / (4 + 0.25))


def test_precond_protocol_attributes():
    D = edm.Precond(lambda x, c: x, "edm", sigma_data=0.7)
    assert (D.sigma_min, D.sigma_max, D.sigma_data) == (0.002, 80.0, 0.7)
    assert D.round_sigma(torch.tensor([0.123])).item() == pytest.approx(0.123)
    assert not hasattr(D, "sigmas")
    assert isinstance(D, nn.Module)
    assert edm.Precond(lambda x, c: x, "vp").sigma_data == 1.0


def test_precond_registers_backbone_parameters():
    backbone = nn.Conv2d(3, 3, 1)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = backbone

        def forward(self, x, c_noise):
            return self.net(x)

    D = edm.Precond(Wrapped()).double()
    assert sum(p.numel() for p in D.parameters()) == 12
    assert next(D.parameters()).dtype == F64
    D(torch.randn(2, 3, 4, 4, dtype=F64), torch.tensor([0.5, 3.0], dtype=F64)).sum().backward()
    assert backbone.weight.grad is not None


def test_backbone_dtype_keeps_skip_in_x_dtype():
    seen = {}

    def backbone(x_in, c_noise):
        seen["dtype"] = x_in.dtype
        return x_in

    x = torch.randn(2, 4, dtype=torch.float32) * 3 + 1e-3
    sigma = torch.tensor([0.1, 10.0])
    D = edm.Precond(backbone, backbone_dtype=torch.bfloat16)
    out = D(x, sigma)
    assert seen["dtype"] == torch.bfloat16 and out.dtype == torch.float32
    s = sigma.reshape(-1, 1)
    c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), (s**2 + 0.25).rsqrt()
    want = c_skip * x + c_out * (c_in * x).to(torch.bfloat16).float()
    torch.testing.assert_close(out, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Wrappers


def cosine_alphas_cumprod(T=1000, dtype=F64):
    t = torch.arange(T + 1, dtype=F64) / T
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = (f[1:] / f[0]).clamp(1e-6, 1 - 1e-6)
    return abar.to(dtype)


def linear_alphas_cumprod(T=1000, dtype=F64):
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    return torch.cumprod(1 - betas, 0).to(dtype)


class RandomBackbone(nn.Module):
    """A fixed random function of (x_in, t) that uses t non-trivially."""

    def __init__(self, channels=3, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(channels, channels, generator=gen, dtype=F64) / channels)
        self.register_buffer("b", torch.randn(channels, generator=gen, dtype=F64))

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, 1, 1, 1)
        h = torch.einsum("ij,bjhw->bihw", self.w.to(x.dtype), x)
        return torch.tanh(h + self.b.to(x.dtype).reshape(1, -1, 1, 1) * (t / 1000)) + torch.sin(t / 37)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("schedule", [linear_alphas_cumprod, cosine_alphas_cumprod])
def test_discrete_wrapper_matches_k_diffusion(prediction, quantize, schedule):
    from k_diffusion import external
    alphas_cumprod = schedule()
    backbone = RandomBackbone()
    reference_cls = {"eps": external.DiscreteEpsDDPMDenoiser, "v": external.DiscreteVDDPMDenoiser}[prediction]
    reference = reference_cls(backbone, alphas_cumprod, quantize=quantize)
    ours = DiscreteTimeDenoiser(backbone, alphas_cumprod, prediction=prediction, quantize=quantize)

    torch.testing.assert_close(ours.sigmas.cpu(), reference.sigmas, rtol=1e-12, atol=0)
    assert ours.sigma_min == pytest.approx(reference.sigma_min.item(), rel=1e-12)
    assert ours.sigma_max == pytest.approx(reference.sigma_max.item(), rel=1e-12)

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 3, 4, 4, generator=gen, dtype=F64) * 5
    # inside the table, at table entries, and beyond both ends
    sigma = torch.cat(
        [
            (torch.rand(5, generator=gen, dtype=F64) * 8 - 3).exp(),
            reference.sigmas[[0, 500]],
            reference.sigmas[:1] / 2,
            reference.sigmas[-1:] * 2,
        ]
    )
    t_ours, t_ref = ours.sigma_to_t(sigma), reference.sigma_to_t(sigma)
    assert t_ours.is_floating_point() == t_ref.is_floating_point()
    torch.testing.assert_close(t_ours.to(F64), t_ref.to(F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours(x, sigma), reference(x, sigma), rtol=1e-6, atol=1e-6)


def test_discrete_time_maps():
    alphas_cumprod = linear_alphas_cumprod()
    D = DiscreteTimeDenoiser(RandomBackbone(), alphas_cumprod)
    table = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    assert torch.equal(D.sigmas, table)
    assert bool((D.sigmas[1:] > D.sigmas[:-1]).all())

    # integer timesteps map to the table and back
    t = torch.arange(1000)
    torch.testing.assert_close(D.t_to_sigma(t), table, rtol=1e-12, atol=0)
    torch.testing.assert_close(D.sigma_to_t(table), t.to(F64), rtol=0, atol=1e-9)
    # fractional round trip, interpolation in log sigma
    t = torch.linspace(0, 999, 777, dtype=F64)
    torch.testing.assert_close(D.sigma_to_t(D.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    mid = D.t_to_sigma(torch.tensor(10.5, dtype=F64))
    assert mid.item() == pytest.approx(math.sqrt(table[10].item() * table[11].item()), rel=1e-12)
    # clamped beyond the table
    assert D.sigma_to_t(table[:1] / 3).item() == 0 and D.sigma_to_t(table[-1:] * 3).item() == 999
    # quantized: nearest timestep in log sigma, integer dtype
    tq = D.sigma_to_t(torch.tensor([mid.item() * 0.999, mid.item() * 1.001], dtype=F64), quantize=True)
    assert tq.tolist() == [10, 11] and not tq.is_floating_point()
    # round_sigma returns table members
    gen = torch.Generator().manual_seed(0)
    rounded = D.round_sigma((torch.rand(50, generator=gen, dtype=F64) * 10 - 4).exp())
    assert bool(torch.isin(rounded, table).all())
    assert D.round_sigma(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


def test_discrete_wrapper_float32():
    D = DiscreteTimeDenoiser(RandomBackbone(), linear_alphas_cumprod(dtype=torch.float32), quantize=True)
    x = torch.randn(2, 3, 4, 4)
    out = D(x, torch.tensor([0.1, 20.0]))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert D.sigma_to_t(torch.tensor([0.1, 20.0])).dtype == torch.int64


def true_prediction(prediction, y, eps, sigma, sigma_data=1.0):
    """The eps / v / x0 a perfect backbone predicts for x = y + sigma eps (VP form for v)."""
    s = sigma.reshape(-1, *([1] * (y.ndim - 1)))
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return y
    # v = alpha eps - sigma_vp y / sigma_data in the VP form of x / sqrt(sigma^2 + sigma_data^2)
    norm = (s**2 + sigma_data**2).sqrt()
    return (sigma_data * eps - s * y / sigma_data) / norm


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_continuous_wrapper_recovers_clean_image(prediction, sigma_data):
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(6, 3, 4, 4, generator=gen, dtype=F64)
    eps = torch.randn(y.shape, generator=gen, dtype=F64)
    sigma = torch.tensor(SIGMAS, dtype=F64)
    x = y + sigma.reshape(-1, 1, 1, 1) * eps
    target = true_prediction(prediction, y, eps, sigma, sigma_data)

    def backbone(x_in, t):
        torch.testing.assert_close(x_in, x / (sigma**2 + sigma_data**2).sqrt().reshape(-1, 1, 1, 1))
        torch.testing.assert_close(t, sigma)
        return target

    D = ContinuousTimeDenoiser(backbone, prediction, sigma_data=sigma_data)
    torch.testing.assert_close(D(x, sigma), y, rtol=1e-10, atol=1e-10)
    assert D.sigma_data == sigma_data


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_discrete_wrapper_recovers_clean_image(prediction):
    alphas_cumprod = cosine_alphas_cumprod()
    gen = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 1, 10, 500, 999])
    abar = alphas_cumprod[t]
    y = torch.randn(5, 3, 2, 2, generator=gen, dtype=F64)
    eps = torch.randn(y.shape, generator=gen, dtype=F64)
    col = abar.reshape(-1, 1, 1, 1)
    x_t = col.sqrt() * y + (1 - col).sqrt() * eps  # DDPM forward process
    v = col.sqrt() * eps - (1 - col).sqrt() * y  # Salimans & Ho
    target = {"eps": eps, "v": v, "x0": y}[prediction]

    def backbone(x_in, timestep):
        torch.testing.assert_close(x_in, x_t)
        torch.testing.assert_close(timestep.to(F64), t.to(F64))
        return target

    D = DiscreteTimeDenoiser(backbone, alphas_cumprod, prediction=prediction)
    sigma = ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(D(x_t / col.sqrt(), sigma), y, rtol=1e-9, atol=1e-9)


def test_vp_continuous_time():
    seen = {}

    def backbone(x_in, t):
        seen["t"] = t
        return torch.zeros_like(x_in)

    D = ContinuousTimeDenoiser(backbone, "eps", sigma_to_t=vp_sigma_to_t(), t_to_sigma=vp_t_to_sigma())
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=F64)
    D(torch.zeros(3, 2, dtype=F64), sigma)
    torch.testing.assert_close(seen["t"], torch.tensor([vp_t(s) for s in sigma.tolist()], dtype=F64))
    torch.testing.assert_close(D.t_to_sigma(D.sigma_to_t(sigma)), sigma)
    assert not hasattr(D, "sigma_min")  # none given


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as info:
        edm.schemes.get("nope")
    for name in ["edm", "vp", "ve", "iddpm"]:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="iddpm"):
        edm.Precond(lambda x, c: x, "EDM2")


def test_unknown_prediction_lists_valid_names():
    with pytest.raises(ValueError, match="eps.*v.*x0|eps, v, x0"):
        ContinuousTimeDenoiser(lambda x, t: x, "score")
    with pytest.raises(ValueError, match="x0"):
        DiscreteTimeDenoiser(lambda x, t: x, linear_alphas_cumprod(), prediction="epsilon")


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_sigma_rejected(bad):
    D = edm.Precond(lambda x, c: x)
    with pytest.raises(ValueError, match="sigma"):
        D(torch.zeros(2, 3), torch.tensor([1.0, bad]))


def test_bad_sigma_shape_and_alphas_rejected():
    D = edm.Precond(lambda x, c: x)
    with pytest.raises(ValueError, match="batch"):
        D(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="decreasing"):
        DiscreteTimeDenoiser(lambda x, t: x, linear_alphas_cumprod().flip(0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        DiscreteTimeDenoiser(lambda x, t: x, torch.tensor([1.0, 0.5, 0.0]))


def test_scheme_instances_pass_through():
    scheme = EDMScheme(sigma_data=1.0)
    assert edm.schemes.get(scheme) is scheme
    assert edm.Precond(lambda x, c: x, scheme).scheme is scheme
    with pytest.raises(ValueError):
        edm.schemes.get(scheme, sigma_data=2.0)

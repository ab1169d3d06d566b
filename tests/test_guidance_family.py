"""The guidance family on an exact Gaussian mixture: classifier guidance with the exact posterior classifier
is the exact class-conditional denoiser; CFG with a negative class, autoguidance, the guidance interval,
Lin et al.'s rescale, thresholding (also inside the ddim and euler steps), and attribute forwarding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from edm.gaussian_mixture import GaussianMixture
from samplers.editing import Inpainting
from samplers.guidance import (
    Autoguidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Thresholded,
    WithoutLabels,
    dynamic_threshold,
    static_threshold,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 3
CLASS_OF = [0, 0, 1, 1, 2, 2]  # 6 components, 3 classes
C = 3
SIGMAS = [0.01, 0.05, 0.3, 1.0, 4.0, 50.0]


def _mixture(std_scale: float = 1.0) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(len(CLASS_OF), DIM, generator=g, dtype=torch.float64) * 1.5
    stds = (0.2 + 0.4 * torch.rand(len(CLASS_OF), DIM, generator=g, dtype=torch.float64)) * std_scale
    weights = torch.rand(len(CLASS_OF), generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(means, stds, weights)


GM = _mixture()
MEMBERS = [[k for k, c in enumerate(CLASS_OF) if c == cls] for cls in range(C)]


def restricted(gm: GaussianMixture, cls: int) -> GaussianMixture:
    """The mixture of class ``cls``'s components only, weights renormalised (by GaussianMixture)."""
    idx = torch.tensor(MEMBERS[cls])
    return GaussianMixture(gm.means[idx], gm.stds[idx], gm.weights[idx])


def one_hot(labels) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), C).to(torch.float64)


def _sigma_vector(sigma, x) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(x.shape[0])


class ExactClassifier:
    """The exact posterior classifier's logits: ``log sum_{k in c} w_k N(x; mu_k, S_k + sigma^2 I)``."""

    def __init__(self, gm: GaussianMixture):
        self.gm = gm
        self.calls: list[int] = []

    def __call__(self, x, sigma):
        self.calls.append(x.shape[0])
        var = self.gm.stds[None] ** 2 + _sigma_vector(sigma, x)[:, None, None] ** 2  # [B, K, D]
        diff = x[:, None, :] - self.gm.means[None]
        log_n = -0.5 * ((diff**2 / var).sum(-1) + var.log().sum(-1) + DIM * math.log(2 * math.pi))
        log_joint = self.gm.weights.log()[None] + log_n  # [B, K]
        return torch.stack([torch.logsumexp(log_joint[:, m], dim=1) for m in MEMBERS], dim=1)


class Conditional:
    """The exact class-conditional denoiser: one-hot ``class_labels`` pick a class's mixture, an all-zero
    row (or no labels) is the whole mixture. Records the batch size of every call."""

    def __init__(self, gm: GaussianMixture):
        self.full = gm
        self.parts = [restricted(gm, c) for c in range(C)]
        self.calls: list[int] = []

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append(x.shape[0])
        sigma = _sigma_vector(sigma, x)
        out = self.full(x, sigma)
        if class_labels is None:
            return out
        for c, part in enumerate(self.parts):
            out = torch.where(class_labels[:, c, None] == 1, part(x, sigma), out)
        return out


def _points(batch: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    clean = GM.sample(batch, generator=g)
    return clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)


# --- classifier guidance with the exact classifier is the class-conditional denoiser -----------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_classifier_guidance_with_exact_classifier_is_the_conditional_denoiser(sigma):
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    x = _points(len(labels), sigma, seed=int(sigma * 100))
    x[-1] = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)  # one point away from the data
    expected = torch.stack([restricted(GM, int(c))(x[i:i + 1], sigma)[0] for i, c in enumerate(labels)])
    sigma_b = torch.full((len(labels),), sigma, dtype=torch.float64)

    # one-hot labels, the conditional model made unconditional by WithoutLabels (zeroed labels)
    guided = ClassifierGuidance(WithoutLabels(Conditional(GM)), ExactClassifier(GM), 1.0)
    out = guided(x, sigma_b, class_labels=one_hot(labels))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    # indices, an unconditional model that takes no labels at all; sigma as a float
    guided = ClassifierGuidance(WithoutLabels(GM, remove=True), ExactClassifier(GM), 1.0)
    out = guided(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    # and it is a real change from the unconditional denoiser
    if sigma >= 0.3:
        assert (GM(x, sigma_b) - expected).abs().max() > 1e-3


def test_classifier_guidance_scale_and_interval():
    """w scales sigma^2 grad log p(c | x), which is D_c - D exactly; no classifier call outside the
    interval."""
    labels = torch.tensor([2, 0, 1, 1])
    sigma = torch.tensor([0.2, 0.9, 2.0, 6.0], dtype=torch.float64)
    x = _points(4, 1.0, seed=5)
    d = GM(x, sigma)
    d_c = torch.stack([restricted(GM, int(c))(x[i:i + 1], sigma[i:i + 1])[0] for i, c in enumerate(labels)])
    out = ClassifierGuidance(GM, ExactClassifier(GM), 2.5)(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, d + 2.5 * (d_c - d), rtol=0, atol=1e-10)

    classifier = ExactClassifier(GM)
    wrapped = ClassifierGuidance(GM, classifier, 2.5, interval=(0.5, 2.0))
    out = wrapped(x, sigma, class_labels=labels)
    inside = torch.tensor([False, True, True, False])[:, None]
    torch.testing.assert_close(out, torch.where(inside, d + 2.5 * (d_c - d), d), rtol=0, atol=1e-10)
    classifier.calls.clear()
    assert torch.equal(wrapped(x, torch.full((4,), 3.0, dtype=torch.float64), class_labels=labels),
                       GM(x, 3.0))
    assert classifier.calls == []  # all outside: the classifier is not evaluated
    assert ClassifierGuidance(GM, classifier, 0.0).evaluations == 1
    assert ClassifierGuidance(GM, classifier, 1.0).evaluations == 2
    with pytest.raises(ValueError, match="class_labels"):
        ClassifierGuidance(GM, classifier, 1.0)(x, sigma)


# --- classifier-free guidance and autoguidance ------------------------------------------------------


def _inputs(batch=5, seed=3):
    x = _points(batch, 1.0, seed=seed)
    sigma = torch.tensor([0.05, 0.4, 1.0, 3.0, 20.0][:batch], dtype=torch.float64)
    return x, sigma, one_hot([0, 1, 2, 1, 0][:batch])


@pytest.mark.parametrize("w", [0.7, 3.0, -0.4])
def test_cfg_with_a_negative_class(w):
    x, sigma, labels = _inputs()
    ref = Conditional(GM)
    d_c = ref(x, sigma, class_labels=labels)
    for negative_class in range(C):
        d_k = ref(x, sigma, class_labels=one_hot([negative_class] * len(x)))
        expected = d_c + w * (d_c - d_k)
        for negative in ({"class_labels": one_hot([negative_class])},  # [1, C]: broadcast
                         {"class_labels": one_hot([negative_class] * len(x))},
                         lambda cond, k=negative_class: {**cond, "class_labels": one_hot([k])}):
            model = Conditional(GM)
            out = ClassifierFreeGuidance(model, w, negative=negative)(x, sigma, class_labels=labels)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
            assert model.calls == [2 * len(x)]
    # the default negative is the unconditional model (zeroed labels)
    d_u = ref(x, sigma, class_labels=torch.zeros_like(labels))
    out = ClassifierFreeGuidance(Conditional(GM), w)(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, d_c + w * (d_c - d_u), rtol=0, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, -0.3])
def test_autoguidance_is_edm2_lerp(w):
    x, sigma, labels = _inputs()
    main, weak = Conditional(GM), Conditional(_mixture(std_scale=1.7))
    d = Conditional(GM)(x, sigma, class_labels=labels)
    d_weak = Conditional(_mixture(std_scale=1.7))(x, sigma, class_labels=labels)
    out = Autoguidance(main, weak, w)(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, d_weak.lerp(d, 1 + w), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, d + w * (d - d_weak), rtol=0, atol=1e-12)
    assert main.calls == [len(x)]
    assert weak.calls == ([] if w == 0 else [len(x)])
    if w:
        assert (d - d_weak).abs().max() > 1e-3  # the weak model is really different


def test_autoguidance_interval():
    x, sigma, labels = _inputs()
    d = Conditional(GM)(x, sigma, class_labels=labels)
    d_weak = Conditional(_mixture(std_scale=1.7))(x, sigma, class_labels=labels)
    main, weak = Conditional(GM), Conditional(_mixture(std_scale=1.7))
    out = Autoguidance(main, weak, 1.5, interval=(0.4, 3.0))(x, sigma, class_labels=labels)
    inside = torch.tensor([False, False, True, True, False])[:, None]  # lo < sigma <= hi
    torch.testing.assert_close(out, torch.where(inside, d + 1.5 * (d - d_weak), d), rtol=0, atol=1e-12)
    weak.calls.clear()
    out = Autoguidance(main, weak, 1.5, interval=(0.4, 3.0))(x, 0.3, class_labels=labels)
    assert torch.equal(out, Conditional(GM)(x, 0.3, class_labels=labels)) and weak.calls == []


def test_cfg_interval_one_call_outside_guided_inside():
    x, sigma, labels = _inputs()
    ref = Conditional(GM)
    lo, hi = 0.4, 3.0
    for s in (0.01, 0.4, 3.5, 80.0):  # 0.4 == lo is outside (lo < sigma <= hi)
        model = Conditional(GM)
        out = ClassifierFreeGuidance(model, 2.0, interval=(lo, hi))(x, s, class_labels=labels)
        assert torch.equal(out, ref(x, s, class_labels=labels))
        assert model.calls == [len(x)]  # one call of B
    for s in (0.41, 1.0, 3.0):  # 3.0 == hi is inside
        model = Conditional(GM)
        out = ClassifierFreeGuidance(model, 2.0, interval=(lo, hi))(x, s, class_labels=labels)
        d_c = ref(x, s, class_labels=labels)
        d_u = ref(x, s, class_labels=torch.zeros_like(labels))
        torch.testing.assert_close(out, d_c + 2.0 * (d_c - d_u), rtol=0, atol=1e-12)
        assert model.calls == [2 * len(x)]
    # per-sample sigma, some inside and some outside
    model = Conditional(GM)
    out = ClassifierFreeGuidance(model, 2.0, interval=(lo, hi))(x, sigma, class_labels=labels)
    d_c = ref(x, sigma, class_labels=labels)
    d_u = ref(x, sigma, class_labels=torch.zeros_like(labels))
    inside = ((sigma > lo) & (sigma <= hi))[:, None]
    assert inside.any() and not inside.all()
    torch.testing.assert_close(out, torch.where(inside, d_c + 2.0 * (d_c - d_u), d_c), rtol=0, atol=1e-12)


def _lin_rescale(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024, Alg. 2, per sample with numpy: x_rescaled = x_cfg * std(x_pos) / std(x_cfg);
    x_final = phi * x_rescaled + (1 - phi) * x_cfg."""
    out = []
    for g, c in zip(guided.numpy(), cond.numpy()):
        rescaled = g * np.std(c, ddof=1) / np.std(g, ddof=1)
        out.append(phi * rescaled + (1 - phi) * g)
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_cfg_rescale_is_lin_et_al(phi):
    x, sigma, labels = _inputs()
    ref = Conditional(GM)
    d_c = ref(x, sigma, class_labels=labels)
    d_u = ref(x, sigma, class_labels=torch.zeros_like(labels))
    plain = d_c + 4.0 * (d_c - d_u)
    out = ClassifierFreeGuidance(Conditional(GM), 4.0, rescale=phi)(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, _lin_rescale(plain, d_c, phi), rtol=0, atol=1e-12)
    if phi == 0:
        assert torch.equal(out, ClassifierFreeGuidance(Conditional(GM), 4.0)(x, sigma, class_labels=labels))
    else:
        assert (out - plain).abs().max() > 1e-3
    if phi == 1:  # fully rescaled: each sample has the conditional prediction's std
        torch.testing.assert_close(out.std(dim=1), d_c.std(dim=1), rtol=1e-12, atol=0)
    # with an interval: outside it the conditional prediction, not rescaled
    out = ClassifierFreeGuidance(Conditional(GM), 4.0, rescale=phi, interval=(0.4, 3.0))(
        x, sigma, class_labels=labels)
    inside = ((sigma > 0.4) & (sigma <= 3.0))[:, None]
    expected = torch.where(inside, _lin_rescale(plain, d_c, phi), d_c)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_rescale_phi_out_of_range():
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(GM, 1.0, rescale=1.5)
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(GM, 1.0, rescale=-0.1)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(GM, 1.0, interval=(2.0, 1.0))


CFG = ClassifierFreeGuidance
TRANSFORMS = {
    "cfg": lambda: CFG(Conditional(GM), 2.0),
    "cfg_negative": lambda: CFG(Conditional(GM), 1.5, negative={"class_labels": one_hot([2])}),
    "cfg_interval_rescale": lambda: CFG(Conditional(GM), 3.0, interval=(0.3, 5.0), rescale=0.6),
    "autoguidance": lambda: Autoguidance(Conditional(GM), Conditional(_mixture(1.7)), 1.2, interval=(0.1, 9)),
    "classifier": lambda: ClassifierGuidance(WithoutLabels(Conditional(GM)), ExactClassifier(GM), 1.7),
    "thresholded": lambda: Thresholded(CFG(Conditional(GM), 3.0), "dynamic", percentile=0.6),
    "static": lambda: Thresholded(CFG(Conditional(GM), 3.0), "static"),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_batch_invariance(name):
    """Sample i's output is the same whether it is evaluated in the batch or alone."""
    x, sigma, labels = _inputs()
    x = x * 2  # outside [-1, 1] often, so thresholding acts
    transform = TRANSFORMS[name]()
    together = transform(x, sigma, class_labels=labels)
    alone = torch.cat([transform(x[i:i + 1], sigma[i:i + 1], class_labels=labels[i:i + 1]) for i in range(5)])
    assert torch.equal(together, alone)  # bit for bit
    perm = torch.tensor([3, 0, 4, 2, 1])
    shuffled = transform(x[perm], sigma[perm], class_labels=labels[perm])
    assert torch.equal(shuffled, together[perm])


# --- thresholding ----------------------------------------------------------------------------------


def test_static_threshold_clips():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64) * 2
    out = static_threshold(x0)
    assert out.max() <= 1 and out.min() >= -1
    inside = x0.abs() <= 1
    assert torch.equal(out[inside], x0[inside])
    assert torch.equal(out[~inside], x0[~inside].sign())
    assert torch.equal(static_threshold(x0, 1.5), x0.clamp(-1.5, 1.5))
    wrapped = Thresholded(lambda x, sigma: x * 2, "static", limit=0.5)
    assert torch.equal(wrapped(x0, 1.0), (x0 * 2).clamp(-0.5, 0.5))


def test_dynamic_threshold():
    g = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9  # max |x| <= 1
    big = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64) * 3
    x0 = torch.cat([small, big])
    p = 0.8
    out = dynamic_threshold(x0, p)
    assert torch.equal(out[0], small[0])  # s clamped to 1: unchanged
    s = float(np.quantile(np.abs(big.numpy()).ravel(), p))  # numpy's linear interpolation
    assert s > 1
    expected = np.clip(big.numpy(), -s, s) / s
    torch.testing.assert_close(out[1:], torch.from_numpy(expected), rtol=0, atol=1e-14)
    assert out[1].abs().max() == 1
    # capped s (diffusers' sample_max_value)
    capped = dynamic_threshold(x0, p, max_value=1.2)
    torch.testing.assert_close(capped[1:], big.clamp(-1.2, 1.2) / 1.2, rtol=0, atol=1e-14)
    # percentile 1: s = max |x|
    torch.testing.assert_close(dynamic_threshold(big, 1.0), big / big.abs().max(), rtol=0, atol=1e-15)


def test_thresholded_split_and_errors():
    def denoiser(x, sigma):
        return 3 * torch.tanh(x)

    x = torch.linspace(-2, 2, 24, dtype=torch.float64).reshape(2, 3, 4)
    raw, thresholded = Thresholded(denoiser, "static").split(x, 1.0)
    assert torch.equal(raw, denoiser(x, 1.0))
    assert torch.equal(thresholded, raw.clamp(-1, 1))
    raw, thresholded = Thresholded(denoiser, "dynamic", percentile=0.9).split(x, 1.0)
    assert torch.equal(thresholded, dynamic_threshold(raw, 0.9))
    assert torch.equal(Thresholded(denoiser, "dynamic", percentile=0.9)(x, 1.0), thresholded)
    for bad in ({"kind": "median"}, {"percentile": 0.0}, {"percentile": 1.5}, {"limit": 0.0},
                {"max_value": 0.5}):
        with pytest.raises(ValueError):
            Thresholded(denoiser, **bad)


def _wide(x, sigma):
    """A smooth denoiser whose x0 leaves [-1, 1]."""
    sigma = _sigma_vector(sigma, x).reshape(-1, 1, 1)
    return 2.5 * torch.tanh(x / (1 + sigma) + 0.3)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_ddim_steps_with_thresholded_x0_and_network_epsilon(kind):
    """diffusers' DDIM (eta = 0) under thresholding: x_next = T(D) + sigma_next (x - D) / sigma, the
    direction term with the raw network prediction; euler steps with T(D) in both terms."""
    sigmas = torch.tensor([3.0, 1.2, 0.4, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 3.0
    t = Thresholded(_wide, kind, percentile=0.7)

    def expected(step, sampler):
        state = x
        for i in range(step):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            raw = _wide(state, s)
            thr = t.threshold(raw)
            direction = raw if sampler == "ddim" else thr
            state = thr + s_next * (state - direction) / s
        return state

    for sampler in ("ddim", "euler"):
        states = []
        out = samplers.sample(t, x, sigmas, sampler, callback=lambda info, s=states: s.append(info["x"]))
        assert len(states) == 3
        for i, state in enumerate(states):
            torch.testing.assert_close(state, expected(i, sampler), rtol=0, atol=1e-13)
        torch.testing.assert_close(out, expected(3, sampler), rtol=0, atol=1e-13)
    # the two rules really differ, and thresholding really acts
    ddim_1 = expected(1, "ddim")
    assert (ddim_1 - expected(1, "euler")).abs().max() > 1e-3
    raw = _wide(x, 3.0)
    assert (t.threshold(raw) - raw).abs().max() > 1e-3


# --- the protocol's optional attributes ----------------------------------------------------------


class WithAttributes:
    sigma_min, sigma_max, sigma_data = 0.02, 40.0, 0.5
    sigmas = torch.tensor([0.02, 1.0, 40.0])

    def __call__(self, x, sigma, **cond):
        return x

    def round_sigma(self, sigma):
        return torch.round(torch.as_tensor(sigma) * 10) / 10


def _bare(x, sigma, **cond):
    return x


WRAPPERS = {
    "cfg": lambda d: ClassifierFreeGuidance(d, 1.0),
    "autoguidance": lambda d: Autoguidance(d, _bare, 1.0),
    "classifier": lambda d: ClassifierGuidance(d, ExactClassifier(GM), 1.0),
    "without_labels": lambda d: WithoutLabels(d),
    "thresholded": lambda d: Thresholded(d),
    "inpainting": lambda d: Inpainting(d, torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3)),
    "nested": lambda d: Thresholded(ClassifierFreeGuidance(Autoguidance(d, _bare, 0.5), 2.0), "static"),
}
ATTRIBUTES = ("sigma_min", "sigma_max", "sigma_data", "sigmas", "round_sigma")


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrappers_forward_exactly_the_inner_attributes(name):
    assert set(ATTRIBUTES) == set(samplers.OPTIONAL_ATTRIBUTES)
    inner = WithAttributes()
    wrapped = WRAPPERS[name](inner)
    for attr in ATTRIBUTES[:3]:
        assert getattr(wrapped, attr) == getattr(inner, attr)
    assert wrapped.sigmas is inner.sigmas
    assert float(wrapped.round_sigma(0.34)) == pytest.approx(0.3)
    bare = WRAPPERS[name](_bare)
    for attr in ATTRIBUTES:
        assert not hasattr(bare, attr), attr
    with pytest.raises(AttributeError):
        bare.some_other_attribute  # noqa: B018
    with pytest.raises(AttributeError):
        wrapped.some_other_attribute  # noqa: B018  (only the protocol's attributes are forwarded)
    # the mixture has sigma_min, sigma_max and sigma_data, but no round_sigma or sigmas
    on_mixture = WRAPPERS[name](GM)
    assert (on_mixture.sigma_min, on_mixture.sigma_max) == (GM.sigma_min, GM.sigma_max)
    assert on_mixture.sigma_data == GM.sigma_data
    assert not hasattr(on_mixture, "round_sigma") and not hasattr(on_mixture, "sigmas")


def test_round_sigma_reaches_the_edm_sampler_through_a_wrapper():
    """The edm sampler rounds its churned sigma_hat with the (forwarded) round_sigma."""
    seen = []

    class Discrete(WithAttributes):
        def __call__(self, x, sigma, **cond):
            seen.append(float(sigma[0]))
            return torch.zeros_like(x)

    x = torch.ones(1, 2, dtype=torch.float64)
    wrapped = ClassifierFreeGuidance(Discrete(), 0.0)
    samplers.sample(wrapped, x, [3.0, 1.0, 0.0], "edm", seeds=[0], s_churn=1.0)
    assert seen[0] == pytest.approx(round(seen[0], 1), abs=1e-12) and seen[0] > 3.0

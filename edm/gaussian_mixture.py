"""A Gaussian-mixture data distribution with a closed-form ideal denoiser.

Data ``y ~ sum_k w_k N(mu_k, diag(s_k^2))`` noised in the EDM convention
``x = y + sigma * n`` has the marginal ``p_sigma(x) = sum_k w_k N(x; mu_k, s_k^2 + sigma^2)``,
and the ideal denoiser is the posterior mean

    D(x; sigma) = E[y | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with responsibilities ``r_k(x) = w_k N(x; mu_k, s_k^2 + sigma^2) / p_sigma(x)``.  Equivalently
``D = x + sigma^2 grad log p_sigma(x)`` (Tweedie).  The mixture is therefore an exact denoiser for
testing samplers: the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` can be solved
to any accuracy and sampler errors measured against it.

The mixture is also an exact flow-matching model: :meth:`GaussianMixture.velocity` is the ideal velocity
``v(x_t, t) = E[n - y | x_t]`` on ``x_t = (1 - t) y + t n`` (``edm.flow``), and
:meth:`GaussianMixture.velocity_backbone` is it as a backbone for ``edm.flow.FlowDenoiser``.
At sigma = inf the denoiser follows the library's convention (it is given ``u = lim x / sigma``) and
returns the limit ``E[y]``.

Internally everything is computed in float64 (float32 on devices without float64 support) and the
result is returned in the dtype of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class GaussianMixture:
    """Mixture of axis-aligned Gaussians over tensors of shape ``means.shape[1:]``.

    Args:
        means: ``[K, *shape]`` component means.
        stds: ``[K]`` isotropic per-component standard deviations, or ``[K, *shape]`` diagonal ones.
        weights: ``[K]`` non-negative mixture weights (normalized here); uniform when omitted.

    The object is a denoiser in the library's protocol: ``gm(x, sigma) -> E[y | x]``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        weights: torch.Tensor | None = None,
    ):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim < 2:
            raise ValueError(f"means must be [K, *shape] with a data dim, got {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.shape == (k,):
            self.diagonal = False
        elif stds.shape == means.shape:
            self.diagonal = True
        else:
            raise ValueError(f"stds must be [K] or [K, *shape] = {tuple(means.shape)}, "
                             f"got {tuple(stds.shape)}")
        if (stds < 0).any():
            raise ValueError("stds must be non-negative")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (k,):
            raise ValueError(f"weights must be [K] = [{k}], got {tuple(weights.shape)}")
        if (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("weights must be non-negative with a positive sum")

        self.means = means
        self.stds = stds.clone()
        self.weights = weights / weights.sum()
        self.shape = tuple(means.shape[1:])
        self.dtype = means.dtype
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def random(
        cls,
        shape: Sequence[int] = (3, 8, 8),
        k: int = 16,
        seed: int = 0,
        spread: float = 0.35,
        std_range: tuple[float, float] = (0.05, 0.2),
        ratio: float = 0.3,
        diagonal: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> GaussianMixture:
        """A reproducible mixture of image-like data, values roughly in [-1, 1].

        Means are built on a binary tree: component ``i`` is the sum, over the levels of the tree, of a
        random smooth pattern per tree node on its path, scaled by ``spread * ratio**level`` (per-element
        RMS).  Sibling components are therefore separated at every scale from ``~spread * sqrt(2 D)``
        down to ``~spread * ratio**(depth-1) * sqrt(2 D)`` (``D`` the number of elements), so the
        posterior over components switches at many noise levels.  With the defaults and shape
        ``(3, 8, 8)`` sibling distances are about 7, 2, 0.6 and 0.2; sibling leaves share their std
        (log-uniform in ``std_range``, per pair of leaves, or per element if ``diagonal``) and overlap
        at the clean level, so the posterior is genuinely mixed (and the denoiser nonlinear in x) over
        sigma ~0.02..5.  About 99% of data elements lie in [-1, 1] (``sigma_data`` ~0.25..0.35).
        Weights are ``softmax(0.5 * N(0, 1))``.
        """
        shape = tuple(int(s) for s in shape)
        if k < 1:
            raise ValueError("k must be >= 1")
        lo, hi = float(std_range[0]), float(std_range[1])
        if not 0 < lo <= hi:
            raise ValueError("std_range must satisfy 0 < low <= high")
        g = torch.Generator().manual_seed(int(seed))
        depth = max(1, math.ceil(math.log2(k))) if k > 1 else 1

        def pattern() -> torch.Tensor:
            p = torch.randn(shape, generator=g, dtype=torch.float64)
            if len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4:
                c, h, w = shape
                low = torch.randn((1, c, max(1, h // 4), max(1, w // 4)), generator=g, dtype=torch.float64)
                low = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
                low = low[0] / low.std().clamp_min(1e-12)
                p = low + 0.5 * p
            return p / p.pow(2).mean().sqrt()

        node_patterns: dict[tuple[int, int], torch.Tensor] = {}
        means = torch.zeros((k, *shape), dtype=torch.float64)
        for i in range(k):
            for level in range(depth):
                node = (level, i >> (depth - 1 - level))
                if node not in node_patterns:
                    node_patterns[node] = pattern()
                means[i] += spread * ratio**level * node_patterns[node]
        # sibling leaves share their std, so that only their means tell them apart
        pairs = (k + 1) // 2
        u = torch.rand((pairs, *shape) if diagonal else (pairs,), generator=g, dtype=torch.float64)
        stds = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))[torch.arange(k) // 2]
        weights = torch.softmax(0.5 * torch.randn(k, generator=g, dtype=torch.float64), 0)
        return cls(means.to(dtype=dtype, device=device), stds.to(dtype=dtype, device=device),
                   weights.to(dtype=dtype, device=device))

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> GaussianMixture:
        """A copy with parameters on ``device`` / in ``dtype``."""
        kw = {"device": device, "dtype": dtype}
        return GaussianMixture(self.means.to(**kw), self.stds.to(**kw), self.weights.to(**kw))

    # ------------------------------------------------------------------ properties

    @property
    def k(self) -> int:
        return self.means.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Overall mean of the clean data, shape ``self.shape``."""
        w = self.weights.view(-1, *([1] * len(self.shape)))
        return (w * self.means).sum(0)

    @property
    def variance(self) -> torch.Tensor:
        """Per-element variance of the clean data, shape ``self.shape``."""
        w = self.weights.double().view(-1, *([1] * len(self.shape)))
        mu, s = self.means.double(), self.stds.double()
        if not self.diagonal:
            s = s.view(-1, *([1] * len(self.shape)))
        m = (w * mu).sum(0)
        return ((w * (s**2 + mu**2)).sum(0) - m**2).clamp_min(0).to(self.dtype)

    @property
    def sigma_data(self) -> float:
        """Overall std of the clean data: sqrt of the per-element variance averaged over elements."""
        return float(self.variance.double().mean().sqrt())

    # ------------------------------------------------------------------ core math

    def _params(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._cache:
            mu = self.means.to(device=device, dtype=dtype).reshape(self.k, -1)  # [K, D]
            s2 = self.stds.to(device=device, dtype=dtype).reshape(self.k, -1) ** 2  # [K, 1] or [K, D]
            logw = self.weights.to(device=device, dtype=dtype).log()  # [K]
            self._cache[key] = (mu, s2, logw)
        return self._cache[key]

    def _sigma(self, sigma, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``sigma`` (float, 0-dim, [B] or broadcastable [B, 1, ...]) as a [B] tensor."""
        b = x.shape[0]
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(device=x.device, dtype=dtype)
        else:  # python/numpy number: convert directly, without a float32 round trip
            sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device)
        if sigma.numel() == 1:
            return sigma.reshape(()).expand(b)
        if sigma.numel() != b:
            raise ValueError(f"sigma must be a scalar or have {b} elements, got shape {tuple(sigma.shape)}")
        return sigma.reshape(b)

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")

    def _posterior(self, x: torch.Tensor, sigma: torch.Tensor):
        """Per-component terms, in the compute dtype.

        Returns ``xf [B, D]``, ``diff_over_v [B, K, D] = (x - mu_k) / (s_k^2 + sigma^2)``,
        ``log_joint [B, K] = log w_k + log N(x; mu_k, s_k^2 + sigma^2)``.
        """
        mu, s2, logw = self._params(x.device, sigma.dtype)
        xf = x.reshape(x.shape[0], -1).to(sigma.dtype)
        d = xf.shape[1]
        v = s2[None] + sigma.square()[:, None, None]  # [B, K, 1 or D]
        diff = xf[:, None, :] - mu[None]  # [B, K, D]
        diff_over_v = diff / v
        quad = (diff * diff_over_v).sum(-1)  # [B, K]
        logdet = v.log().sum(-1) if self.diagonal else d * v[..., 0].log()
        log_joint = logw[None] - 0.5 * (quad + logdet + d * _LOG_2PI)
        return xf, diff_over_v, log_joint

    def _responsibilities(self, log_joint: torch.Tensor) -> torch.Tensor:
        return torch.softmax(log_joint, dim=-1)  # stable: subtracts the max (log-sum-exp)

    # ------------------------------------------------------------------ public API

    def log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``log p_sigma(x)`` of the noisy marginal, shape ``[B]``, in ``x``'s dtype."""
        self._check(x)
        sig = self._sigma(sigma, x, _compute_dtype(x.device))
        _, _, log_joint = self._posterior(x, sig)
        return torch.logsumexp(log_joint, dim=-1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x)``, shape ``[B, K]``."""
        self._check(x)
        sig = self._sigma(sigma, x, _compute_dtype(x.device))
        _, _, log_joint = self._posterior(x, sig)
        return self._responsibilities(log_joint).to(x.dtype)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``grad_x log p_sigma(x) = -sum_k r_k (x - mu_k) / (s_k^2 + sigma^2)``, shape of ``x``."""
        self._check(x)
        sig = self._sigma(sigma, x, _compute_dtype(x.device))
        _, diff_over_v, log_joint = self._posterior(x, sig)
        r = self._responsibilities(log_joint)
        return (-(r[..., None] * diff_over_v).sum(1)).reshape(x.shape).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The ideal denoiser ``E[y | x]`` for ``x = y + sigma n``; returns ``x`` where sigma == 0.

        Where sigma is inf, ``x`` stands for ``u = x / sigma`` and the result is the limit ``E[y]``: the
        responsibilities tend to the weights and each component's posterior mean to its mean.
        """
        self._check(x)
        sig = self._sigma(sigma, x, _compute_dtype(x.device))
        zero, infinite = sig == 0, sig.isinf()
        sig_eff = torch.where(zero | infinite, torch.ones_like(sig), sig)  # avoids 0/0 and inf/inf
        xf, diff_over_v, log_joint = self._posterior(x, sig_eff)
        r = self._responsibilities(log_joint)
        # sum_k r_k (mu_k + s_k^2 / v_k (x - mu_k)) = x - sigma^2 sum_k r_k (x - mu_k) / v_k
        out = xf - sig_eff.square()[:, None] * (r[..., None] * diff_over_v).sum(1)
        out = torch.where(zero[:, None], xf, out)
        if bool(infinite.any()):
            mu, _, logw = self._params(x.device, sig.dtype)
            out = torch.where(infinite[:, None], logw.exp() @ mu, out)
        return out.reshape(x.shape).to(x.dtype)

    def velocity(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """The ideal flow-matching velocity ``v(x_t, t) = E[n - y | x_t]`` for ``x_t = (1 - t) y + t n``.

        ``E[x_t - t (n - y) | x_t] = E[y | x_t]`` and ``x_t / (1 - t) = y + sigma n`` with
        ``sigma = t / (1 - t)``, so ``v = (x_t - D(x_t / (1 - t); t / (1 - t))) / t``.  At t = 1
        (``x_t = n``, sigma = inf, D given ``u = x_t``) it is ``x_t - E[y]``; at t = 0 (``x_t = y``) it
        is ``-x_t``.
        """
        self._check(x_t)
        t = self._sigma(t, x_t, _compute_dtype(x_t.device))
        xf = x_t.to(t.dtype)
        column = t.reshape(-1, *([1] * len(self.shape)))
        zero = column == 0
        t_eff = column.masked_fill(zero, 1.0)  # 0/0 at t = 0, replaced below
        x = torch.where(t_eff == 1, xf, xf / (1 - t_eff))  # u at t = 1
        denoised = self.denoise(x, (t_eff / (1 - t_eff)).reshape(-1))
        v = torch.where(zero, -xf, (xf - denoised) / t_eff)
        return v.to(x_t.dtype)

    def velocity_backbone(self, time_scale: float = 1.0):
        """``backbone(x_t, timestep, **cond) -> velocity(x_t, timestep / time_scale)``: the mixture as a
        flow model for ``edm.flow.FlowDenoiser(..., time_scale=time_scale)``; conditioning is ignored."""

        def backbone(x_t: torch.Tensor, timestep, **cond) -> torch.Tensor:
            return self.velocity(x_t, timestep / time_scale)

        return backbone

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """Denoiser protocol ``D(x, sigma, **cond)``; conditioning is ignored."""
        return self.denoise(x, sigma)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` samples of clean data, ``[n, *shape]``.

        Randomness is drawn on the generator's device (CPU without one) and moved to ``device``
        (default: the parameters' device); ``dtype`` defaults to the means' dtype.
        """
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.means.device
        gen_device = generator.device if generator is not None else torch.device("cpu")
        cdtype = _compute_dtype(gen_device)
        mu, s2, logw = self._params(gen_device, cdtype)
        idx = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        eps = torch.randn((n, mu.shape[1]), generator=generator, dtype=cdtype, device=gen_device)
        y = mu[idx] + s2[idx].sqrt() * eps
        return y.reshape(n, *self.shape).to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        kind = "diagonal" if self.diagonal else "isotropic"
        return (f"GaussianMixture(k={self.k}, shape={self.shape}, {kind}, "
                f"sigma_data={self.sigma_data:.4g}, dtype={self.dtype})")

"""Training losses of EDM (Karras et al. 2022, Section 5 and Table 1).

Every loss draws ``sigma`` from a scheme's training distribution, noise ``n ~ N(0, sigma^2 I)``
and returns the per-element weighted error.  Two equivalent forms share that code path:

* :class:`SchemeLoss` (and its NVlabs-named presets :class:`EDMLoss`, :class:`VPLoss`,
  :class:`VELoss`): ``lambda(sigma) (D(y + n; sigma) - y)^2`` for any denoiser ``D``;
* :class:`PrecondLoss` / :func:`weighted_target_loss`: the raw backbone ``F`` of a
  :class:`~edm.precond.Precond` regressed on its target ``(y - c_skip (y + n)) / c_out`` with the
  effective weight ``lambda(sigma) c_out(sigma)^2``, which is the same number.

The random draws happen in NVlabs' order (sigma for the batch, then the noise), so a seeded
``generator`` reproduces ``training/loss.py`` exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .precond import Precond, Scheme, schemes

__all__ = [
    "draw_noise",
    "weighted_target_loss",
    "SchemeLoss",
    "EDMLoss",
    "VPLoss",
    "VELoss",
    "PrecondLoss",
]


def draw_noise(scheme: Scheme, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(sigma, n)``: ``sigma [B]`` from the scheme's training distribution, ``n = sigma * N(0, I)``."""
    sigma = scheme.sample_sigma((y.shape[0],), generator=generator, device=y.device, dtype=y.dtype)
    column = sigma.reshape(-1, *([1] * (y.ndim - 1)))
    n = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype) * column
    return sigma, n


def _prepare(images: Tensor, labels, augment_pipe, cond: dict) -> Tensor:
    y = images
    if augment_pipe is not None:
        y, augment_labels = augment_pipe(images)
        cond["augment_labels"] = augment_labels
    if labels is not None:
        cond["class_labels"] = labels
    return y


def weighted_target_loss(net: Precond, y: Tensor, n: Tensor, sigma: Tensor, **cond) -> Tensor:
    """``lambda c_out^2 (F(c_in (y + n); c_noise) - (y - c_skip (y + n)) / c_out)^2`` per element.

    Equals ``lambda (D(y + n; sigma) - y)^2`` for ``D = net``.
    """
    sigma = net.sigma_vector(y, sigma)
    x = y + n
    F, c_skip, c_out = net.backbone_output(x, sigma, **cond)
    column = sigma.reshape(-1, *([1] * (y.ndim - 1)))
    target = (y - c_skip * x) / c_out
    return net.scheme.loss_weight(column) * c_out**2 * (F - target) ** 2


class SchemeLoss:
    """``lambda(sigma) (D(y + n; sigma) - y)^2`` with sigma and lambda from ``scheme``.

    ``loss(net, images, labels=None, generator=None, augment_pipe=None, **cond)`` calls
    ``net(y + n, sigma, **cond)`` with sigma of shape ``[B]`` (``labels`` is passed as
    ``class_labels``) and returns a tensor of the shape of ``images``.
    """

    def __init__(self, scheme: str | Scheme = "edm", **scheme_params):
        self.scheme = schemes.get(scheme, **scheme_params)

    def __call__(self, net, images: Tensor, labels=None, generator=None, augment_pipe=None, **cond) -> Tensor:
        y = _prepare(images, labels, augment_pipe, cond)
        sigma, n = draw_noise(self.scheme, y, generator)
        D = net(y + n, sigma, **cond)
        column = sigma.reshape(-1, *([1] * (y.ndim - 1)))
        return self.scheme.loss_weight(column) * (D - y) ** 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheme!r})"


class EDMLoss(SchemeLoss):
    """EDM's loss: ``ln sigma ~ N(P_mean, P_std^2)``, ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        super().__init__("edm", P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)


class VPLoss(SchemeLoss):
    """VP loss: ``t ~ U(epsilon_t, 1)``, ``sigma = sigma_vp(t)``, ``lambda = 1 / sigma^2``."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        super().__init__("vp", beta_d=beta_d, beta_min=beta_min, epsilon_t=epsilon_t)


class VELoss(SchemeLoss):
    """VE loss: sigma log-uniform in ``[sigma_min, sigma_max]``, ``lambda = 1 / sigma^2``."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        super().__init__("ve", sigma_min=sigma_min, sigma_max=sigma_max)


class PrecondLoss:
    """Loss of a :class:`~edm.precond.Precond`'s raw backbone on its training target.

    Uses the net's own scheme for the sigma distribution and the weight; returns
    :func:`weighted_target_loss` per element (the same values :class:`SchemeLoss` gives for the
    same draws).
    """

    def __call__(
        self, net: Precond, images: Tensor, labels=None, generator=None, augment_pipe=None, **cond
    ) -> Tensor:
        y = _prepare(images, labels, augment_pipe, cond)
        sigma, n = draw_noise(net.scheme, y, generator)
        return weighted_target_loss(net, y, n, sigma, **cond)

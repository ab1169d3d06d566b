"""Classifier guidance (Dhariwal & Nichol 2021) in EDM variables, from any noise-aware classifier.

By Tweedie's formula ``E[y | x; sigma, c] = x + sigma^2 grad_x log p(x | c; sigma)``, and Bayes' rule splits
that score into ``grad_x log p(x; sigma) + grad_x log p(c | x; sigma)``. So

``D_w(x; sigma, c) = D(x; sigma) + w * sigma^2 * grad_x log p(c | x; sigma)``

is, at ``w = 1`` with the exact posterior classifier, the exact class-conditional denoiser; ``w > 1``
sharpens the classes as Dhariwal & Nichol's "classifier scale" does, ``w = 0`` is no guidance.
The classifier is any ``C(x, sigma) -> logits [B, K]`` differentiable in ``x``; the gradient comes from
autograd, one backward pass per evaluation (a benchmark counts it as a second evaluation). Each sample's
gradient depends on that sample only as long as the classifier treats samples independently (no batch
statistics), which is what makes the result batch-invariant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .wrapper import DenoiserWrapper, check_interval, check_weight, per_sample, sigma_column

__all__ = ["ClassifierGuidance", "WithoutLabels", "class_log_likelihood_grad"]


def class_log_likelihood_grad(classifier: Callable, x: torch.Tensor, sigma,
                              labels: torch.Tensor) -> torch.Tensor:
    """``grad_x log p(labels | x; sigma)`` per sample; ``labels`` one-hot (or soft) ``[B, K]`` or indices
    ``[B]``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, sigma), dim=-1)
        if labels.ndim == 1:
            picked = log_p.gather(1, labels.long()[:, None]).sum()
        else:
            picked = (log_p * labels.to(log_p.dtype)).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return grad.to(x.dtype)


class ClassifierGuidance(DenoiserWrapper):
    """``D + w sigma^2 grad_x log p(c | x; sigma)``; the target ``c`` is the ``label_key`` conditioning.

    The denoiser is called with the conditioning unchanged; to guide an unconditional model, wrap it in
    :class:`samplers.guidance.WithoutLabels` so it ignores the labels the classifier targets.
    ``interval``: guide only for ``sigma_lo < sigma <= sigma_hi``.
    """

    def __init__(self, denoiser: Callable, classifier: Callable, w: float = 1.0, *,
                 label_key: str = "class_labels", interval: tuple[float, float] | None = None):
        super().__init__(denoiser)
        if not callable(classifier):
            raise ValueError(f"classifier must be callable as C(x, sigma) -> logits, got {classifier!r}")
        self.classifier = classifier
        self.w = check_weight(w, "classifier scale")
        self.label_key = label_key
        self.interval = check_interval(interval)

    @property
    def evaluations(self) -> int:
        """Evaluations per guided call: the denoiser and one classifier forward + backward."""
        return 1 if self.w == 0 else 2

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        d = self.denoiser(x, sigma, **cond)
        if self.w == 0:
            return d
        labels = cond.get(self.label_key)
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"classifier guidance needs the target class as {self.label_key}= "
                             "(one-hot [B, K] or indices [B])")
        weight = per_sample(self.w, sigma, x, self.interval)
        if not bool(weight.any()):
            return d
        grad = class_log_likelihood_grad(self.classifier, x, sigma, labels)
        return d + (weight * sigma_column(sigma, x) ** 2 * grad).to(d.dtype)

    def __repr__(self) -> str:
        return f"ClassifierGuidance({self.denoiser!r}, {self.classifier!r}, w={self.w:g})"


class WithoutLabels(DenoiserWrapper):
    """The denoiser called without its class: ``label_key`` zeroed (the dropped label of NVlabs-style
    networks), or removed when ``remove=True`` (a model that takes no class at all). Lets a classifier
    or another transform see the class while the model samples unconditionally."""

    def __init__(self, denoiser: Callable, *, label_key: str = "class_labels", remove: bool = False):
        super().__init__(denoiser)
        self.label_key = label_key
        self.remove = remove

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        labels = cond.pop(self.label_key, None)
        if labels is not None and not self.remove:
            cond[self.label_key] = torch.zeros_like(labels)
        return self.denoiser(x, sigma, **cond)

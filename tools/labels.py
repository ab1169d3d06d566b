"""Conditioning per seed: the class label NVlabs' ``generate.py`` draws from a seed, and the keyword
arguments a class-conditional denoiser is called with."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from tools.common import BadInput

__all__ = ["check_class", "class_labels", "conditioning"]


def check_class(num_classes: int | None, class_label, hint: str = "", *, param: str = "class_label",
                what: str = "class") -> int | None:
    """``class_label`` checked against ``num_classes`` classes (None: drawn per seed); BadInput naming
    ``param`` (``what`` is the value in the message: the class, the negative class). ``hint`` follows the
    message when there are no classes (0 or None; e.g. how to get some)."""
    if class_label is None:
        return None
    if isinstance(class_label, bool) or not isinstance(class_label, numbers.Integral):
        raise BadInput(f"{what} must be an integer, got {class_label!r}", param)
    if not num_classes:
        raise BadInput(f"this model takes no class{hint}", param)
    if not 0 <= class_label < num_classes:
        raise BadInput(f"{what} {class_label} is out of range: the classes are 0..{num_classes - 1}", param)
    return int(class_label)


def class_labels(seeds: Sequence[int], num_classes: int, shape: Sequence[int], *,
                 device="cpu") -> torch.Tensor:
    """A class index per seed (int64 ``[len(seeds)]``), drawn from the seed alone.

    As NVlabs' ``generate.py`` with its ``StackedRandomGenerator``: the seed's generator
    (``manual_seed(seed % 2**32)`` on ``device``) draws the float32 latent of ``shape``, then the label
    with ``randint``. The label therefore depends on the seed (and the device kind), not the batch.
    """
    labels = []
    for seed in seeds:
        gen = torch.Generator(device=device).manual_seed(int(seed) % (1 << 32))
        torch.randn(tuple(shape), generator=gen, device=device)  # the latent's draw, as NVlabs
        labels.append(torch.randint(num_classes, size=[], generator=gen, device=device))
    return torch.stack(labels).to(device=device, dtype=torch.int64)


def conditioning(num_classes: int, shape: Sequence[int], seeds: Sequence[int], class_label: int | None,
                 device, dtype) -> dict[str, torch.Tensor]:
    """``{"class_labels": one-hot [B, K]}`` for ``num_classes`` classes (a class-conditional model, or the
    classifier guiding an unconditional one), ``{}`` without classes. ``shape``: the model's image shape.

    ``class_label`` None draws each seed's label (:func:`class_labels`); an int gives every sample it.
    """
    if not num_classes:
        return {}
    if class_label is None:
        labels = class_labels(seeds, num_classes, shape, device=device)
    else:
        labels = torch.full((len(seeds),), int(class_label), dtype=torch.int64, device=device)
    return {"class_labels": torch.nn.functional.one_hot(labels, num_classes).to(dtype)}

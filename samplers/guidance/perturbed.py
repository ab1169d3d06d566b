"""Stub of the row perturbation that network-internal guiders (PAG, SEG, SLG) switch on per batch row.

Only what the network hooks read: a :class:`RowPerturbation` with ``kind``, ``options`` and ``mask``, and
SEG's query blur :func:`blur_queries`. The guidance wrapper that uses them lives beside this on another
branch and replaces this module when the two meet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RowPerturbation", "blur_queries"]

#: a blur sigma above this is infinite: every query becomes the mean query
INFINITE_BLUR = 9999.9


class RowPerturbation:
    """What a hooked layer reads at forward time: ``kind`` ("pag", "seg" or "slg"), its ``options`` and
    ``mask`` (None: off; else a ``[B]`` bool tensor of the rows to perturb)."""

    def __init__(self, kind: str, options: Mapping[str, Any] | None = None):
        self.kind = kind
        self.options = dict(options or {})
        self.mask: Tensor | None = None

    @contextmanager
    def rows(self, mask: Tensor) -> Iterator[RowPerturbation]:
        """Perturb the rows where ``mask`` is true for the calls made inside the block."""
        self.mask = mask
        try:
            yield self
        finally:
            self.mask = None


def _kernel_size(sigma: float, side: int) -> int:
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    return min(size, side - (side % 2 - 1))  # reflect padding needs half the kernel below the side


def _gaussian(size: int, sigma: float) -> Tensor:
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blur_queries(q: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Queries ``[B, N, C]`` of an ``height x width`` token grid (row-major) blurred over the grid by a
    Gaussian of std ``sigma`` (reflect padding); an infinite sigma makes every query the mean."""
    B, N, C = q.shape
    grid = q.transpose(1, 2).reshape(B, C, height, width)
    if sigma > INFINITE_BLUR:
        return grid.mean(dim=(2, 3), keepdim=True).expand_as(grid).reshape(B, C, N).transpose(1, 2)
    ky, kx = _kernel_size(sigma, height), _kernel_size(sigma, width)
    grid = F.pad(grid, [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
    grid = F.conv2d(grid, _gaussian(ky, sigma).to(q).reshape(1, 1, ky, 1).expand(C, 1, ky, 1), groups=C)
    grid = F.conv2d(grid, _gaussian(kx, sigma).to(q).reshape(1, 1, 1, kx).expand(C, 1, 1, kx), groups=C)
    return grid.reshape(B, C, N).transpose(1, 2)

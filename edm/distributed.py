"""Data-parallel training that gives the weights of one process: every rank draws the whole minibatch.

Under ``torchrun`` (a torch.distributed process group already started: gloo on CPU, NCCL on CUDA) every
rank draws the same global minibatch and the same global random numbers (sigma, noise, label dropout)
from the same generators, so they all advance as in one process. Each rank then evaluates the network
on its own contiguous rows of the global batch only (:meth:`BatchShare.rows`; with a batch not divisible
by the number of ranks the first ranks take one row more), and its loss is ``sum of its rows' losses /
global size``; summing the gradients over the ranks (:meth:`BatchShare.reduce_gradients`) gives the
gradient of the global mean, as one process computes it, up to the order of the float additions.

* :class:`BatchShare`: this process's rank and the number of ranks, its rows of a batch, the loss of
  its rows, the gradient sum, and :meth:`~BatchShare.all_ok` (every rank learns whether a step that only
  rank 0 takes, such as writing a checkpoint, succeeded).
* :class:`RowsOf`: a backbone evaluated on this rank's rows of a global batch. The loss and the
  preconditioning work on the whole batch (cheap, elementwise), only the network sees the rows, so any
  loss that draws its randomness for the batch and calls the network on it is shared out unchanged.
* :func:`sample_rand` and :class:`SampleDropout`: random draws inside a network (label dropout, dropout)
  that, on a rank's rows, take those rows of the draw for the global batch: the same numbers, and the
  same generator state afterwards, as in one process.

With one process (no process group, or a group of one) every method is the plain single-process
computation, bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchShare", "RowsOf", "SampleDropout", "rows_of_batch", "sample_rand", "global_rows"]


def rows_of_batch(batch: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous rows of a batch of ``batch`` split over ``world`` ranks.

    The first ``batch % world`` ranks take ``batch // world + 1`` rows, the others ``batch // world``;
    the slices are in rank order and cover the batch exactly once.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} ranks")
    size, extra = divmod(batch, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


class BatchShare:
    """This process's share of each global minibatch: its rank, the number of ranks, and the collectives
    of a data-parallel step. Built from the started process group (or one process when there is none).

    ``device`` is where the gradients live (a CUDA device with NCCL, the CPU with gloo).
    """

    def __init__(self, device=None):
        import torch.distributed as dist

        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if not self.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"started as one of {os.environ['WORLD_SIZE']} processes (WORLD_SIZE) but "
                             "torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group first (gloo on CPU, nccl on CUDA)")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch`` (:func:`rows_of_batch`)."""
        return rows_of_batch(batch, self.rank, self.world)

    def check_batch(self, batch: int) -> None:
        """ValueError unless every rank gets at least one row of a batch of ``batch``."""
        if batch < self.world:
            raise ValueError(f"batch {batch} is smaller than the number of processes ({self.world}): "
                             "every process needs at least one sample")

    def rows_of(self, net: nn.Module) -> nn.Module:
        """``net`` evaluated on this rank's rows of its input batch (:class:`RowsOf`); ``net`` itself in one
        process."""
        return RowsOf(net, self) if self.distributed else net

    def mean(self, loss: Tensor) -> Tensor:
        """This rank's part of ``loss.mean()``: the sum of its rows (of a loss over the global batch, rows
        first) divided by the number of elements of the whole loss; ``loss.mean()`` in one process."""
        if not self.distributed:
            return loss.mean()
        return loss[self.rows(loss.shape[0])].sum() / loss.numel()

    def reduce_gradients(self, parameters: Iterable[nn.Parameter], loss: Tensor) -> float:
        """Sum the gradients of ``parameters`` over the ranks, in place, in one flat all-reduce; returns
        the global loss (the sum over ranks of :meth:`mean`'s parts).

        Parameters without a gradient are left without one (every rank runs the same graph, so they are
        the same on every rank, and the optimizer skips them as in one process).
        """
        if not self.distributed:
            return float(loss.detach())
        import torch.distributed as dist

        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(self.device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` is true on every rank (every rank must call it; it also waits for all)."""
        if not self.distributed:
            return bool(ok)
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag) == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        self.all_ok(True)


# ---------------------------------------------------------------------------------------------------
# A network on this rank's rows of the global batch


#: ``(rows, total)`` while a network works on rows of a global batch (:func:`global_rows`), else None
_ROWS: contextvars.ContextVar[tuple[slice, int] | None] = contextvars.ContextVar("rows", default=None)


@contextlib.contextmanager
def global_rows(rows: slice, total: int) -> Iterator[None]:
    """Within the block a network call works on ``rows`` of a global batch of ``total``: per-sample
    draws (:func:`sample_rand`, :class:`SampleDropout`) take those rows of the global draw."""
    token = _ROWS.set((rows, int(total)))
    try:
        yield
    finally:
        _ROWS.reset(token)


def sample_rand(shape, device=None, dtype=None) -> Tensor:
    """``torch.rand(shape)`` (torch's global generator) for a batch whose rows are ``shape[0]``; inside
    :func:`global_rows`, the rows of the global batch's ``torch.rand((total, *shape[1:]))``."""
    context = _ROWS.get()
    if context is None:
        return torch.rand(shape, device=device, dtype=dtype)
    rows, total = context
    return torch.rand((total, *shape[1:]), device=device, dtype=dtype)[rows]


class SampleDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose mask, inside :func:`global_rows`, is the rows of the mask of the
    global batch (drawn by the same kernel on a tensor of ones of the global shape), so a rank's rows
    are dropped exactly as in one process."""

    def forward(self, x: Tensor) -> Tensor:
        context = _ROWS.get()
        if context is None or not self.training or self.p == 0:
            return super().forward(x)
        rows, total = context
        ones = torch.ones((total, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return x * F.dropout(ones, self.p, True)[rows]


class RowsOf(nn.Module):
    """``net`` evaluated on ``share``'s rows of a global batch.

    ``forward(x, *args, **kwargs)`` passes ``net`` the rows of ``x`` and of every tensor argument whose
    first dimension is the batch (noise labels, class labels, ...; others as they are), within
    :func:`global_rows`, and returns the output at the global batch size: the rows it computed, zeros
    (without gradient) elsewhere. Other attributes are ``net``'s.
    """

    def __init__(self, net: nn.Module, share: BatchShare):
        super().__init__()
        self.net = net
        self.share = share

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        total = x.shape[0]
        rows = self.share.rows(total)

        def pick(value):
            if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == total:
                return value[rows]
            return value

        with global_rows(rows, total):
            out = self.net(x[rows], *map(pick, args), **{k: pick(v) for k, v in kwargs.items()})
        before = out.new_zeros((rows.start, *out.shape[1:]))
        after = out.new_zeros((total - rows.stop, *out.shape[1:]))
        return torch.cat([before, out, after])

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

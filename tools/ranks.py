"""This process's place among ``torchrun`` workers, for every command that splits work across processes.

Under torchrun (``WORLD_SIZE``/``RANK`` set) :meth:`Ranks.start` sets up torch.distributed (gloo on CPU,
NCCL on CUDA) unless it is already set up; :meth:`Ranks.total` sums counts over ranks and
:meth:`Ranks.barrier` waits for all of them. In one process every method is a no-op.
"""

from __future__ import annotations

import os

import torch

__all__ = ["Ranks", "one_process"]


class Ranks:
    """This process's place among the torchrun workers; sets up torch.distributed when needed."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._owned = False
        self._device = torch.device("cpu")

    def start(self, device: torch.device) -> Ranks:
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
            self._owned = True
        if dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            self._device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        return self

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized()

    def share(self, items: list) -> list:
        """This rank's share of ``items``: every ``world``-th one from ``rank``."""
        return items[self.rank::self.world]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self._device.type == "cuda":
                dist.barrier(device_ids=[self._device.index])
            else:
                dist.barrier()

    def total(self, *counts: int) -> list[int]:
        if not self.distributed:
            return list(counts)
        import torch.distributed as dist

        values = torch.tensor(counts, dtype=torch.int64, device=self._device)
        dist.all_reduce(values)
        return [int(v) for v in values.tolist()]

    def close(self, synchronize: bool = False) -> None:
        """Destroy the process group this object started; with ``synchronize``, first wait until every rank
        is done communicating (a rank tearing gloo down while a peer still talks to it can abort)."""
        if self._owned:
            import torch.distributed as dist

            if synchronize:
                dist.barrier()
            dist.destroy_process_group()
            self._owned = False

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self.close(synchronize=error_type is None)  # after an error the peers may never reach the barrier


def one_process() -> Ranks:
    """Ranks of a single process, whatever the environment says (for work that is not shared out)."""
    ranks = Ranks()
    ranks.world, ranks.rank = 1, 0
    return ranks

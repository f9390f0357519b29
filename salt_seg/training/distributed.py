"""``torchrun`` support: process group set-up, rank helpers, metric reduction.

Under ``torchrun`` the environment carries ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; on CPU the ``gloo`` backend is
used (the tests run 2 CPU processes), on GPUs ``nccl``. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: this process's :func:`init_distributed` created the process group, so :func:`cleanup` destroys it
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed)."""
    if not info.enabled:
        return values
    v = values.clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group :func:`init_distributed` created (one it found is left to its owner)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

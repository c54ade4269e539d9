"""torchrun sharding: rank r generates sample indices r, r + W, r + 2W, ...; rank 0 gathers and writes.

Start with ``torchrun --nproc_per_node N -m bench run ...``. Since every sample's noise is seeded by its
index, the gathered samples equal a single-process run's, whatever N is (EDM's convention).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> range:
    """The sample indices this process generates."""
    return range(rank(), n, world_size())


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (a list of one object without torchrun)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unshard(parts: list[torch.Tensor], n: int) -> torch.Tensor:
    """Interleave per-rank samples (rank r holds indices r::W) back into index order."""
    out = torch.empty((n, *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out

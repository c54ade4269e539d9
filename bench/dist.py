"""torchrun sharding: rank r generates sample indices r, r + W, r + 2W, ...; rank 0 merges metrics and writes.

Start with ``torchrun --nproc_per_node N -m bench run ...``. Since every sample's noise is seeded by its
index, the samples equal a single-process run's, whatever N is (EDM's convention). The process group
uses nccl when the ranks compute on GPUs and gloo on CPUs; ranks only meet to gather small objects.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1) with the backend for ``device``; else a no-op."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")


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

"""torchrun sharding: rank r generates sample indices r, r + W, r + 2W, ...; rank 0 merges metrics and writes.

Start with ``torchrun --nproc_per_node N -m bench run ...``. Since every sample's noise is seeded by its
index, the samples equal a single-process run's, whatever N is (EDM's convention). The process group
uses nccl when the ranks compute on GPUs and gloo on CPUs; ranks only meet to gather small objects.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

RENDEZVOUS_TIMEOUT_S = float(os.environ.get("SAMPLERBENCH_RENDEZVOUS_TIMEOUT_S", 300))  # for every peer to arrive
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # torch's default: ranks meet once per cell, cells may take minutes


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1) with the backend for ``device``; else a no-op.

    The environment is checked first (``bench.preflight.check_environment``); peers that do not all arrive within
    RENDEZVOUS_TIMEOUT_S end the run with one line (a ValueError), instead of waiting forever.
    """
    from .preflight import captured_native_stderr, check_environment, one_line

    world = check_environment()
    if world == 1 or dist.is_initialized():
        return
    rank = int(os.environ["RANK"])
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        with captured_native_stderr():  # c10d logs each failed connection with its C++ stack
            store, rank, world = next(dist.rendezvous("env://", rank, world,
                                                      timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S)))
    except Exception as exc:  # noqa: BLE001 -- torch raises several types (DistNetworkError, RuntimeError, ...)
        raise ValueError(f"rank {rank} of {world}: the other processes did not meet at {where} within "
                         f"{RENDEZVOUS_TIMEOUT_S:g} s ({one_line(exc, 160)}); start all of them with torchrun") from None
    store.set_timeout(COLLECTIVE_TIMEOUT)
    store = dist.PrefixStore("default_pg", store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)


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

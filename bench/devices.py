"""Which device a run computes on: ``--device cpu | cuda | cuda:N`` (default: cuda when there is one).

Under torchrun a bare "cuda" means this rank's GPU, cuda:LOCAL_RANK (one GPU per process, as
torchrun's own examples and EDM's scripts do).
"""
from __future__ import annotations

import os
import platform
import re

import torch

DEVICE_CHOICES = "cpu, cuda, cuda:N"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(request: str | None) -> torch.device:
    """The torch.device for a --device value; ValueError naming what is allowed on this machine."""
    request = (request or default_device()).strip().lower()
    if request == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", request)
    if not m:
        raise ValueError(f"--device {request!r} is not a device; allowed: {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {request}: CUDA is not available on this machine; allowed: cpu")
    count = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= count:
        raise ValueError(f"--device {request}: this machine has {count} GPU(s); allowed: cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """What a results row records: "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (x86_64)"."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()})"


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (around timed regions only; never inside a solver step)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)

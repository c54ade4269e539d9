"""The solver state: x_T's dtype (float64 or float32) and device; every tensor a sampler makes lives there.

Schedule math runs in float64 on the CPU, once per time grid; ``on_state`` then moves all of it to the
state's device and dtype in one copy, before the step loop, so the loop itself never waits on the host.
"""
from __future__ import annotations

import torch

STATE_DTYPES = (torch.float64, torch.float32)


def check_state(x: torch.Tensor, who: str) -> None:
    """ValueError unless x is a tensor in one of the supported state dtypes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: x_T must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in STATE_DTYPES:
        raise ValueError(f"{who}: x_T has dtype {x.dtype}; allowed: {[str(d) for d in STATE_DTYPES]}")


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor on ``device`` in ``dtype``; to a GPU from pinned memory, without blocking the host."""
    t = t.to(dtype)
    if device.type == "cuda":
        # A copy from pageable host memory synchronises the stream; a pinned one runs asynchronously.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def on_state(x: torch.Tensor, *tables) -> list[torch.Tensor]:
    """float64 CPU tables (time grids, schedule coefficients) on x's device in x's dtype, in one copy."""
    tables = [torch.as_tensor(t, dtype=torch.float64) for t in tables]
    flat = torch.cat([t.reshape(-1) for t in tables]) if tables else torch.zeros(0, dtype=torch.float64)
    flat = to_device(flat, x.device, x.dtype)
    return [p.view(t.shape) for p, t in zip(flat.split([t.numel() for t in tables]), tables)]

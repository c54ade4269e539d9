"""The solver state: x_T's dtype (float64 or float32) and device; every tensor a sampler makes lives there.

Schedule math runs in float64 on the CPU, once per time grid (``grid_tables`` keeps it for the next call with
the same grid); ``on_state`` then moves all of it to the state's device and dtype in one copy, before the step
loop, so the loop itself never waits on the host. ``lincomb`` does a step's update with few temporaries.
"""
from __future__ import annotations

from functools import lru_cache

import torch

STATE_DTYPES = (torch.float64, torch.float32)
GRID_TABLES_CACHED = 512  # (sampler, schedule, NFE, options) entries whose host tables are kept


def grid_tables(fn):
    """Cache a pure function (schedule, NFE, options) -> host tables (tensors never changed afterwards).

    The schedule is keyed by identity (a schedule is never changed once built; a trained one is a new object);
    ``on_state`` copies the tables, so no caller can change a cached one.
    """
    return lru_cache(maxsize=GRID_TABLES_CACHED)(fn)


def lincomb(*terms) -> torch.Tensor:
    """c0 * t0 + c1 * t1 + ... summed left to right into one new tensor, bit for bit equal to that expression.

    A term is (c, t) with c a number or 0-d tensor, or a bare tensor t (added unscaled). Products of later
    terms go through one scratch tensor, so an update makes two tensors however many terms it has; the inputs
    are never written.
    """
    first, rest = terms[0], list(terms[1:])
    if isinstance(first, torch.Tensor):
        if not rest:
            return first.clone()
        # t0 + c1 t1 = c1 t1 + t0 exactly (the first sum commutes), so the scaled term makes the new tensor.
        c, t = rest.pop(0)
        out = torch.mul(t, c).add_(first)
    else:
        c, t = first
        out = torch.mul(t, c)
    scratch = None
    for term in rest:
        if isinstance(term, torch.Tensor):
            out.add_(term)
            continue
        c, t = term
        scratch = torch.mul(t, c) if scratch is None else torch.mul(t, c, out=scratch)
        out.add_(scratch)
    return out


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

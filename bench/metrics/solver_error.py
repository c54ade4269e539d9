"""Solver error: per-sample L2 distance to the exact / reference ODE solution from the same x_T."""
from __future__ import annotations

import torch


def solver_error(samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean and median over samples of ||x - x_ref||_2 (each sample flattened), in float64."""
    d = (samples.to(torch.float64) - reference.to(torch.float64)).flatten(1).norm(dim=1)
    return {"solver_error_mean": float(d.mean()), "solver_error_median": float(d.median())}

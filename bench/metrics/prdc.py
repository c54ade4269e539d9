"""Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020) of generated features
against real ones, from k-nearest-neighbour balls.

A point's ball has the distance to its k-th nearest neighbour in its own set (itself excluded) as radius, closed
(<=, as torch-fidelity's ``prc``). Precision: share of generated points inside some real ball; recall: share of real
points inside some generated ball (both from torch-fidelity's ``calculate_precision_recall_part``). Density: real
balls containing a generated point, counted per generated point, averaged and divided by k; coverage: share of real
balls containing at least one generated point. Distances are computed in blocks of ``batch_size`` rows, so memory is
O(batch_size x n), not O(n^2).
"""
from __future__ import annotations

import torch
from torch_fidelity.metric_prc import calc_cdist_part, calculate_precision_recall_part

PR_K = 3  # Kynkaanniemi et al. 2019's choice and torch-fidelity's prc_neighborhood default
DC_K = 5  # Naeem et al. 2020's choice
BATCH_SIZE = 1000  # rows per distance block


def _check(fake: torch.Tensor, real: torch.Tensor, k: int) -> None:
    if fake.dim() != 2 or real.dim() != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"prdc: features must be (n, d) and (m, d); got {tuple(fake.shape)} and {tuple(real.shape)}")
    if not 1 <= k < min(len(fake), len(real)):
        raise ValueError(f"prdc: k = {k} needs more than k points in each set; got {len(fake)} generated and "
                         f"{len(real)} real")


def kth_neighbour_distance(x: torch.Tensor, k: int, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the k+1-th smallest distance: the first is itself)."""
    return torch.cat([calc_cdist_part(b, x, batch_size).kthvalue(k + 1, dim=1).values for b in x.split(batch_size)])


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = PR_K, batch_size: int = BATCH_SIZE) -> dict:
    """{"precision", "recall"} of generated ``fake`` (n, d) against ``real`` (m, d) features: torch-fidelity's."""
    _check(fake, real, k)
    precision, recall = calculate_precision_recall_part(fake, real, k, batch_size)
    return {"precision": precision, "recall": recall}


def density_coverage(fake: torch.Tensor, real: torch.Tensor, k: int = DC_K, batch_size: int = BATCH_SIZE) -> dict:
    """{"density", "coverage"} of generated ``fake`` (n, d) against ``real`` (m, d) features (Naeem et al. 2020)."""
    _check(fake, real, k)
    radius = kth_neighbour_distance(real, k, batch_size)  # (m,)
    inside = torch.zeros(len(fake), dtype=torch.float64)  # real balls around each generated point
    covered = torch.zeros(len(real), dtype=torch.bool)
    lo = 0
    for b in real.split(batch_size):
        hit = calc_cdist_part(b, fake, batch_size) <= radius[lo:lo + len(b), None]  # (real block, n)
        inside += hit.sum(0, dtype=torch.float64)
        covered[lo:lo + len(b)] = hit.any(1)
        lo += len(b)
    return {"density": float(inside.mean() / k), "coverage": float(covered.double().mean())}


def prdc(fake: torch.Tensor, real: torch.Tensor, pr_k: int = PR_K, dc_k: int = DC_K,
         batch_size: int = BATCH_SIZE) -> dict:
    """{"precision", "recall", "density", "coverage"}; precision/recall with ``pr_k`` neighbours, density/coverage
    with ``dc_k``."""
    return {**precision_recall(fake, real, pr_k, batch_size), **density_coverage(fake, real, dc_k, batch_size)}

"""FID-infinity (Chong & Forsyth 2020): FID at several subset sizes N, a straight line in 1/N, read at 1/N = 0.

FID's expectation falls with the number of generated samples N roughly as FID_inf + c / N (the bias of the sample
covariance), so two cells at the same N share the bias but a table cannot say how much of a value it is. As in the
paper's code (``calculate_FID_infinity``), FID is computed on random subsets of the generated features at
FID_INF_POINTS sizes evenly spaced from a tenth of the pool (at least 2 d, twice the feature dimension: towards d the
next terms of FID's expansion in d / N bend it away from the line; on isotropic Gaussian features, whose FID is all
bias, a line started at d overshoots 0 by 25-40 % of the FID, at 2 d by 7-10 %, at 4 d by 3 %:
reports/fid_bias/curvature.py) to all of it, and a least-squares line in 1/N is
extrapolated to 1/N = 0. The paper draws one subset per size from 50,000 samples; from the 300 held-out digits that
estimate spreads by +-10 FID over subset seeds, so below FID_INF_ONE_DRAW_N samples FID_INF_REPEATS subsets are drawn
per size (+-6);
from there on one, as the paper (a 2048-d distance costs 3-8 s on a CPU core). The pool must hold at least 4 d
samples (a range of sizes of at least a factor 2), else FID_inf is NaN. The reference side keeps all its images, so
its own small-sample bias (fixed for a given reference set) stays in FID_inf.

The Frechet distances of the subsets use tr sqrt(S_g S_r) = tr sqrt(R S_g R) with R = S_r^(1/2), computed once: one
symmetric eigendecomposition per subset (a 2048-d scipy ``sqrtm`` takes 30 s on one CPU core, this 3 s).
"""
from __future__ import annotations

import numpy as np
import torch

FID_INF_POINTS = 15  # the paper's number of subset sizes
FID_INF_MIN_FRACTION = 0.1  # smallest subset: the paper's 5,000 of 50,000
FID_INF_REPEATS = 5  # subsets per size below FID_INF_ONE_DRAW_N samples
FID_INF_ONE_DRAW_N = 5000  # the paper's smallest subset: from this pool size on, one subset per size
FID_INF_SEED = 0  # subsets are drawn from a generator with this seed: the same features give the same FID_inf


def subset_sizes(n: int, dim: int, points: int = FID_INF_POINTS,
                 min_fraction: float = FID_INF_MIN_FRACTION) -> np.ndarray | None:
    """``points`` sizes evenly spaced from max(min_fraction * n, 2 dim) to n; None if that start exceeds n / 2."""
    lo = max(int(np.ceil(min_fraction * n)), 2 * dim, 2)
    if 2 * lo > n:
        return None
    return np.unique(np.linspace(lo, n, points).round().astype(np.int64))


def intercept_in_inverse_n(sizes, values) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line values = intercept + slope / sizes."""
    sizes, values = np.asarray(sizes, np.float64), np.asarray(values, np.float64)
    if len(sizes) < 2 or len(np.unique(sizes)) < 2:
        raise ValueError(f"fid_inf: a line needs at least two distinct subset sizes; got {sizes.tolist()}")
    slope, intercept = np.polyfit(1.0 / sizes, values, 1)
    return float(intercept), float(slope)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distances(features: torch.Tensor, subsets: list[torch.Tensor], mu_ref, sigma_ref) -> list[float]:
    """The Frechet distance of each subset of ``features`` (rows ``subsets[i]``) to N(mu_ref, sigma_ref), float64."""
    f = features.to(torch.float64)
    mu_ref = torch.as_tensor(mu_ref, dtype=torch.float64, device=f.device)
    sigma_ref = torch.as_tensor(sigma_ref, dtype=torch.float64, device=f.device)
    root = _psd_sqrt(sigma_ref)
    out = []
    for idx in subsets:
        x = f[idx.to(f.device)]
        mu = x.mean(0)
        sigma = torch.cov(x.T).reshape(len(mu), len(mu))  # unbiased, as np.cov and the full-set FID
        tr_sqrt = torch.linalg.eigvalsh(root @ sigma @ root).clamp_min(0).sqrt().sum()
        out.append(float((mu - mu_ref).square().sum() + sigma.trace() + sigma_ref.trace() - 2 * tr_sqrt))
    return out


def fid_infinity(features: torch.Tensor, mu_ref, sigma_ref, points: int = FID_INF_POINTS,
                 repeats: int | None = None, min_fraction: float = FID_INF_MIN_FRACTION,
                 seed: int = FID_INF_SEED) -> dict:
    """{"fid_inf", "fid_inf_slope"} of generated ``features`` (n, d) against reference statistics: FID on random
    subsets (``repeats`` per size, each drawn without replacement; None: FID_INF_REPEATS below FID_INF_ONE_DRAW_N
    samples, else 1) fitted as fid_inf + fid_inf_slope / N; both NaN when n < 4 d (``subset_sizes``)."""
    sizes = subset_sizes(len(features), features.shape[1], points, min_fraction)
    if sizes is None:
        return {"fid_inf": float("nan"), "fid_inf_slope": float("nan")}
    if repeats is None:
        repeats = FID_INF_REPEATS if len(features) < FID_INF_ONE_DRAW_N else 1
    sizes = np.repeat(sizes, repeats)
    g = torch.Generator().manual_seed(seed)
    subsets = [torch.randperm(len(features), generator=g)[:n] for n in sizes]
    fid_inf, slope = intercept_in_inverse_n(sizes, frechet_distances(features, subsets, mu_ref, sigma_ref))
    return {"fid_inf": fid_inf, "fid_inf_slope": slope}

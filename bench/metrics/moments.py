"""Distribution metrics against a known density: Frechet distance to exact moments, mean log-likelihood."""
from __future__ import annotations

import numpy as np
import torch


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Frechet / 2-Wasserstein between Gaussians)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    import scipy.linalg  # 0.3 s of imports: only when a Frechet distance is computed

    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def sample_moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of flattened samples, accumulated in float64."""
    x = x.to(torch.float64).flatten(1).numpy()
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_to_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    mu, c = sample_moments(samples)
    return frechet_distance(mu, c, mean.numpy(), cov.numpy())


def mean_loglik(samples: torch.Tensor, log_prob) -> float:
    """Average exact log p_0 of the samples (nats)."""
    return float(log_prob(samples.to(torch.float64).flatten(1)).mean())

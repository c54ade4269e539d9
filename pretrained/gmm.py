"""Analytic Gaussian mixtures: exact eps(x, t), exact log p_0, exact samples and an exact-ODE oracle.

For p_0 = sum_k w_k N(mu_k, diag(s_k^2)) the VP marginal is p_t = sum_k w_k N(alpha_t mu_k,
diag(alpha_t^2 s_k^2 + sigma_t^2)), so the score (and eps = -sigma score) is known in closed form.
The oracle solves the probability-flow ODE from x_T with an 8th-order adaptive Runge-Kutta
(torchdiffeq dopri8) in float64 at a tolerance of 1e-13 (global error about 2e-9).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchdiffeq import odeint

from samplers.model import DiffusionModel
from samplers.schedules import NoiseSchedule

ORACLE_RTOL = 1e-13  # global error <= 2e-9 (measured against 1e-14); 1e-10 left ~1e-7
ORACLE_ATOL = 1e-13


class GaussianMixture:
    """A diagonal-covariance Gaussian mixture data distribution under a VP schedule."""

    def __init__(self, weights, means, stds, schedule: NoiseSchedule):
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        self.mu = torch.as_tensor(means, dtype=torch.float64)           # (K, D)
        self.s2 = torch.as_tensor(stds, dtype=torch.float64) ** 2       # (K, D)
        if self.mu.shape != self.s2.shape or self.mu.shape[0] != self.w.numel():
            raise ValueError("weights (K,), means (K, D) and stds (K, D) must agree")
        self.schedule = schedule
        self.dim = self.mu.shape[1]

    def _components(self, x, t):
        """Per-component log densities (B, K) and the terms (x - a mu_k) / C_k (B, K, D) at time t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        a = self.schedule.alpha(t)[:, None, None]
        s2 = (-torch.expm1(2.0 * self.schedule.log_alpha(t)))[:, None, None]
        cov = a**2 * self.s2[None] + s2                                  # (B, K, D)
        diff = x[:, None, :] - a * self.mu[None]
        logn = -0.5 * ((diff**2 / cov) + torch.log(2 * math.pi * cov)).sum(-1)
        return logn + torch.log(self.w)[None], diff / cov

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log p_t(x), exact (float64)."""
        logits, _ = self._components(x.to(torch.float64), t)
        return torch.logsumexp(logits, dim=-1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        logits, g = self._components(x.to(torch.float64), t)
        r = torch.softmax(logits, dim=-1)
        return -(r[..., None] * g).sum(1)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact noise prediction -sigma_t * score, the analytic 'network'."""
        return -self.schedule.sigma(torch.as_tensor(t, dtype=torch.float64)).reshape(-1, 1) * self.score(x, t)

    def as_model(self, name: str) -> DiffusionModel:
        return DiffusionModel(self.eps, self.schedule, "eps", data_shape=(self.dim,), net_dtype=torch.float64,
                              name=name)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Exact samples from p_0."""
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.w, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return self.mu[k] + self.s2[k].sqrt() * z

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and covariance of p_0."""
        mean = self.w @ self.mu
        second = torch.einsum("k,kd,ke->de", self.w, self.mu, self.mu) + torch.diag(self.w @ self.s2)
        return mean, second - torch.outer(mean, mean)

    def ode_solution(self, x_T: torch.Tensor, t_end: float, t_start: float | None = None) -> torch.Tensor:
        """The probability-flow ODE solved from x_T at t_start (default T) to t_end, tolerance 1e-13."""
        sch = self.schedule
        t_start = sch.T if t_start is None else t_start

        def velocity(t, x):
            # dx/dt = f x - g^2 score / 2 with the exact score: going through eps = -sigma score and back
            # costs the round-off that stalls dopri8 at this tolerance.
            f, g2 = sch.drift_diffusion(t)
            return f * x - 0.5 * g2 * self.score(x, t)

        ts = torch.tensor([t_start, t_end], dtype=torch.float64)
        return odeint(velocity, x_T.to(torch.float64), ts, method="dopri8", rtol=ORACLE_RTOL, atol=ORACLE_ATOL)[-1]


def ring_2d(schedule: NoiseSchedule, modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """gmm-2d: `modes` equal-weight isotropic modes on a ring."""
    ang = 2 * math.pi * np.arange(modes) / modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return GaussianMixture(np.ones(modes), means, np.full((modes, 2), std), schedule)


def random_mixture(schedule: NoiseSchedule, dim: int = 16, modes: int = 6, seed: int = 16) -> GaussianMixture:
    """gmm-16d: unequal weights, means N(0, 0.5^2), per-axis stds in [0.1, 0.4]; fixed by `seed`."""
    rs = np.random.RandomState(seed)  # legacy RandomState: its stream is frozen across numpy versions
    weights = rs.dirichlet(np.full(modes, 3.0))
    means = 0.5 * rs.randn(modes, dim)
    stds = rs.uniform(0.1, 0.4, size=(modes, dim))
    return GaussianMixture(weights, means, stds, schedule)

"""Analytic Gaussian mixtures: exact eps(x, t), exact log p_0, exact samples and an exact-ODE oracle.

For p_0 = sum_k w_k N(mu_k, diag(s_k^2)) the VP marginal is p_t = sum_k w_k N(alpha_t mu_k,
diag(alpha_t^2 s_k^2 + sigma_t^2)), so the score (and eps = -sigma score) is known in closed form.
The oracle solves the probability-flow ODE from x_T with an 8th-order adaptive Runge-Kutta
(torchdiffeq dopri8) in float64 at a tolerance of 1e-13 (global error about 2e-9).
The mixture's parameters, scores, densities and oracle live on its device; exact samples and
moments are computed from CPU copies, so they are the same numbers on every device.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from samplers.genie import eps_derivative
from samplers.model import DiffusionModel
from samplers.schedules import NoiseSchedule

ORACLE_RTOL = 1e-13  # global error <= 2e-9 (measured against 1e-14); 1e-10 left ~1e-7
ORACLE_ATOL = 1e-13


class GaussianMixture:
    """A diagonal-covariance Gaussian mixture data distribution under a VP schedule."""

    def __init__(self, weights, means, stds, schedule: NoiseSchedule, device="cpu"):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)                  # (K, D)
        s2 = torch.as_tensor(stds, dtype=torch.float64) ** 2              # (K, D)
        if mu.dim() != 2 or mu.shape != s2.shape or mu.shape[0] != w.numel():
            raise ValueError("weights (K,), means (K, D) and stds (K, D) must agree")
        self._cpu = (w / w.sum(), mu, s2)  # for exact samples and moments: the same numbers on every device
        self.device = torch.device(device)
        self.w, self.mu, self.s2 = (p.to(self.device) for p in self._cpu)
        self.schedule = schedule
        self.dim = mu.shape[1]

    def _on_device(self, x: torch.Tensor, what: str = "x") -> torch.Tensor:
        if x.device != self.device:
            raise ValueError(f"{what} is on {x.device}, the mixture on {self.device}: move it there first")
        return x.to(torch.float64)

    def _time(self, fn, t) -> torch.Tensor:
        """A schedule function of t, computed where t is (float64) and moved to the mixture's device."""
        return fn(torch.as_tensor(t, dtype=torch.float64)).to(self.device)

    def _components(self, x, t):
        """Per-component log densities (B, K) and the terms (x - a mu_k) / C_k (B, K, D) at time t."""
        log_a = self._time(self.schedule.log_alpha, t)
        log_a = log_a.expand(x.shape[0]) if log_a.dim() == 0 else log_a
        a = torch.exp(log_a)[:, None, None]
        s2 = (-torch.expm1(2.0 * log_a))[:, None, None]
        cov = a**2 * self.s2[None] + s2                                  # (B, K, D)
        diff = x[:, None, :] - a * self.mu[None]
        logn = -0.5 * ((diff**2 / cov) + torch.log(2 * math.pi * cov)).sum(-1)
        return logn + torch.log(self.w)[None], diff / cov

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log p_t(x), exact (float64)."""
        logits, _ = self._components(self._on_device(x), t)
        return torch.logsumexp(logits, dim=-1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact score grad_x log p_t(x) (float64)."""
        logits, g = self._components(self._on_device(x), t)
        r = torch.softmax(logits, dim=-1)
        return -(r[..., None] * g).sum(1)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact noise prediction -sigma_t * score, the analytic 'network'."""
        return -self._time(self.schedule.sigma, t).reshape(-1, 1) * self.score(x, t)

    def eps_and_derivative(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, d eps / d gamma along the PF-ODE), exact: one JVP of the exact eps (GENIE's derivative; t: (B,))."""
        return eps_derivative(self.eps, self.schedule, x, t)

    def as_model(self, name: str, derivative: bool = False) -> DiffusionModel:
        """The analytic 'network' behind the model boundary; ``derivative``: with its exact ``derivative_fn``."""
        return DiffusionModel(self.eps, self.schedule, "eps", data_shape=(self.dim,), net_dtype=torch.float64,
                              name=name, device=self.device,
                              derivative_fn=self.eps_and_derivative if derivative else None)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Exact samples from p_0, on the CPU (the same numbers whatever the mixture's device)."""
        w, mu, s2 = self._cpu
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(w, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return mu[k] + s2[k].sqrt() * z

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and covariance of p_0, on the CPU."""
        w, mu, s2 = self._cpu
        mean = w @ mu
        second = torch.einsum("k,kd,ke->de", w, mu, mu) + torch.diag(w @ s2)
        return mean, second - torch.outer(mean, mean)

    def ode_solution(self, x_T: torch.Tensor, t_end: float, t_start: float | None = None) -> torch.Tensor:
        """The probability-flow ODE solved from x_T at t_start (default T) to t_end, tolerance 1e-13, on the device."""
        sch = self.schedule
        t_start = sch.T if t_start is None else t_start
        x_T = self._on_device(x_T, "x_T")
        if self.device.type == "meta":
            raise ValueError("the exact ODE oracle needs values (adaptive steps): not available on the meta device")

        def velocity(t, x):
            # dx/dt = f x - g^2 score / 2 with the exact score: going through eps = -sigma score and back
            # costs the round-off that stalls dopri8 at this tolerance.
            f, g2 = (v.to(self.device) for v in sch.drift_diffusion(t))
            return f * x - 0.5 * g2 * self.score(x, t)

        from torchdiffeq import odeint  # imports scipy (0.4 s): only when an oracle is solved

        ts = torch.tensor([t_start, t_end], dtype=torch.float64, device=self.device)
        return odeint(velocity, x_T, ts, method="dopri8", rtol=ORACLE_RTOL, atol=ORACLE_ATOL)[-1]


def ring_2d(schedule: NoiseSchedule, modes: int = 8, radius: float = 1.0, std: float = 0.1,
            device="cpu") -> GaussianMixture:
    """gmm-2d: `modes` equal-weight isotropic modes on a ring."""
    ang = 2 * math.pi * np.arange(modes) / modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return GaussianMixture(np.ones(modes), means, np.full((modes, 2), std), schedule, device)


def random_mixture(schedule: NoiseSchedule, dim: int = 16, modes: int = 6, seed: int = 16,
                   device="cpu") -> GaussianMixture:
    """gmm-16d: unequal weights, means N(0, 0.5^2), per-axis stds in [0.1, 0.4]; fixed by `seed`."""
    rs = np.random.RandomState(seed)  # legacy RandomState: its stream is frozen across numpy versions
    weights = rs.dirichlet(np.full(modes, 3.0))
    means = 0.5 * rs.randn(modes, dim)
    stds = rs.uniform(0.1, 0.4, size=(modes, dim))
    return GaussianMixture(weights, means, stds, schedule, device)

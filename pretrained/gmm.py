"""Analytic Gaussian mixtures: exact eps(x, t), exact log p_0, exact samples and an exact-ODE oracle.

For p_0 = sum_k w_k N(mu_k, diag(s_k^2)) the marginal of any schedule (VP, EDM, flow) is p_t = sum_k w_k
N(alpha_t mu_k, diag(alpha_t^2 s_k^2 + sigma_t^2)), so the score (and eps = -sigma score) is known in closed form.
The oracle solves the probability-flow ODE from x_T with an 8th-order adaptive Runge-Kutta
(torchdiffeq dopri8) in lambda, float64, at a tolerance of 1e-13 (global error about 5e-9 against 1e-14).
The mixture's parameters, scores, densities and oracle live on its device; exact samples and
moments are computed from CPU copies, so they are the same numbers on every device.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from samplers.genie import eps_derivative
from samplers.model import DiffusionModel
from samplers.schedules import NoiseSchedule, VPSchedule

ORACLE_RTOL = 1e-13  # global error <= 6e-9 (measured against 1e-14 on gmm-16d / gmm-2d, every family)
ORACLE_ATOL = 1e-13


class GaussianMixture:
    """A diagonal-covariance Gaussian mixture data distribution under a noise schedule of any family."""

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
        if isinstance(self.schedule, VPSchedule):
            s2 = (-torch.expm1(2.0 * log_a))[:, None, None]
        else:
            s2 = self._time(lambda u: torch.exp(2.0 * self.schedule.log_sigma(u)), t)
            s2 = (s2.expand(x.shape[0]) if s2.dim() == 0 else s2)[:, None, None]
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

    def edm_net(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """The exact F of EDM's preconditioned denoiser D = c_skip x + c_out F(c_in x, c_noise) (EDM schedule)."""
        sigma = torch.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = (c.reshape(-1, 1) for c in self.schedule.precondition(sigma))
        x = x_in / c_in
        d = x + sigma.reshape(-1, 1) ** 2 * self.score(x, sigma)  # Tweedie: x0 = x + sigma^2 score (alpha = 1)
        return (d - c_skip * x) / c_out

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact velocity d x_t / d t = alpha' x0 + sigma' eps (flow: eps - x0), from the exact eps."""
        eps = self.eps(x, t)
        a, s = (self._time(fn, t).reshape(-1, 1) for fn in (self.schedule.alpha, self.schedule.sigma))
        da, ds = (v.to(self.device).reshape(-1, 1) for v in self.schedule.alpha_sigma_derivatives(t))
        return da * (x - s * eps) / a + ds * eps

    def as_model(self, name: str, derivative: bool = False) -> DiffusionModel:
        """The analytic 'network' behind the model boundary, predicting what its family's networks predict: eps (VP),
        EDM's preconditioned F ("edm") or the flow velocity ("velocity"); ``derivative``: eps with its exact
        ``derivative_fn``."""
        family = getattr(self.schedule, "family", "vp")
        prediction = "eps" if derivative else {"edm": "edm", "flow": "velocity"}.get(family, "eps")
        fn = {"eps": self.eps, "edm": self.edm_net, "velocity": self.velocity}[prediction]
        return DiffusionModel(fn, self.schedule, prediction, data_shape=(self.dim,), net_dtype=torch.float64,
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
        """The probability-flow ODE solved from x_T at t_start (default T) to t_end, tolerance 1e-13, on the device.

        Solved in the family-invariant form d xbar / d lambda = -rho eps (xbar = x / alpha, rho = sigma / alpha) with
        the exact eps: the same ODE on VP, EDM and flow (in t, EDM's 80 -> 0.002 underflows dopri8's step).
        """
        sch = self.schedule
        t_start = sch.T if t_start is None else t_start
        x_T = self._on_device(x_T, "x_T")
        if self.device.type == "meta":
            raise ValueError("the exact ODE oracle needs values (adaptive steps): not available on the meta device")

        def velocity(lam, xb):
            t = sch.inverse_lambda(lam.cpu())
            a, rho = (v.to(self.device) for v in (sch.alpha(t), sch.rho(t)))
            return -rho * self.eps(xb * a, t.reshape(1).expand(xb.shape[0]))

        from torchdiffeq import odeint  # imports scipy (0.4 s): only when an oracle is solved

        ts = torch.tensor([t_start, t_end], dtype=torch.float64)
        lams, alphas = sch.lambda_(ts).to(self.device), sch.alpha(ts).to(self.device)
        xb = odeint(velocity, x_T / alphas[0], lams, method="dopri8", rtol=ORACLE_RTOL, atol=ORACLE_ATOL)[-1]
        return xb * alphas[1]


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

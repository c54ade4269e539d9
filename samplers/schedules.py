"""VP noise schedules: alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t) and the inverse t(lambda).

One object owns the schedule (STYLE principle 1): samplers, grids, the model boundary and the
diffusers adapter all ask it, nothing recomputes alpha or sigma on its own. Continuous time runs
from 0 (data) to ``T``; everything is evaluated in float64, on the device of the times asked for.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

_F64 = torch.float64


def _as_t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


class NoiseSchedule(ABC):
    """A variance-preserving schedule q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)."""

    name: str = "vp"
    T: float = 1.0

    @abstractmethod
    def log_alpha(self, t) -> torch.Tensor:
        """log alpha_t (float64)."""

    @abstractmethod
    def inverse_lambda(self, lam) -> torch.Tensor:
        """t such that lambda_t = lam (float64)."""

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        # sigma = sqrt(1 - alpha^2), written to stay accurate as alpha -> 1.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> torch.Tensor:
        log_a = self.log_alpha(t)
        log_s = 0.5 * torch.log(-torch.expm1(2.0 * log_a))
        return log_a - log_s

    def rho(self, t) -> torch.Tensor:
        """sigma_t / alpha_t = exp(-lambda_t), the 'sigma' of EDM / k-diffusion."""
        return torch.exp(-self.lambda_(t))

    def inverse_rho(self, rho) -> torch.Tensor:
        return self.inverse_lambda(-torch.log(_as_t(rho)))

    def drift_diffusion(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(t), g(t)^2) of the forward SDE dx = f x dt + g dW; f = d log alpha / dt, g^2 = -2 f."""
        t = _as_t(t).detach().requires_grad_(True)
        with torch.enable_grad():
            (f,) = torch.autograd.grad(self.log_alpha(t).sum(), t)
        # VP: alpha^2 + sigma^2 = 1, so g^2 = d sigma^2/dt - 2 f sigma^2 = -2 f.
        return f, -2.0 * f

    def ode_velocity(self, x: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """dx/dt of the probability-flow ODE, f x - g^2 score / 2 = f x + g^2 eps / (2 sigma) (Song et al. 2021)."""
        f, g2 = self.drift_diffusion(t)
        return f * x + (0.5 * g2 / self.sigma(t)) * eps

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class VPLinear(NoiseSchedule):
    """VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021)."""

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        self.T = 1.0

    def log_alpha(self, t):
        t = _as_t(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def inverse_lambda(self, lam):
        # Solve 0.25 (b1 - b0) t^2 + 0.5 b0 t + 0.5 log(1 + e^{-2 lam}) = 0 for t >= 0.
        lam = _as_t(lam)
        tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.beta_0**2 + tmp
        return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)

    def config(self):
        return {"name": self.name, "beta_min": self.beta_0, "beta_max": self.beta_1}


class VPCosine(NoiseSchedule):
    """Cosine schedule of Nichol & Dhariwal (2021), continuous; T = 0.9946 as in DPM-Solver."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s, self.T = float(s), float(T)
        self._log_alpha_0 = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        t = _as_t(t)
        return torch.log(torch.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0

    def inverse_lambda(self, lam):
        lam = _as_t(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        t_fn = lambda la: torch.arccos(torch.exp(la + self._log_alpha_0)) * 2.0 * (1.0 + self.s) / math.pi - self.s
        return t_fn(log_alpha)

    def config(self):
        return {"name": self.name, "s": self.s, "T": self.T}


class VPDiscrete(NoiseSchedule):
    """Discrete-time DDPM schedule from betas, made continuous by piecewise-linear log alpha.

    As in DPM-Solver: step n (0-based) sits at t_n = (n + 1) / N, so T = 1, and log alpha is
    interpolated linearly in t between the N knots (and extrapolated linearly below t_0 = 1/N).
    """

    name = "vp_discrete"

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=_F64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-d array of at least 2 values in (0, 1)")
        self.betas = betas
        self.N = betas.numel()
        self.T = 1.0
        self.t_array = torch.linspace(0.0, 1.0, self.N + 1, dtype=_F64)[1:]
        self.log_alpha_array = 0.5 * torch.cumsum(torch.log1p(-betas), dim=0)
        log_a = self.log_alpha_array
        self.lambda_array = log_a - 0.5 * torch.log(-torch.expm1(2.0 * log_a))
        self._on_device = {}

    def _knots(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_array, log_alpha_array) on ``device``, copied there once."""
        if device not in self._on_device:
            self._on_device[device] = (self.t_array.to(device), self.log_alpha_array.to(device))
        return self._on_device[device]

    @staticmethod
    def _interp(x, xp, fp):
        """Piecewise-linear interpolation with linear extrapolation at both ends (xp increasing, on x's device)."""
        idx = torch.clamp(torch.searchsorted(xp, x.reshape(-1).contiguous()), 1, xp.numel() - 1)
        x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
        y = y0 + (x.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)
        return y.reshape(x.shape)

    def log_alpha(self, t):
        t = _as_t(t)
        return self._interp(t, *self._knots(t.device))

    def inverse_lambda(self, lam):
        # lambda is decreasing in t; interpolate t(lambda) on the knots via log alpha.
        lam = _as_t(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        t_array, log_alpha_array = self._knots(lam.device)
        return self._interp(-log_alpha, -log_alpha_array, t_array)

    def to_discrete(self, t) -> torch.Tensor:
        """Continuous t -> the model's discrete time input, (t - 1/N) * N (DPM-Solver's convention)."""
        return (_as_t(t) - 1.0 / self.N) * self.N

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 2e-2, n: int = 1000) -> "VPDiscrete":
        return cls(torch.linspace(beta_start, beta_end, n, dtype=_F64))

    def config(self):
        return {"name": self.name, "N": self.N, "beta_first": float(self.betas[0]), "beta_last": float(self.betas[-1])}


SCHEDULES = {"vp_linear": VPLinear, "vp_cosine": VPCosine}


def make_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a continuous schedule by name ("vp_linear", "vp_cosine")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)

"""Noise schedules of every family: alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t) and the inverse t(lambda).

One object owns the schedule (STYLE principle 1): samplers, grids, the model boundary and the
diffusers adapter all ask it, nothing recomputes alpha or sigma on its own. Continuous time runs
from 0 (data) to ``T``; everything is evaluated in float64, on the device of the times asked for.
Three families (Meta ``flow_matching``'s affine paths are the model for this): variance preserving (VP,
alpha^2 + sigma^2 = 1: DDPM, ScoreSDE, VDM), variance exploding / EDM (alpha = 1, sigma = t: NVlabs/edm,
k-diffusion) and flow matching (alpha = 1 - t, sigma = t: rectified flow, SD3, Flux). Solvers written in lambda
and in (alpha, sigma) run on all three unchanged; the PF-ODE in (x / alpha, sigma / alpha) is the same ODE for
each (the cross-family test checks it).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

_F64 = torch.float64
VP_T_END = 1e-3      # where VP sampling ends by default (DPM-Solver's eps for continuous VP models)
FLOW_T_MAX = 1 - 1e-3  # a flow's start: lambda(1) = -inf, so sampling starts at sigma = 0.999, as diffusers' flow
#                        DPM-Solver / UniPC grids do (1 - 1/N_train); its x_T is N(0, sigma_T^2 I)
FLOW_T_END = 1e-3    # where flow sampling ends by default (lambda = 6.9, as VP's end at 1e-3 has 4.6 and EDM's 6.2)


def _as_t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


def _grad(fn, t) -> torch.Tensor:
    """d fn / dt elementwise by autograd (float64)."""
    t = _as_t(t).detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(fn(t).sum(), t)
    return d


class NoiseSchedule(ABC):
    """q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) on t in (0, T], lambda_t decreasing; any family.

    Subclasses give ``log_alpha``, ``log_sigma`` and ``inverse_lambda``; ``t_end`` is where sampling ends by
    default, ``prior_std`` the standard deviation of x_T ~ N(0, prior_std^2 I) sampling starts from.
    """

    name: str = "schedule"
    family: str = "?"
    T: float = 1.0
    t_end: float = VP_T_END

    @abstractmethod
    def log_alpha(self, t) -> torch.Tensor:
        """log alpha_t (float64)."""

    @abstractmethod
    def log_sigma(self, t) -> torch.Tensor:
        """log sigma_t (float64)."""

    @abstractmethod
    def inverse_lambda(self, lam) -> torch.Tensor:
        """t such that lambda_t = lam (float64)."""

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t) -> torch.Tensor:
        return self.log_alpha(t) - self.log_sigma(t)

    def rho(self, t) -> torch.Tensor:
        """sigma_t / alpha_t = exp(-lambda_t), the 'sigma' of EDM / k-diffusion."""
        return torch.exp(-self.lambda_(t))

    def inverse_rho(self, rho) -> torch.Tensor:
        return self.inverse_lambda(-torch.log(_as_t(rho)))

    @property
    def prior_std(self) -> float:
        """x_T ~ N(0, prior_std^2 I) approximates q(x_T): sigma_T (EDM: sigma_max, as its sampler starts)."""
        return float(self.sigma(self.T))

    def warp(self, u) -> torch.Tensor:
        """The time a time-defined grid (time_uniform, time_quadratic) places at u: identity but for shifted flows."""
        return _as_t(u)

    def unwarp(self, t) -> torch.Tensor:
        return _as_t(t)

    def alpha_sigma_derivatives(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha / dt, d sigma / dt) (float64), for velocity-prediction networks."""
        return _grad(self.alpha, t), _grad(self.sigma, t)

    def drift_diffusion(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(t), g(t)^2) of the forward SDE dx = f x dt + g dW: f = d log alpha / dt, g^2 = d sigma^2/dt - 2 f sigma^2."""
        f = _grad(self.log_alpha, t)
        # g^2 = 2 sigma^2 (d log sigma / dt - f) = -2 sigma^2 d lambda / dt.
        return f, 2.0 * self.sigma(t) ** 2 * (_grad(self.log_sigma, t) - f)

    def ode_velocity(self, x: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """dx/dt of the probability-flow ODE, f x - g^2 score / 2 = f x + g^2 eps / (2 sigma) (Song et al. 2021)."""
        f, g2 = self.drift_diffusion(t)
        return f * x + (0.5 * g2 / self.sigma(t)) * eps

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class VPSchedule(NoiseSchedule):
    """A variance-preserving schedule: sigma_t = sqrt(1 - alpha_t^2); x_T ~ N(0, I)."""

    name = "vp"
    family = "vp"

    def log_sigma(self, t) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def sigma(self, t) -> torch.Tensor:
        # sigma = sqrt(1 - alpha^2), written to stay accurate as alpha -> 1.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> torch.Tensor:
        log_a = self.log_alpha(t)
        log_s = 0.5 * torch.log(-torch.expm1(2.0 * log_a))
        return log_a - log_s

    @property
    def prior_std(self) -> float:
        return 1.0

    def drift_diffusion(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        f = _grad(self.log_alpha, t)
        # VP: alpha^2 + sigma^2 = 1, so g^2 = d sigma^2/dt - 2 f sigma^2 = -2 f.
        return f, -2.0 * f


class VPLinear(VPSchedule):
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


class VPCosine(VPSchedule):
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


class VPDiscrete(VPSchedule):
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


class EDM(NoiseSchedule):
    """Variance exploding / EDM (Karras et al. 2022): alpha = 1, sigma = t on [sigma_min, sigma_max].

    ``sigma_data`` sets the preconditioning of an "edm" network (``precondition``); sampling starts at
    x_T = sigma_max z and ends at sigma_min by default, as EDM's and k-diffusion's samplers do.
    """

    name = "edm"
    family = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        vals = {"sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in vals.values()) or not sigma_min < sigma_max:
            raise ValueError(f"EDM schedule needs finite 0 < sigma_min < sigma_max and sigma_data > 0, got {vals}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.T, self.t_end = self.sigma_max, self.sigma_min

    def log_alpha(self, t):
        return torch.zeros_like(_as_t(t))

    def log_sigma(self, t):
        return torch.log(_as_t(t))

    def alpha(self, t):
        return torch.ones_like(_as_t(t))

    def sigma(self, t):
        return _as_t(t).clone()

    def lambda_(self, t):
        return -torch.log(_as_t(t))

    def inverse_lambda(self, lam):
        return torch.exp(-_as_t(lam))

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def alpha_sigma_derivatives(self, t):
        t = _as_t(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def drift_diffusion(self, t):
        t = _as_t(t)
        return torch.zeros_like(t), 2.0 * t

    def precondition(self, t) -> tuple[torch.Tensor, ...]:
        """EDM's (c_skip, c_out, c_in, c_noise) at sigma = t: D = c_skip x + c_out F(c_in x, c_noise) (EDMPrecond)."""
        s, sd = _as_t(t), self.sigma_data
        n2 = s**2 + sd**2
        return sd**2 / n2, s * sd / n2.sqrt(), n2.rsqrt(), 0.25 * torch.log(s)

    def config(self):
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


class FlowMatching(NoiseSchedule):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): alpha = 1 - t, sigma = t.

    Conventions of SD3 and diffusers (t = sigma = 1 is noise; the network's velocity is d x / d t = eps - x0; Meta's
    ``flow_matching`` runs time the other way: t_meta = 1 - t, v_meta = -v). ``shift`` is SD3's time shift
    t' = s u / (1 + (s - 1) u), applied to time-defined grids (time_uniform, time_quadratic) as diffusers' flow
    schedulers apply it to their sigmas; grids defined by the log-SNR (logSNR, karras) do not change with it.
    Sampling starts at ``T`` (lambda(1) = -inf; default: FLOW_T_MAX shifted, as diffusers' first flow sigma) from
    x_T ~ N(0, T^2 I).
    """

    name = "flow"
    family = "flow"

    def __init__(self, shift: float = 1.0, T: float | None = None, t_end: float = FLOW_T_END):
        vals = {"shift": shift, "T": T, "t_end": t_end}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in vals.values() if v is not None) or not shift > 0:
            raise ValueError(f"flow schedule needs shift > 0 and 0 < t_end < T < 1, got {vals}")
        self.shift = float(shift)
        # Default start: FLOW_T_MAX in the unshifted time, as diffusers shifts its first flow sigma (1 - 1/1000).
        self.T = float(self.warp(FLOW_T_MAX)) if T is None else float(T)
        self.t_end = float(t_end)
        if not 0 < self.t_end < self.T < 1:
            raise ValueError(f"flow schedule needs shift > 0 and 0 < t_end < T < 1, got {vals} (T = {self.T})")

    def log_alpha(self, t):
        return torch.log1p(-_as_t(t))

    def log_sigma(self, t):
        return torch.log(_as_t(t))

    def alpha(self, t):
        return 1.0 - _as_t(t)

    def sigma(self, t):
        return _as_t(t).clone()

    def inverse_lambda(self, lam):
        # (1 - t) / t = e^lam: t = 1 / (1 + e^lam) = sigmoid(-lam).
        return torch.sigmoid(-_as_t(lam))

    def warp(self, u):
        u = _as_t(u)
        return u if self.shift == 1.0 else self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def unwarp(self, t):
        t = _as_t(t)
        return t if self.shift == 1.0 else t / (self.shift - (self.shift - 1.0) * t)

    def alpha_sigma_derivatives(self, t):
        t = _as_t(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def drift_diffusion(self, t):
        # f = -1 / (1 - t); g^2 = 2 t^2 (1/t + 1/(1 - t)) = 2 t / (1 - t).
        t = _as_t(t)
        return -1.0 / (1.0 - t), 2.0 * t / (1.0 - t)

    def config(self):
        return {"name": self.name, "shift": self.shift, "T": self.T, "t_end": self.t_end}


SCHEDULES = {"vp_linear": VPLinear, "vp_cosine": VPCosine, "edm": EDM, "flow": FlowMatching}
FAMILIES = ("vp", "edm", "flow")


def make_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a continuous schedule by name ("vp_linear", "vp_cosine", "edm", "flow")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)

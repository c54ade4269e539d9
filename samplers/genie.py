"""GENIE (Dockhorn, Vahdat & Kreis 2022): the second truncated Taylor method on the PF-ODE in xbar = x / alpha.

With gamma = sigma / alpha the PF-ODE reads d xbar / d gamma = eps(x, t) (DDIM is its Euler method, the first
truncated Taylor method); GENIE adds the second-order term h^2 / 2 d eps / d gamma, the total derivative of eps along
the ODE. That derivative comes from the model boundary's ``eps_and_derivative`` (one network pass: a distilled head,
or an exact JVP on the analytic mixtures); ``eps_derivative`` computes the exact one by a Jacobian-vector product.
Conventions (grids, the analytic first step, the final denoising step, NFE counted as network evaluations) follow the
paper's released sampler ``ttm2``.
"""
from __future__ import annotations

import torch

from .grids import T_END, time_grid
from .registry import Unsupported, UnsupportedNFE, register
from .state import grid_tables, lincomb, on_state

HEAD = "genie"  # the network of a checkpoint the sampler uses: model.head("genie"), with a derivative_fn
GRIDS = ("time_uniform", "time_quadratic", "logSNR")


def ode_tangent(schedule, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx/dgamma, dt/dgamma) along the PF-ODE at (x, t) with noise prediction eps, in x's and t's dtypes.

    x = alpha xbar and d xbar / d gamma = eps give dx/dgamma = alpha' xbar + alpha eps = alpha (eps - sigma x)
    (alpha = (1 + gamma^2)^(-1/2)); d gamma / dt = -gamma dlambda/dt = -f / (alpha sigma) with f = d log alpha / dt.
    """
    t64 = t.to(torch.float64)
    a, s = schedule.alpha(t64), schedule.sigma(t64)
    f, _ = schedule.drift_diffusion(t64)
    shape = (-1,) + (1,) * (x.dim() - 1)
    dx = a.to(x.dtype).reshape(shape) * (eps - s.to(x.dtype).reshape(shape) * x)
    dt = -(a * s / f).to(t.dtype)
    return dx, dt


def eps_derivative(eps_fn, schedule, x: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, d eps / d gamma) of ``eps_fn(x, t)`` along the PF-ODE: one JVP in (x, t) (GENIE eq. for d_gamma eps).

    t has shape (B,) (continuous time); ``eps``, if known, saves the forward pass that the tangent needs.
    """
    t = t.contiguous()  # the model boundary passes t expanded from one value: forward AD needs its own memory
    if eps is None:
        eps = eps_fn(x, t)
    dx, dt = ode_tangent(schedule, x, t, eps)
    _, d = torch.func.jvp(eps_fn, (x, t), (dx, dt))
    return eps, d


def _steps(nfe: int, afs: bool, denoise: bool) -> int:
    """Taylor steps that spend ``nfe``: one evaluation per step, none for the AFS step, one for denoising."""
    return nfe + int(afs) - int(denoise)


def _check_nfe(nfe: int, *, afs, denoise, **_) -> None:
    if _steps(nfe, afs, denoise) < 1:
        raise UnsupportedNFE(f"genie with denoise=True and afs=False spends one NFE on the final denoising step and "
                             f"needs at least one Taylor step: NFE >= 2, got {nfe}")


def _requires(model, nfe, **_) -> None:
    if getattr(model.schedule, "family", "vp") != "vp":
        # ode_tangent's alpha = (1 + gamma^2)^(-1/2) and the head's d eps / d gamma are defined on VP schedules.
        raise Unsupported(f"genie is written for variance-preserving schedules; {model.name!r} is "
                          f"{model.schedule.family}")
    if not model.has_head(HEAD) or model.heads[HEAD].derivative_fn is None:
        raise Unsupported(f"genie needs a derivative head (checkpoint {model.name!r} has heads "
                          f"{model.head_names()}); train one with python -m pretrained.train genie")


@register("genie", defaults={"grid": "time_quadratic", "t_end": T_END, "afs": False, "denoise": False},
          choices={"grid": GRIDS}, check_nfe=_check_nfe, requires=_requires,
          description="GENIE (Dockhorn et al. 2022): 2nd truncated Taylor method with a distilled d eps / d gamma head")
def genie(model, x, nfe, *, noise, grid, t_end, afs, denoise):
    """GENIE, Dockhorn et al. 2022 (TTM2): xbar += h eps + h^2 / 2 d eps / d gamma, h = gamma_{n+1} - gamma_n."""
    net = model.head(HEAD)
    steps = _steps(nfe, afs, denoise)
    ts, gamma, inv_alpha, h, half_h2 = on_state(x, *_tables(model.schedule, steps, grid, t_end))
    xbar = x * inv_alpha[0]
    for n in range(steps):
        if n == 0 and afs:
            # Analytic first step: at t = T, x_T ~ N(0, I) and eps(x_T, T) ~ x_T; its derivative taken as 0.
            xbar = lincomb(xbar, (h[0], x))
            continue
        eps, d_eps = net.eps_and_derivative(xbar / inv_alpha[n], ts[n])
        # Second truncated Taylor step in xbar.
        xbar = lincomb(xbar, (h[n], eps), (half_h2[n], d_eps))
    if denoise:
        # Final denoising step: x0 = (x - sigma eps) / alpha = xbar - gamma eps at t_end (one more NFE).
        return lincomb(xbar, (-gamma[-1], net.eps(xbar / inv_alpha[-1], ts[-1])))
    return xbar / inv_alpha[-1]


@grid_tables
def _tables(sch, steps, grid, t_end):
    ts = time_grid(sch, grid, steps, t_end)
    gamma = sch.rho(ts)
    h = gamma[1:] - gamma[:-1]
    return ts, gamma, torch.sqrt(1.0 + gamma**2), h, 0.5 * h**2

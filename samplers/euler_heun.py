"""Euler on the probability-flow ODE, Heun's second-order step as in EDM (Karras et al. 2022, Alg. 1) and the
explicit midpoint rule (RK2; torchdiffeq's ``midpoint``, which Meta's ``flow_matching`` ODESolver runs)."""
from __future__ import annotations

import torch

from .grids import T_END, time_grid
from .registry import UnsupportedNFE, register
from .state import grid_tables, lincomb, on_state

EULER_SPACES = ("t", "rho")


@register("euler", defaults={"space": "t", "grid": "time_uniform", "t_end": T_END},
          choices={"space": EULER_SPACES},
          description="Euler on the PF-ODE: in t (dx/dt) or, space='rho', EDM's x/alpha vs sigma/alpha")
def euler(model, x, nfe, *, noise, space, grid, t_end):
    """Explicit Euler; space='t' integrates dx/dt = f x + g^2 eps / (2 sigma), 'rho' is EDM's Euler (= DDIM)."""
    ts, c_x, c_eps = on_state(x, *_euler_tables(model.schedule, nfe, space, grid, t_end))
    for i in range(nfe):
        x = lincomb((c_x[i], x), (c_eps[i], model.eps(x, ts[i])))
    return x


@grid_tables
def _euler_tables(sch, nfe, space, grid, t_end):
    ts = time_grid(sch, grid, nfe, t_end)
    if space == "t":
        (f, g2), sigma, h = sch.drift_diffusion(ts), sch.sigma(ts), ts[1:] - ts[:-1]
        c_x, c_eps = 1.0 + h * f[:-1], h * 0.5 * g2[:-1] / sigma[:-1]
    else:
        # d(x/alpha)/d rho = eps, rho = sigma / alpha.
        alpha, rho = sch.alpha(ts), sch.rho(ts)
        c_x, c_eps = alpha[1:] / alpha[:-1], alpha[1:] * (rho[1:] - rho[:-1])
    return ts, c_x, c_eps


def _check_heun(nfe, *, final_euler, **_):
    if final_euler and nfe % 2 == 0:
        raise UnsupportedNFE(f"heun with final_euler spends 2N - 1 evaluations (odd NFE), got {nfe}")
    if not final_euler and (nfe % 2 or nfe < 2):
        raise UnsupportedNFE(f"heun spends 2 evaluations per step (even NFE >= 2), got {nfe}")


@register("heun", defaults={"final_euler": False, "grid": "karras", "t_end": T_END}, check_nfe=_check_heun,
          description="Heun's 2nd-order step in EDM's (x/alpha, sigma/alpha) variables; 2 NFE per step")
def heun(model, x, nfe, *, noise, final_euler, grid, t_end):
    """EDM Algorithm 1 (deterministic): Heun steps; with final_euler the last step is Euler (NFE 2N - 1)."""
    steps = (nfe + 1) // 2 if final_euler else nfe // 2
    ts, alpha, h, half_h = on_state(x, *_heun_tables(model.schedule, steps, grid, t_end))
    xb = x / alpha[0]  # x-bar = x / alpha: the ODE is d x-bar / d rho = eps
    for i in range(steps):
        d = model.eps(xb * alpha[i], ts[i])
        # Euler step.
        x_next = lincomb(xb, (h[i], d))
        if final_euler and i == steps - 1:
            xb = x_next
            break
        # Apply 2nd order correction: xb + (h / 2) (d + d_next).
        d_next = model.eps(x_next * alpha[i + 1], ts[i + 1])
        xb = torch.add(d, d_next).mul_(half_h[i]).add_(xb)
    return xb.mul_(alpha[-1])


@grid_tables
def _heun_tables(sch, steps, grid, t_end):
    ts = time_grid(sch, grid, steps, t_end)
    alpha, rho = sch.alpha(ts), sch.rho(ts)
    h = rho[1:] - rho[:-1]
    return ts, alpha, h, 0.5 * h


def _check_midpoint(nfe, **_):
    if nfe % 2 or nfe < 2:
        raise UnsupportedNFE(f"midpoint spends 2 evaluations per step (even NFE >= 2), got {nfe}")


@register("midpoint", defaults={"space": "t", "grid": "time_uniform", "t_end": T_END}, choices={"space": EULER_SPACES},
          check_nfe=_check_midpoint, in_default_sweep=False,
          description="explicit midpoint (RK2) on the PF-ODE, in t or space='rho' (x/alpha vs sigma/alpha); 2 NFE/step")
def midpoint(model, x, nfe, *, noise, space, grid, t_end):
    """Explicit midpoint rule (RK2; torchdiffeq's ``midpoint``) on y = x / scale with slope dy/ds = a y + b eps."""
    steps = nfe // 2
    ts, tm, scale, scale_m, a, b, a_m, b_m, h, half_h = on_state(
        x, *_midpoint_tables(model.schedule, steps, space, grid, t_end))
    y = x / scale[0]
    for i in range(steps):
        # Euler to the midpoint.
        d = lincomb((a[i], y), (b[i], model.eps(y * scale[i], ts[i])))
        y_mid = lincomb(y, (half_h[i], d))
        # Whole step with the midpoint's slope.
        d_mid = lincomb((a_m[i], y_mid), (b_m[i], model.eps(y_mid * scale_m[i], tm[i])))
        y = lincomb(y, (h[i], d_mid))
    return y * scale[-1]


@grid_tables
def _midpoint_tables(sch, steps, space, grid, t_end):
    """'t': y = x, s = t, dx/dt = f x + g^2 eps / (2 sigma), midpoint in t;
    'rho': y = x / alpha, s = rho = sigma / alpha, dy/drho = eps, midpoint in rho."""
    ts = time_grid(sch, grid, steps, t_end)
    if space == "t":
        tm = 0.5 * (ts[:-1] + ts[1:])
        scale, scale_m, h = torch.ones_like(ts), torch.ones_like(tm), ts[1:] - ts[:-1]
        (f, g2), (f_m, g2_m) = sch.drift_diffusion(ts), sch.drift_diffusion(tm)
        a, b, a_m, b_m = f[:-1], 0.5 * g2[:-1] / sch.sigma(ts[:-1]), f_m, 0.5 * g2_m / sch.sigma(tm)
    else:
        rho = sch.rho(ts)
        tm = sch.inverse_rho(0.5 * (rho[:-1] + rho[1:]))
        scale, scale_m, h = sch.alpha(ts), sch.alpha(tm), rho[1:] - rho[:-1]
        a, b = torch.zeros_like(tm), torch.ones_like(tm)
        a_m, b_m = a, b
    return ts, tm, scale, scale_m, a, b, a_m, b_m, h, 0.5 * h

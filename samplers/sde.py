"""k-diffusion's DPM-Solver++ SDE samplers (Lu et al. 2022b; Crowson, ``k_diffusion/sampling.py``): dpmpp_sde,
dpmpp_2m_sde (midpoint / heun) and dpmpp_3m_sde, with eta and s_noise; eta = 0 gives the ODE solvers.

In x_bar = x / alpha and lambda = -log rho (rho = sigma / alpha, k-diffusion's sigma), so every family runs them
unchanged. dpmpp_sde asks its noise for Brownian increments over overlapping intervals (rho -> rho_s and rho ->
rho_next); here the path W(rho) is drawn exactly on the points it is asked at, one standard normal per
sub-interval from the per-sample-index streams, so it is deterministic per sample index and needs no torchsde.
"""
from __future__ import annotations

import torch

from .ancestral import (KDIFF_DEFAULTS, ETA_RANGE, S_NOISE_RANGE, ancestral_step, check_per_step, finish, noisy,
                        points)
from .grids import time_grid
from .registry import Interval, register
from .state import grid_tables, lincomb, on_state

SDE_SOLVER_TYPES = ("midpoint", "heun")
ETA_SDE_RANGE = Interval(0.0, None)  # the multistep SDE samplers take any eta >= 0 (no rho_down to reach 0)


@grid_tables
def _sde_tables(sch, steps, eta, s_noise, r, grid, t_end, dtype):
    ts = time_grid(sch, grid, steps, t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    rho0, rho1 = rho[:-1], rho[1:]
    lam_h = torch.log(rho0 / rho1)               # h = lambda_next - lambda
    mid = rho0 * torch.exp(-r * lam_h)           # rho_s at lambda + r h
    t_mid, a_mid, s_mid, _ = points(sch, sch.inverse_rho(mid), dtype)
    fac = 1.0 / (2.0 * r)
    # Step 1: to rho_down of (rho, rho_s), then rho_up noise; x_bar_s = (d1 / rho) x_bar - expm1(log(d1 / rho)) D.
    d1, u1 = ancestral_step(rho0, mid, eta)
    # Step 2: to rho_down of (rho, rho_next) with D_d = (1 - fac) D + fac D(x_bar_s).
    d2, u2 = ancestral_step(rho0, rho1, eta)
    c2 = -torch.expm1(torch.log(d2 / rho0))
    # Brownian increments over [rho_s, rho] and [rho_next, rho_s]: z_a, z_b. The noise of step 1 is
    # (W(rho_s) - W(rho)) / sqrt(rho - rho_s) = z_a; of step 2 (W(rho_next) - W(rho)) / sqrt(rho - rho_next).
    w_a, w_b = ((rho0 - mid) / (rho0 - rho1)).sqrt(), ((mid - rho1) / (rho0 - rho1)).sqrt()
    draws = tuple(bool(u > 0) and s_noise > 0 for u in u2)
    return (draws, ts, a, s, t_mid, a_mid, s_mid, d1 / rho0, -torch.expm1(torch.log(d1 / rho0)), s_noise * u1,
            d2 / rho0, c2 * (1.0 - fac), c2 * fac, s_noise * u2 * w_a, s_noise * u2 * w_b)


@register("dpmpp_sde", defaults={**KDIFF_DEFAULTS, "r": 0.5},
          bounds={"eta": ETA_RANGE, "s_noise": S_NOISE_RANGE, "r": Interval(0.0, 1.0, "neither")},
          check_nfe=check_per_step(2), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_dpmpp_sde: stochastic DPM-Solver++ (2 stages, intermediate at lambda + r h) "
                      "on a Brownian path deterministic per sample index; 2 NFE per step")
def dpmpp_sde(model, x, nfe, *, noise, eta, s_noise, r, grid, t_end, denoise_to_zero):
    """k-diffusion ``sample_dpmpp_sde`` with an exact per-sample Brownian path in rho."""
    steps = (nfe - int(denoise_to_zero)) // 2
    draws, *tables = _sde_tables(model.schedule, steps, eta, s_noise, r, grid, t_end, x.dtype)
    ts, a, s, t_mid, a_mid, s_mid, p1, q1, n1, p2, q2a, q2b, n2a, n2b = on_state(x, *tables)
    xb = x / a[0]
    for i in range(steps):
        d0 = model.x0(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        # Step 1: to the intermediate point, plus the Brownian increment's noise there.
        x_mid = lincomb((p1[i], xb), (q1[i], d0))
        if draws[i]:
            z_a = noise.randn()
            x_mid.add_(z_a * n1[i])
        d_mid = model.x0(x_mid.mul_(a_mid[i]), t_mid[i], alpha_sigma=(a_mid[i], s_mid[i]))
        # Step 2: the whole step with D_d, plus the noise of the increment over the whole step.
        xb = lincomb((p2[i], xb), (q2a[i], d0), (q2b[i], d_mid))
        if draws[i]:
            xb = lincomb(xb, (n2a[i], z_a), (n2b[i], noise.randn()))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


@grid_tables
def _2m_tables(sch, steps, eta, s_noise, solver_type, grid, t_end, dtype):
    ts = time_grid(sch, grid, steps, t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    h = torch.log(rho[:-1] / rho[1:])
    eta_h = eta * h
    # x_bar = (rho_next / rho) e^{-eta h} x_bar + (1 - e^{-h - eta h}) D + c (D - D_prev) / r_i, r_i = h_prev / h.
    c_x = rho[1:] / rho[:-1] * torch.exp(-eta_h)
    c_d = -torch.expm1(-h - eta_h)
    if solver_type == "heun":
        c = c_d / (-h - eta_h) + 1.0
    else:
        c = 0.5 * c_d
    c_diff = torch.zeros_like(h)
    c_diff[1:] = c[1:] * h[1:] / h[:-1]
    c_z = rho[1:] * (-torch.expm1(-2.0 * eta_h)).sqrt() * s_noise
    return tuple(bool(v > 0) for v in c_z), ts, a, s, c_x, c_d + c_diff, -c_diff, c_z


@register("dpmpp_2m_sde", defaults={**KDIFF_DEFAULTS, "solver_type": "midpoint"},
          choices={"solver_type": SDE_SOLVER_TYPES}, bounds={"eta": ETA_SDE_RANGE, "s_noise": S_NOISE_RANGE},
          check_nfe=check_per_step(1), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_dpmpp_2m_sde: DPM-Solver++(2M) SDE, midpoint or heun correction")
def dpmpp_2m_sde(model, x, nfe, *, noise, eta, s_noise, solver_type, grid, t_end, denoise_to_zero):
    """k-diffusion ``sample_dpmpp_2m_sde``; eta = 0 with solver_type='midpoint' is DPM-Solver++(2M)."""
    steps = nfe - int(denoise_to_zero)
    draws, *tables = _2m_tables(model.schedule, steps, eta, s_noise, solver_type, grid, t_end, x.dtype)
    ts, a, s, c_x, c_d, c_old, c_z = on_state(x, *tables)
    xb, old = x / a[0], None
    for i in range(steps):
        d0 = model.x0(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        xb = lincomb((c_x[i], xb), (c_d[i], d0), *(() if old is None else ((c_old[i], old),)))
        if draws[i]:
            xb.add_(noise.randn().mul_(c_z[i]))
        old = d0
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


@grid_tables
def _3m_tables(sch, steps, eta, s_noise, grid, t_end, dtype):
    ts = time_grid(sch, grid, steps, t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    h = torch.log(rho[:-1] / rho[1:])
    h_eta = h * (eta + 1.0)
    phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
    phi_3 = phi_2 / h_eta - 0.5
    w = torch.zeros(steps, 3, dtype=torch.float64)  # weights of D, D_1, D_2 (this and the two previous values)
    w[:, 0] = -torch.expm1(-h_eta)
    if steps > 1:
        # One previous value: phi_2 (D - D_1) / r, r = h_1 / h.
        k = phi_2[1] * h[1] / h[0]
        w[1, 0] += k
        w[1, 1] -= k
    for i in range(2, steps):
        # phi_2 d1 - phi_3 d2 = A d1_0 + B d1_1 with d1_0 = (D - D_1) / r0, d1_1 = (D_1 - D_2) / r1 (k-diffusion's
        # d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1), d2 = (d1_0 - d1_1) / (r0 + r1)).
        r0, r1 = h[i - 1] / h[i], h[i - 2] / h[i]
        A = phi_2[i] * (1.0 + r0 / (r0 + r1)) - phi_3[i] / (r0 + r1)
        B = -phi_2[i] * r0 / (r0 + r1) + phi_3[i] / (r0 + r1)
        w[i] += torch.stack([A / r0, -A / r0 + B / r1, -B / r1])
    c_z = rho[1:] * (-torch.expm1(-2.0 * h * eta)).sqrt() * s_noise
    return tuple(bool(v > 0) for v in c_z), ts, a, s, torch.exp(-h_eta), w, c_z


@register("dpmpp_3m_sde", defaults=KDIFF_DEFAULTS, bounds={"eta": ETA_SDE_RANGE, "s_noise": S_NOISE_RANGE},
          check_nfe=check_per_step(1), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_dpmpp_3m_sde: DPM-Solver++(3M) SDE")
def dpmpp_3m_sde(model, x, nfe, *, noise, eta, s_noise, grid, t_end, denoise_to_zero):
    """k-diffusion ``sample_dpmpp_3m_sde``; eta = 0 is DPM-Solver++(3M) with its warm-up (orders 1, 2, 3, ...)."""
    steps = nfe - int(denoise_to_zero)
    draws, *tables = _3m_tables(model.schedule, steps, eta, s_noise, grid, t_end, x.dtype)
    ts, a, s, c_x, w, c_z = on_state(x, *tables)
    xb, hist = x / a[0], []
    for i in range(steps):
        hist = [model.x0(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))] + hist[:2]  # newest first
        xb = lincomb((c_x[i], xb), *((w[i, j], d) for j, d in enumerate(hist)))
        if draws[i]:
            xb.add_(noise.randn().mul_(c_z[i]))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)

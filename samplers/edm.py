"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm ``generate.py`` ``edm_sampler``).

Each step first raises the noise level rho -> rho_hat = (1 + gamma) rho by adding sqrt(rho_hat^2 - rho^2) S_noise z
("churn", gamma = min(S_churn / N, sqrt 2 - 1) where S_tmin <= rho <= S_tmax), then takes a Heun step to the next
grid point. In x_bar = x / alpha and rho = sigma / alpha (EDM's x and sigma), so every family runs it unchanged; z
comes from the per-sample-index streams. ``denoise_to_zero`` is EDM's own ending (its last step, to sigma = 0, is
Euler: after the churn at the last point it returns x0(x_hat, t_hat)).
"""
from __future__ import annotations

import math

import torch

from .ancestral import S_NOISE_RANGE, afs_factor, check_per_step, finish, grid_steps, points
from .grids import T_END, time_grid
from .registry import Interval, Unsupported, register
from .state import grid_tables, lincomb, on_state

MAX_GAMMA = math.sqrt(2.0) - 1.0
NONNEG = Interval(0.0, None)


def _check_edm(nfe, *, denoise_to_zero, afs, **_):
    # Heun steps (2 NFE) to t_end, plus one for EDM's final Euler step to sigma = 0, less one with AFS.
    check_per_step(2)(nfe, denoise_to_zero=denoise_to_zero, afs=afs)


@grid_tables
def _edm_tables(sch, steps, S_churn, S_tmin, S_tmax, S_noise, denoise_to_zero, grid, t_end, dtype):
    ts, a, s, rho = points(sch, time_grid(sch, grid, steps, t_end), dtype)
    n = steps + int(denoise_to_zero)  # EDM's num_steps: every step to the next point, the one to sigma = 0 included
    gamma = torch.where((rho >= S_tmin) & (rho <= S_tmax), torch.full_like(rho, min(S_churn / n, MAX_GAMMA)),
                        torch.zeros_like(rho))
    rho_hat = rho * (1.0 + gamma)
    if float(rho_hat.max()) > float(rho[0]):
        raise Unsupported(f"edm_stochastic: churn at rho = {float(rho[0]):.4g} (S_tmax={S_tmax} >= rho(T)) would "
                          f"need a noise level above the schedule's T; lower S_tmax below {float(rho[0]):.4g}")
    t_hat = torch.where(gamma > 0, sch.inverse_rho(rho_hat), ts)
    t_hat, a_hat, s_hat, _ = points(sch, t_hat, dtype)
    c_churn = (rho_hat**2 - rho**2).sqrt() * S_noise
    h = rho[1:] - rho_hat[:-1]
    return (tuple(bool(c > 0) for c in c_churn), ts, a, s, t_hat, a_hat, s_hat, c_churn, h, 0.5 * h,
            afs_factor(rho_hat[0]))


@register("edm_stochastic",
          defaults={"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003, "grid": "karras", "t_end": T_END,
                    "denoise_to_zero": False, "afs": False},
          bounds={"S_churn": NONNEG, "S_tmin": NONNEG, "S_tmax": NONNEG, "S_noise": S_NOISE_RANGE},
          validate=lambda S_tmin, S_tmax, **_: _check_range(S_tmin, S_tmax), check_nfe=_check_edm,
          requires=lambda model, nfe, **o: _check_churn(model, nfe, **o),
          stochastic=lambda S_churn, S_noise, S_tmax, **_: S_churn > 0 and S_noise > 0 and S_tmax > 0,
          in_default_sweep=False,
          description="EDM stochastic sampler (Karras et al. 2022 Alg. 2): churn rho -> (1 + gamma) rho, then Heun; "
                      "defaults: the published ImageNet setting (S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003)")
def edm_stochastic(model, x, nfe, *, noise, S_churn, S_tmin, S_tmax, S_noise, grid, t_end, denoise_to_zero, afs):
    """EDM Algorithm 2 in (x / alpha, sigma / alpha); 2 NFE per Heun step (+1 with denoise_to_zero, -1 with afs)."""
    steps = grid_steps(nfe, 2, denoise_to_zero, afs)
    draws, *tables = _edm_tables(model.schedule, steps, S_churn, S_tmin, S_tmax, S_noise, denoise_to_zero, grid,
                                 t_end, x.dtype)
    ts, a, s, t_hat, a_hat, s_hat, c_churn, h, half_h, c_afs = on_state(x, *tables)
    xb = x / a[0]
    for i in range(steps + int(denoise_to_zero)):
        # Increase noise temporarily.
        if draws[i]:
            xb = lincomb(xb, (c_churn[i], noise.randn()))
        if i == steps:
            # EDM's last step, Euler to sigma = 0: x0 at the churned point.
            return model.x0(xb.mul_(a_hat[i]), t_hat[i], alpha_sigma=(a_hat[i], s_hat[i]))
        # Euler step (AFS: eps = x_bar / sqrt(1 + rho_hat^2) at the first point, diff-sampler's heun_sampler).
        d = xb * c_afs if afs and i == 0 else model.eps(xb * a_hat[i], t_hat[i], alpha_sigma=(a_hat[i], s_hat[i]))
        x_next = lincomb(xb, (h[i], d)).mul_(a[i + 1])
        # Apply 2nd order correction.
        d_next = model.eps(x_next, ts[i + 1], alpha_sigma=(a[i + 1], s[i + 1]))
        xb = torch.add(d, d_next).mul_(half_h[i]).add_(xb)
    return finish(model, xb, ts[-1], a[-1], s[-1], False)


def _check_churn(model, nfe, *, S_churn, S_tmin, S_tmax, S_noise, grid, t_end, denoise_to_zero, afs):
    """Unsupported where a churn would need a noise level above the schedule's T (before any model call)."""
    steps = grid_steps(nfe, 2, denoise_to_zero, afs)
    _edm_tables(model.schedule, steps, S_churn, S_tmin, S_tmax, S_noise, denoise_to_zero, grid, t_end, torch.float64)


def _check_range(S_tmin, S_tmax):
    if S_tmin > S_tmax:
        raise ValueError(f"edm_stochastic: S_tmin={S_tmin} > S_tmax={S_tmax}; allowed: S_tmin <= S_tmax")

"""DDIM (Song et al. 2021, eq. 12) and DDPM ancestral sampling (Ho et al. 2020) as its eta = 1 case."""
from __future__ import annotations

import torch

from .grids import T_END, time_grid
from .registry import Interval, register, register_preset
from .state import grid_tables, lincomb, on_state

# eta > 1 is not a DDIM: sigma_eta would exceed sigma_t on the first step (alpha_T ~ 0), a negative variance.
ETA_RANGE = Interval(0.0, 1.0)


@register("ddim", defaults={"eta": 0.0, "grid": "time_uniform", "t_end": T_END}, bounds={"eta": ETA_RANGE},
          stochastic=lambda eta, **_: eta > 0,
          description="DDIM (Song et al. 2021); eta = 0 deterministic, eta = 1 is DDPM ancestral")
def ddim(model, x, nfe, *, noise, eta, grid, t_end):
    """DDIM, Song et al. 2021 eq. (12); one model call per step, steps = NFE."""
    ts, c_x, c_eps, s_eta = on_state(x, *_tables(model.schedule, nfe, eta, grid, t_end))
    for i in range(nfe):
        x = lincomb((c_x[i], x), (c_eps[i], model.eps(x, ts[i])))
        if eta > 0:
            x.add_(s_eta[i] * noise.randn())
    return x


@grid_tables
def _tables(sch, nfe, eta, grid, t_end):
    ts = time_grid(sch, grid, nfe, t_end)
    alpha, sigma, lam = sch.alpha(ts), sch.sigma(ts), sch.lambda_(ts)
    a_s, s_s, a_t, s_t = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    # sigma_eta = eta * sigma_t * sqrt(1 - e^{2 (lambda_s - lambda_t)}), the posterior std of q(x_t | x_s, x0) (any
    # family; on VP it is eq. (16)'s sqrt((sigma_t^2 / sigma_s^2) (1 - alpha_s^2 / alpha_t^2))).
    s_eta = eta * s_t * (-torch.expm1(2.0 * (lam[:-1] - lam[1:]))).clamp(min=0).sqrt()
    # x_t = alpha_t x0 + sqrt(sigma_t^2 - sigma_eta^2) eps with x0 = (x - sigma_s eps) / alpha_s, in one pass.
    c_x, c_eps = a_t / a_s, (s_t**2 - s_eta**2).sqrt() - a_t * s_s / a_s
    return ts, c_x, c_eps, s_eta


register_preset("ddpm", "ddim", eta=1.0,
                description="DDPM ancestral sampling (Ho et al. 2020) = DDIM with eta = 1")

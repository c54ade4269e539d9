"""k-diffusion's linear multistep sampler ``sample_lms`` (variable-step Adams-Bashforth in rho = sigma / alpha).

The weight of a past slope d_{i-j} is the integral over [rho_i, rho_{i+1}] of its Lagrange basis polynomial on the
last k nodes; k-diffusion integrates it with ``scipy.integrate.quad``, here Gauss-Legendre with 4 nodes integrates
these degree <= 3 polynomials exactly. Written in x_bar = x / alpha and rho, so every family runs it unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from .ancestral import finish, points
from .grids import T_END, time_grid
from .registry import UnsupportedNFE, register
from .state import grid_tables, lincomb, on_state

_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)  # exact for degree <= 7


def adams_weights(nodes, a: float, b: float) -> list[float]:
    """Integral over [a, b] of each Lagrange basis polynomial on ``nodes`` (newest first): variable-step AB."""
    taus = a + (b - a) * (1.0 + _GL_X) / 2.0
    out = []
    for j, nj in enumerate(nodes):
        basis = np.ones_like(taus)
        for k, nk in enumerate(nodes):
            if k != j:
                basis *= (taus - nk) / (nj - nk)
        out.append(float((b - a) / 2.0 * (_GL_W * basis).sum()))
    return out


def adams_loop(model, x, tables, orders, afs, denoise_to_zero):
    """x_bar_{i+1} = x_bar_i + sum_j w_ij d_{i-j} with d = eps (d x_bar / d rho); AFS: d_0 = x_bar / sqrt(1 + rho^2).

    ``tables`` on the state: ts, alpha, sigma of the evaluation points (plus the end point), the weights (steps,
    max order) and the AFS factor 1 / sqrt(1 + rho_0^2); the result is alpha x_bar at the end, or x0 there with
    ``denoise_to_zero``, or x_bar itself where the last point is rho = 0 (alpha[-1] = 1).
    """
    ts, a, s, w, afs_c = tables
    xb, ds = x / a[0], []
    for i, k in enumerate(orders):
        if afs and i == 0:
            d = xb * afs_c  # analytic first step: no model call
        else:
            d = model.eps(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        ds = ([d] + ds)[:w.shape[1]]  # newest first
        xb = lincomb(xb, *((w[i, j], ds[j]) for j in range(k)))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


@grid_tables
def _lms_tables(sch, nfe, order, to_zero, grid, t_end, dtype):
    ts = time_grid(sch, grid, nfe - int(to_zero), t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    if to_zero:
        # k-diffusion's trailing sigma = 0: the last step integrates the polynomial to rho = 0, where x = x_bar.
        rho = torch.cat([rho, rho.new_zeros(1)])
        a, s = torch.cat([a, a.new_ones(1)]), torch.cat([s, s.new_zeros(1)])
        ts = torch.cat([ts, ts.new_zeros(1)])
    r = rho.tolist()
    orders = tuple(min(i + 1, order) for i in range(nfe))
    w = torch.zeros(nfe, order, dtype=torch.float64)
    for i, k in enumerate(orders):
        w[i, :k] = torch.tensor(adams_weights(r[i::-1][:k], r[i], r[i + 1]), dtype=torch.float64)
    return orders, ts, a, s, w, torch.ones((), dtype=torch.float64)


def _check_lms(nfe, *, to_zero, **_):
    if nfe < 1 + int(to_zero):
        raise UnsupportedNFE(f"lms{' with to_zero' if to_zero else ''} needs NFE >= {1 + int(to_zero)}, got {nfe}")


@register("lms", defaults={"order": 4, "grid": "karras", "t_end": T_END, "to_zero": False},
          choices={"order": (1, 2, 3, 4)}, check_nfe=_check_lms, in_default_sweep=False,
          description="k-diffusion sample_lms: linear multistep (variable-step Adams-Bashforth) in rho, orders "
                      "min(i + 1, order); to_zero: its last step goes to rho = 0 as k-diffusion's trailing zero")
def lms(model, x, nfe, *, noise, order, grid, t_end, to_zero):
    """k-diffusion ``sample_lms``; one model call per step, steps = NFE."""
    orders, *tables = _lms_tables(model.schedule, nfe, order, to_zero, grid, t_end, x.dtype)
    return adams_loop(model, x, on_state(x, *tables), orders, False, False)

"""DEIS rhoRK (Zhang & Chen 2022; qsh-zh/deis ``th_deis/sampler.py`` ``get_sampler_rho_rk``, tableaus from
``th_deis/rk.py``): explicit Runge-Kutta on d x_bar / d rho = eps, x_bar = x / alpha, rho = sigma / alpha.

Stage times are rho + c_j h (h = rho_next - rho < 0) mapped back to t by the schedule; NFE = stages x steps. Written
in x_bar and rho only, so every family runs it unchanged.
"""
from __future__ import annotations

import torch

from .ancestral import points
from .grids import T_END, time_grid
from .registry import UnsupportedNFE, register
from .state import grid_tables, lincomb, on_state

# name: (c, A (lower triangular, row j = the weights of k_0..k_{j-1} in stage j), b), as th_deis/rk.py writes them.
TABLEAUS = {
    "1euler": ((0.0,), ((),), (1.0,)),
    "2heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "3kutta": ((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 4 / 6, 1 / 6)),
    "3ral": ((0.0, 1 / 2, 3 / 4), ((), (1 / 2,), (0.0, 3 / 4)), (2 / 9, 1 / 3, 4 / 9)),
    "3heun": ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (1 / 4, 0.0, 3 / 4)),
    "3vdh": ((0.0, 8 / 15, 2 / 3), ((), (8 / 15,), (1 / 4, 5 / 12)), (1 / 4, 0.0, 3 / 4)),
    "3ssprk": ((0.0, 1.0, 0.5), ((), (1.0,), (0.25, 0.25)), (1 / 6, 1 / 6, 2 / 3)),
    "4rk": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _stages(rk_method: str) -> int:
    return len(TABLEAUS[rk_method][0])


def _check_rk(nfe, *, rk_method, **_):
    s = _stages(rk_method)
    if nfe < s or nfe % s:
        raise UnsupportedNFE(f"deis_rhork {rk_method} spends {s} evaluations per step: NFE must be a positive "
                             f"multiple of {s}, got {nfe}")


@grid_tables
def _rk_tables(sch, steps, rk_method, grid, t_end, dtype):
    c, A, b = TABLEAUS[rk_method]
    s = len(c)
    ts = time_grid(sch, grid, steps, t_end)
    rho = sch.rho(ts)
    h = rho[1:] - rho[:-1]
    # Stage times: c = 0 and c = 1 are the grid points themselves (no round trip through inverse_rho).
    cols = []
    for cj in c:
        cols.append(ts[:-1] if cj == 0 else ts[1:] if cj == 1 else sch.inverse_rho(rho[:-1] + cj * h))
    t_st, a_st, s_st, _ = points(sch, torch.stack(cols, dim=1).reshape(-1), dtype)
    a_mat = torch.zeros(s, s, dtype=torch.float64)
    for j, row in enumerate(A):
        a_mat[j, :len(row)] = torch.tensor(row, dtype=torch.float64) if row else 0.0
    hA = h[:, None, None] * a_mat[None]                          # (steps, s, s)
    hb = h[:, None] * torch.tensor(b, dtype=torch.float64)[None]  # (steps, s)
    _, a_end, s_end, _ = points(sch, ts[-1:], dtype)
    # Which weights are nonzero (host): a zero weight is skipped as the reference's 0 * k is.
    uses = tuple(tuple(j for j in range(len(row)) if row[j] != 0) for row in A)
    return (uses, tuple(j for j in range(s) if b[j] != 0), t_st.view(steps, s), a_st.view(steps, s),
            s_st.view(steps, s), hA, hb, torch.cat([ts[:1], ts[-1:]]), torch.cat([a_st[:1], a_end]))


@register("deis_rhork", defaults={"rk_method": "3kutta", "grid": "time_quadratic", "t_end": T_END},
          choices={"rk_method": tuple(TABLEAUS)}, check_nfe=_check_rk, in_default_sweep=False,
          description="DEIS rhoRK (Zhang & Chen 2022): explicit Runge-Kutta (th_deis rk.py tableaus) on "
                      "d(x/alpha)/d rho = eps; stages x steps NFE")
def deis_rhork(model, x, nfe, *, noise, rk_method, grid, t_end):
    """th_deis ``get_sampler_rho_rk``: one RK step per grid interval in rho."""
    steps = nfe // _stages(rk_method)
    uses, b_uses, *tables = _rk_tables(model.schedule, steps, rk_method, grid, t_end, x.dtype)
    t_st, a_st, s_st, hA, hb, t_ends, a_ends = on_state(x, *tables)
    xb = x / a_ends[0]
    for i in range(steps):
        ks = []
        for j, use in enumerate(uses):
            x_in = xb if j == 0 else lincomb(xb, *((hA[i, j, l], ks[l]) for l in use))
            ks.append(model.eps(x_in * a_st[i, j], t_st[i, j], alpha_sigma=(a_st[i, j], s_st[i, j])))
        xb = lincomb(xb, *((hb[i, l], ks[l]) for l in b_uses))
    return xb.mul_(a_ends[1])

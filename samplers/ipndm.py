"""iPNDM (Zhang & Chen 2023, DEIS paper; zju-pi/diff-sampler ``ipndm_sampler``) and its variable-step form
(``ipndm_v_sampler``): Adams-Bashforth in x_bar = x / alpha against rho = sigma / alpha, warm-up orders min(i + 1, k).

iPNDM uses the fixed uniform-step AB coefficients whatever the steps; ``ipndm_v`` the variable-step ones: "textbook"
integrates the Lagrange basis over each step (the same weights as k-diffusion's lms), "official" is diff-sampler's
closed form, whose orders 3 and 4 differ from the textbook weights (a misplaced parenthesis at order 3, a wrong
constant at order 4: see the notes). ``afs`` (diff-sampler's analytic first step) replaces the first model call by
d = x_bar / sqrt(1 + rho^2) and saves one NFE; ``denoise_to_zero`` spends one more on x0(x, t_end).
"""
from __future__ import annotations

import torch

from .ancestral import points
from .grids import T_END, time_grid
from .lms import adams_loop, adams_weights
from .registry import UnsupportedNFE, register
from .state import grid_tables, on_state

AB_COEFFS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
IPNDM_V_VARIANTS = ("textbook", "official")


def _official_v(h, i, k):
    """diff-sampler ``ipndm_v_sampler``'s coefficients (of d_i, d_{i-1}, ...) at step i with order k, as written."""
    h_n = h[i]
    if k == 1:
        return [1.0]
    h_n_1 = h[i - 1]
    if k == 2:
        return [(2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2]
    h_n_2 = h[i - 2]
    temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if k == 3:
        return [(2 + h_n / h_n_1) / 2 + temp, -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp, temp * h_n_1 / h_n_2]
    h_n_3 = h[i - 3]
    temp2 = (((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2)))
             * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
    q = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    return [(2 + h_n / h_n_1) / 2 + temp + temp2,
            -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp - (1 + h_n_1 / h_n_2 + q) * temp2,
            temp * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + q * (1 + h_n_2 / h_n_3)) * temp2,
            -temp2 * q * h_n_1 / h_n_2]


@grid_tables
def _ipndm_tables(sch, steps, max_order, variant, grid, t_end, dtype):
    ts, a, s, rho = points(sch, time_grid(sch, grid, steps, t_end), dtype)
    r = rho.tolist()
    h = [r[i + 1] - r[i] for i in range(steps)]
    orders = tuple(min(i + 1, max_order) for i in range(steps))
    w = torch.zeros(steps, max_order, dtype=torch.float64)
    for i, k in enumerate(orders):
        if variant == "fixed":
            c = [h[i] * v for v in AB_COEFFS[k]]
        elif variant == "official":
            c = [h[i] * v for v in _official_v(h, i, k)]
        else:
            c = adams_weights(r[i::-1][:k], r[i], r[i + 1])
        w[i, :k] = torch.tensor(c, dtype=torch.float64)
    return orders, ts, a, s, w, 1.0 / torch.sqrt(1.0 + rho[0] ** 2)


def _check_ipndm(nfe, *, afs, denoise_to_zero, **_):
    if nfe - int(denoise_to_zero) + int(afs) < 1 or nfe < 1:
        raise UnsupportedNFE(f"needs at least one step: NFE >= {1 + int(denoise_to_zero) - int(afs)} with "
                             f"afs={afs}, denoise_to_zero={denoise_to_zero}, got {nfe}")


def _run(model, x, nfe, variant, max_order, afs, denoise_to_zero, grid, t_end):
    # diff-sampler's accounting: NFE = steps - afs + denoise_to_zero.
    steps = nfe - int(denoise_to_zero) + int(afs)
    orders, *tables = _ipndm_tables(model.schedule, steps, max_order, variant, grid, t_end, x.dtype)
    return adams_loop(model, x, on_state(x, *tables), orders, afs, denoise_to_zero)


_DEFAULTS = {"max_order": 4, "afs": False, "denoise_to_zero": False, "grid": "karras", "t_end": T_END}


@register("ipndm", defaults=_DEFAULTS, choices={"max_order": (1, 2, 3, 4)}, check_nfe=_check_ipndm,
          in_default_sweep=False,
          description="iPNDM (diff-sampler ipndm_sampler): fixed-coefficient Adams-Bashforth in (x/alpha, rho), "
                      "orders min(i + 1, max_order); afs, denoise_to_zero")
def ipndm(model, x, nfe, *, noise, max_order, afs, denoise_to_zero, grid, t_end):
    """diff-sampler ``ipndm_sampler``: AB coefficients [1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24."""
    return _run(model, x, nfe, "fixed", max_order, afs, denoise_to_zero, grid, t_end)


@register("ipndm_v", defaults={**_DEFAULTS, "variant": "textbook"},
          choices={"max_order": (1, 2, 3, 4), "variant": IPNDM_V_VARIANTS}, check_nfe=_check_ipndm,
          in_default_sweep=False,
          description="variable-step iPNDM: Adams-Bashforth weights of the actual steps in rho ('textbook'), or "
                      "diff-sampler ipndm_v_sampler's closed form ('official', wrong at orders 3-4)")
def ipndm_v(model, x, nfe, *, noise, max_order, afs, denoise_to_zero, variant, grid, t_end):
    """Variable-step AB in rho (diff-sampler ``ipndm_v_sampler``; 'textbook' = k-diffusion lms weights)."""
    return _run(model, x, nfe, variant, max_order, afs, denoise_to_zero, grid, t_end)

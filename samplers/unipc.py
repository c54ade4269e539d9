"""UniPC (Zhao et al. 2023): multistep unified predictor (UniP) and corrector (UniC) with B(h) = h or e^h - 1."""
from __future__ import annotations

import torch

from .grids import T_END, time_grid
from .model import alpha_sigma
from .registry import UnsupportedNFE, register, register_preset
from .state import grid_tables, lincomb, on_state

UNIPC_VARIANTS = ("bh1", "bh2", "vary_coeff")
UNIPC_ORDERS = (1, 2, 3)
UNIPC_PREDICTIONS = ("x0", "eps")


def _check_nfe(nfe, *, order, **_):
    if nfe < order:
        raise UnsupportedNFE(f"unipc of order {order} needs NFE >= order (its warm-up steps), got {nfe}")


def _rhos(rks, hh, variant: str, p: int):
    """UniP / UniC coefficients (Zhao et al. 2023): R rho = b, R_ik = r_k^(i-1), b_i = i! h phi_{i+1}(hh) / B(h)."""
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k, fact, b = torch.expm1(hh) / hh - 1.0, 1.0, []
    for i in range(1, p + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    rks, b = torch.stack([torch.as_tensor(r, dtype=torch.float64) for r in rks]), torch.stack(b)
    R = torch.stack([rks**i for i in range(p)])
    # The reference's simplified choices: rho_p = 1/2 at order 2, rho_c = 1/2 at order 1.
    half = torch.full((1,), 0.5, dtype=torch.float64)
    rhos_p = b[:0] if p == 1 else half if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
    rhos_c = half if p == 1 else torch.linalg.solve(R, b)
    return b_h, rhos_p, rhos_c


def _vary_coeff(rks, hh, p):
    """The reference's ``multistep_uni_pc_vary_update`` as weights of D1_k = (m_{-k} - m0) / r_k and D1_t = m_t - m0.

    C_ik = r_i^(k-1) / k!, A = C^-1 (predictor: without the last row and column), h_phi_k as the reference builds
    them; returns the predictor's weights of D1_1..D1_{p-1} and the corrector's of D1_1..D1_{p-1}, D1_t, each to be
    multiplied by -scale. As written there, the corrector sums rows 0..p-2 of A for the D1_k and takes D1_t's weight
    from row p-2 (row 0 at p = 1) times h_phi_p: not the full C^-1 sum (kept for parity).
    """
    rks = torch.stack([torch.as_tensor(r, dtype=torch.float64) for r in rks])
    cols, col = [], torch.ones_like(rks)
    for k in range(1, p + 1):
        cols.append(col)
        col = col * rks / (k + 1)
    C = torch.stack(cols, dim=1)
    h_phi, fact, k_phi = [], 1, torch.expm1(hh)
    for k in range(1, p + 2):
        h_phi.append(k_phi)
        k_phi = k_phi / hh - 1 / fact
        fact *= k + 1
    a_p = torch.linalg.inv(C[:-1, :-1]) if p > 1 else None
    a_c = torch.linalg.inv(C)
    pred = [sum(h_phi[k + 1] * a_p[k][j] for k in range(p - 1)) for j in range(p - 1)]
    corr = [sum(h_phi[k + 1] * a_c[k][j] for k in range(p - 1)) for j in range(p - 1)]
    corr.append(h_phi[p] * a_c[max(p - 2, 0)][-1])
    return pred, corr


@register("unipc", defaults={"variant": "bh1", "order": 3, "predict": "x0", "corrector": True,
                             "lower_order_final": True, "grid": "logSNR", "t_end": T_END},
          choices={"variant": UNIPC_VARIANTS, "order": UNIPC_ORDERS, "predict": UNIPC_PREDICTIONS},
          check_nfe=_check_nfe, in_default_sweep=False,
          description="UniPC (Zhao et al. 2023): multistep UniP + UniC; the corrector reuses the next evaluation")
def unipc(model, x, nfe, *, noise, variant, order, predict, corrector, lower_order_final, grid, t_end):
    """Multistep UniPC-p with B(h) (Zhao et al. 2023); order i at warm-up step i; NFE = steps."""
    orders, *tables = _tables(model.schedule, nfe, variant, order, predict, lower_order_final, grid, t_end, x.dtype)
    ts, ratio, wp, wc, a, s = on_state(x, *tables)
    evaluate = model.x0 if predict == "x0" else model.eps
    ms = [evaluate(x, ts[0], (a[0], s[0]))]  # model outputs at the last `order` grid points, newest last
    for i, p in enumerate(orders, start=1):
        m0, past = ms[-1], ms[-2::-1][:p - 1]  # past: m_{-k} at lambda_{i-1-k}, k = 1, ..
        # UniP: x_t = ratio x_s + (w_0 m0 + sum_k w_k m_{-k}).
        terms = [(wp[i - 1, k], mk) for k, mk in enumerate(past, start=1)]
        x_s, x = x, lincomb((ratio[i - 1], x), lincomb((wp[i - 1, 0], m0), *terms))
        if i == nfe:
            break  # the last point is never evaluated, so it gets no corrector
        m_t = evaluate(x, ts[i], (a[i], s[i]))
        if corrector:
            # UniC: x_t = ratio x_s + (w_0 m0 + w_p m_t + sum_k w_k m_{-k}).
            terms = [(wc[i - 1, k], mk) for k, mk in enumerate(past, start=1)]
            x = lincomb((ratio[i - 1], x_s), lincomb((wc[i - 1, 0], m0), (wc[i - 1, p], m_t), *terms))
        ms = (ms + [m_t])[-order:]
    return x


@grid_tables
def _tables(sch, nfe, variant, order, predict, lower_order_final, grid, t_end, dtype):
    """(orders, ts, ratio, wp, wc, alpha, sigma): every step's weights (float64, on the host), row i - 1 for step i.

    x_t = ratio x_s + w_0 m0 + sum_k w_k m_{-k} (+ w_p m_t for the corrector), columns k = 1 .. p - 1 the past
    values; alpha, sigma at ts for the model boundary (a ``dtype`` state).
    """
    ts = time_grid(sch, grid, nfe, t_end)
    lam, alpha, sigma = sch.lambda_(ts), sch.alpha(ts), sch.sigma(ts)
    orders, ratio = [], torch.zeros(nfe, dtype=torch.float64)
    wp, wc = torch.zeros(nfe, order, dtype=torch.float64), torch.zeros(nfe, order + 1, dtype=torch.float64)
    for i in range(1, nfe + 1):
        p = i if i < order else (min(order, nfe + 1 - i) if lower_order_final else order)
        orders.append(p)
        h = lam[i] - lam[i - 1]
        rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, p)] + [1.0]  # m_{-k} sits at lambda_{i-1-k}
        hh = -h if predict == "x0" else h
        # First-order exponential-integrator step (DDIM): x0 form sigma_t/sigma_s x - alpha_t (e^{-h} - 1) x0_s,
        # eps form alpha_t/alpha_s x - sigma_t (e^h - 1) eps_s.
        if predict == "x0":
            ratio[i - 1], scale = sigma[i] / sigma[i - 1], alpha[i]
        else:
            ratio[i - 1], scale = alpha[i] / alpha[i - 1], sigma[i]
        w_base = -scale * torch.expm1(hh)  # x_base = ratio x + w_base m0
        if variant == "vary_coeff":
            # x_t = x_base - scale sum_k c_k D1_k (- scale c_t D1_t for the corrector), D1_k = (m_{-k} - m0) / r_k.
            c_p, c_c = _vary_coeff(rks, hh, p)
            rhos_p, rhos_c, b_h = c_p, c_c, 1.0
        else:
            b_h, rhos_p, rhos_c = _rhos(rks, hh, variant, p)
        # UniP-p: x_t = x_base - scale B(h) sum_k rho_k D1_k, D1_k = (m_{-k} - m0) / r_k: weights of m_{-k} and m0.
        w = [-scale * b_h * rho / r for rho, r in zip(rhos_p, rks)]
        wp[i - 1, :p] = torch.stack([w_base - sum(w)] + w)
        # UniC-p: the same sum plus rho_p (m_t - m0), with m_t from the predicted point (no extra NFE).
        w, w_t = [-scale * b_h * rho / r for rho, r in zip(rhos_c[:-1], rks)], -scale * b_h * rhos_c[-1]
        wc[i - 1, :p + 1] = torch.stack([w_base - sum(w) - w_t] + w + [w_t])
    return (tuple(orders), ts, ratio, wp, wc, *alpha_sigma(sch, ts, dtype))

register_preset("unipc_bh1_3", "unipc", variant="bh1", order=3, description="UniPC-3 with B(h) = h (Zhao et al. 2023)")
register_preset("unipc_bh2_3", "unipc", variant="bh2", order=3, in_default_sweep=False,
                description="UniPC-3 with B(h) = e^h - 1 (Zhao et al. 2023)")
register_preset("unipc_vary_coeff", "unipc", variant="vary_coeff", in_default_sweep=False,
                description="UniPC with varying coefficients (uni_pc.py variant='vary_coeff': A = C^-1 of the steps)")
register_preset("unipc_bh2_2", "unipc", variant="bh2", order=2,
                description="UniPC-2 with B(h) = e^h - 1 (Zhao et al. 2023; UniP = DPM-Solver++(2M))")

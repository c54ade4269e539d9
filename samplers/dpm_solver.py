"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators in lambda = log(alpha/sigma).

Both integrate the PF-ODE exactly in its linear part and Taylor-expand the model output in lambda.
With z = h (noise prediction m = eps) or z = -h (data prediction m = x0, "++"), h = lambda_t - lambda_s,
every update is x_t = R x_s - C [phi_1(z) m_s + phi_2(z) D1 + phi_3(z) D2] where
R = alpha_t / alpha_s, C = sigma_t (noise) or R = sigma_t / sigma_s, C = alpha_t (data), and
phi_1 = e^z - 1, phi_2 = phi_1 / z - 1, phi_3 = phi_2 / z - 1/2; D1, D2 are h and h^2 times the first
and second lambda-derivatives of m, estimated from intermediate (singlestep) or past (multistep) values.
Conventions (orders per step, grids, NFE) follow the reference ``dpm_solver_pytorch.py``.
"""
from __future__ import annotations

from functools import partial

import torch

from .grids import T_END, T_MAX, end_time, time_grid
from .model import alpha_sigma
from .registry import Interval, UnsupportedNFE, register, register_preset
from .state import grid_tables, lincomb, on_state

METHODS = ("singlestep", "singlestep_fixed", "multistep")
SOLVER_TYPES = ("dpmsolver", "taylor")
THRESHOLDING = ("none", "dynamic", "clip")
LOWER_ORDER_FINAL_MAX_STEPS = 10  # reference code: lower final orders only when steps < 10 (its docstring says 15)
POSITIVE = Interval(0.0, None, "neither")


def _coefs(sch, data, s, t):
    """(R, C, h, (phi_1, phi_2, phi_3)) of the exponential-integrator step s -> t."""
    h = sch.lambda_(t) - sch.lambda_(s)
    if data:
        r, c, z = sch.sigma(t) / sch.sigma(s), sch.alpha(t), -h
    else:
        r, c, z = torch.exp(sch.log_alpha(t) - sch.log_alpha(s)), sch.sigma(t), h
    phi_1 = torch.expm1(z)
    phi_2 = phi_1 / z - 1.0
    return r, c, h, (phi_1, phi_2, phi_2 / z - 0.5)


def _singlestep_tables(sch, data, s, t, mids):
    """Coefficients of singlestep DPM-Solver steps s -> t (K steps; mids (K, 2) padded with t), float64.

    Returns times (K, 3) = (s, s1, s2); r (K, 2) = (lambda_{s_i} - lambda_s) / h; co (K, 3, 5) = (R, C, phi_1, phi_2,
    phi_3) of the steps s -> s1, s -> s2, s -> t.
    """
    lam_s = sch.lambda_(s)
    h = sch.lambda_(t) - lam_s
    r = (sch.lambda_(mids) - lam_s[:, None]) / h[:, None]
    co = []
    for u in (mids[:, 0], mids[:, 1], t):
        R, C, _, phis = _coefs(sch, data, s, u)
        co.append(torch.stack([R, C, *phis], dim=-1))
    return torch.cat([s[:, None], mids], dim=1), r, torch.stack(co, dim=1)


def _singlestep_update(pred, x, times, r, co, order, solver_type, ms=()):
    """Singlestep DPM-Solver-k (2022a Alg. 1/2; 2022b Alg. 1) with one row of ``_singlestep_tables``.

    ``ms`` are model values already known at s (and s1); returns x_t and the values at s, s1, ...
    """
    ms = list(ms)
    if not ms:
        ms.append(pred(x, times[0]))
    m0 = ms[0]
    if order >= 2 and len(ms) < 2:
        # x_{s1} by DPM-Solver-1 from s.
        R, C, p1, _, _ = co[0]
        ms.append(pred(R * x - C * p1 * m0, times[1]))
    if order == 3 and len(ms) < 3:
        # x_{s2} by a second-order Taylor step from s, slope (m1 - m0) / r1.
        R, C, p1, p2, _ = co[1]
        ms.append(pred(R * x - C * (p1 * m0 + (r[1] / r[0]) * p2 * (ms[1] - m0)), times[2]))
    R, C, p1, p2, p3 = co[2]
    if order == 1:
        corr = 0.0
    elif order == 2:
        d1 = (ms[1] - m0) / r[0]
        corr = 0.5 * p1 * d1 if solver_type == "dpmsolver" else p2 * d1
    elif solver_type == "dpmsolver":
        corr = p2 * (ms[2] - m0) / r[1]
    else:
        # Taylor: D1, D2 from divided differences at r1, r2.
        d1_0, d1_1 = (ms[1] - m0) / r[0], (ms[2] - m0) / r[1]
        d1 = (r[1] * d1_0 - r[0] * d1_1) / (r[1] - r[0])
        d2 = 2.0 * (d1_1 - d1_0) / (r[1] - r[0])
        corr = p2 * d1 + p3 * d2
    return R * x - C * (p1 * m0 + corr), ms


def _multistep_weights(lam, h, phis, order, solver_type):
    """Multistep DPM-Solver-k weights of the past values m_{-1}, m_{-2}, .. at lambdas lam (2022b Alg. 2 and its
    order-3 form): D1, D2 are folded into them, so x_t = R x - C sum_j w_j m_{-1-j} touches each tensor once.
    """
    p1, p2, p3 = phis
    if order == 1:
        return [p1]
    if order == 2:
        # D1 = (m_{-1} - m_{-2}) / r0, r0 = (lambda_{-1} - lambda_{-2}) / h;
        # phi_1 m_{-1} + k D1 with k = phi_1 / 2 or phi_2.
        r0 = (lam[-1] - lam[-2]) / h
        k = 0.5 * p1 if solver_type == "dpmsolver" else p2
        return [p1 + k / r0, -k / r0]
    # Order 3 (both solver types): d1_0 = (m_{-1} - m_{-2}) / r0, d1_1 = (m_{-2} - m_{-3}) / r1,
    # D1 = d1_0 + r0 / (r0 + r1) (d1_0 - d1_1), D2 = (d1_0 - d1_1) / (r0 + r1),
    # so phi_2 D1 + phi_3 D2 = u d1_0 - v d1_1 with v = (phi_2 r0 + phi_3) / (r0 + r1), u = phi_2 + v.
    r0, r1 = (lam[2] - lam[1]) / h, (lam[1] - lam[0]) / h
    v = (p2 * r0 + p3) / (r0 + r1)
    u = p2 + v
    return [p1 + u / r0, -u / r0 - v / r1, v / r1]


def _predictor(model, data, thresholding="none", threshold_ratio=0.995, threshold_max=1.0):
    """The solver's m(x, t): eps, or x0 corrected by thresholding (Saharia et al. 2022 dynamic, or a clip)."""
    if not data:
        return model.eps

    def x0(x, t, alpha_sigma=None):
        m = model.x0(x, t, alpha_sigma)
        if thresholding == "dynamic":
            # s = max(quantile_p |x0|, max); x0 <- clip(x0, -s, s) / s, per sample.
            q = torch.quantile(m.abs().reshape(m.shape[0], -1), threshold_ratio, dim=1)
            s = q.clamp(min=threshold_max).reshape((-1,) + (1,) * (m.dim() - 1))
            m = torch.clamp(m, -s, s) / s
        elif thresholding == "clip":
            m = m.clamp(-threshold_max, threshold_max)
        return m
    return x0


def _singlestep_plan(sch, nfe, order, method, grid, t_end):
    """Outer times and per-step orders: DPM-Solver-fast (2022a Sec. 3.4) or fixed order nfe / order steps."""
    if method == "singlestep_fixed":
        orders = [order] * (nfe // order)
    elif order == 3:
        k = nfe // 3 + 1
        orders = [3] * (k - 2) + [2, 1] if nfe % 3 == 0 else [3] * (k - 1) + [nfe % 3]
    elif order == 2:
        orders = [2] * (nfe // 2) + [1] * (nfe % 2)
    else:
        orders = [1] * nfe
    if method == "singlestep_fixed" or grid == "logSNR":
        # The reference spaces the outer points of a logSNR grid uniformly, whatever the orders.
        return time_grid(sch, grid, len(orders), t_end), orders
    idx = torch.cumsum(torch.tensor([0] + orders), 0)
    return time_grid(sch, grid, nfe, t_end)[idx], orders


def _sample(model, x, nfe, *, noise, data, order, method, solver_type, lower_order_final, grid, t_end,
            thresholding="none", threshold_ratio=0.995, threshold_max=1.0):
    """DPM-Solver (data=False) / DPM-Solver++ (data=True), singlestep or multistep, spending exactly nfe."""
    sch = model.schedule
    pred = _predictor(model, data, thresholding, threshold_ratio, threshold_max)
    if method != "multistep":
        orders, *tables = _singlestep_grid(sch, data, nfe, order, method, grid, t_end)
        times, r, co = on_state(x, *tables)
        for j, k in enumerate(orders):
            x, _ = _singlestep_update(pred, x, times[j], r[j], co[j], k, solver_type)
        return x
    orders, *tables = _multistep_grid(sch, data, nfe, order, solver_type, lower_order_final, grid, t_end, x.dtype)
    ts, R, nw, a, s = on_state(x, *tables)
    ms = [pred(x, ts[0], alpha_sigma=(a[0], s[0]))]  # model values at the last `order` grid points, newest last
    for i, k in enumerate(orders, start=1):
        # x_i = R x - sum_j w_j m_{-1-j}, the weights stored negated.
        x = lincomb((R[i - 1], x), *((nw[i - 1, j], ms[-1 - j]) for j in range(k)))
        if i < nfe:  # the model is never evaluated at the last grid point
            ms = (ms + [pred(x, ts[i], alpha_sigma=(a[i], s[i]))])[-order:]
    return x


@grid_tables
def _singlestep_grid(sch, data, nfe, order, method, grid, t_end):
    """(orders, times, r, co) of a singlestep run: ``_singlestep_plan`` and ``_singlestep_tables``."""
    ts, orders = _singlestep_plan(sch, nfe, order, method, grid, t_end)
    # Intermediate points follow the same grid between s and t (padded with t up to two).
    mids = torch.stack([torch.cat([time_grid(sch, grid, k, float(t), float(s))[1:-1], t.repeat(3 - k)])
                        for s, t, k in zip(ts[:-1], ts[1:], orders)])
    return (tuple(orders), *_singlestep_tables(sch, data, ts[:-1], ts[1:], mids))


@grid_tables
def _multistep_grid(sch, data, nfe, order, solver_type, lower_order_final, grid, t_end, dtype):
    """(orders, ts, R, -w, alpha, sigma) of a multistep run; row i - 1 of w holds C_i times the weights of step
    i - 1 -> i for the past values newest first; alpha, sigma at ts for the model boundary (a ``dtype`` state).
    """
    ts = time_grid(sch, grid, nfe, t_end)
    # Schedule values for the whole grid at once: lambda_i and the coefficients of every step i-1 -> i.
    lam = sch.lambda_(ts)
    R, C, h, phis = _coefs(sch, data, ts[:-1], ts[1:])
    orders, w = [], torch.zeros(nfe, order, dtype=torch.float64)
    for i in range(1, nfe + 1):
        # Warm-up with order i; optionally lower the final orders on short runs.
        k = min(i, order)
        if lower_order_final and nfe < LOWER_ORDER_FINAL_MAX_STEPS:
            k = min(k, nfe + 1 - i)
        orders.append(k)
        w[i - 1, :k] = C[i - 1] * torch.stack(_multistep_weights(lam[i - k:i], h[i - 1], [p[i - 1] for p in phis],
                                                                k, solver_type))
    return (tuple(orders), ts, R, -w, *alpha_sigma(sch, ts, dtype))


def _check_nfe(nfe, *, method, order, **_):
    if nfe < 1:
        raise UnsupportedNFE(f"dpm_solver ({method}) needs NFE >= 1, got {nfe}")
    if method == "singlestep_fixed" and nfe % order:
        raise UnsupportedNFE(f"dpm_solver singlestep_fixed order {order} spends {order} NFE per step: "
                             f"NFE must be a positive multiple of {order}, got {nfe}")


def _thresholded_x0(model, x, t, *, thresholding="none", threshold_ratio=0.995, threshold_max=1.0, **_):
    """The final denoising step of DPM-Solver++: x0 at t_end, thresholded as its steps' x0 (the reference's
    ``denoise_to_zero_fn`` = its data prediction with ``correcting_x0_fn``)."""
    return _predictor(model, True, thresholding, threshold_ratio, threshold_max)(x, t)


_COMMON = {"order": 3, "method": "singlestep", "solver_type": "dpmsolver", "lower_order_final": True,
           "grid": "logSNR", "t_end": T_END}
_CHOICES = {"order": (1, 2, 3), "method": METHODS, "solver_type": SOLVER_TYPES}

register("dpm_solver", defaults=_COMMON, choices=_CHOICES, check_nfe=_check_nfe, in_default_sweep=False,
         description="DPM-Solver (Lu et al. 2022a), noise prediction; singlestep (fast) / fixed / multistep; "
                     "lower_order_final acts on multistep only")(partial(_sample, data=False))
register("dpm_solver++",
         defaults={**_COMMON, "order": 2, "method": "multistep", "thresholding": "none", "threshold_ratio": 0.995,
                   "threshold_max": 1.0},
         choices={**_CHOICES, "thresholding": THRESHOLDING},
         bounds={"threshold_ratio": Interval(0.0, 1.0, "right"), "threshold_max": POSITIVE},
         check_nfe=_check_nfe, in_default_sweep=False, ending=_thresholded_x0,
         description="DPM-Solver++ (Lu et al. 2022b), data prediction with optional thresholding of x0; "
                     "lower_order_final acts on multistep only")(partial(_sample, data=True))


@register("dpm_solver_adaptive",
          defaults={"order": 3, "prediction": "noise", "solver_type": "dpmsolver", "atol": 0.0078, "rtol": 0.05,
                    "h_init": 0.05, "theta": 0.9, "t_err": 1e-5, "t_end": T_END},
          choices={"order": (2, 3), "prediction": ("noise", "data"), "solver_type": SOLVER_TYPES},
          bounds={"atol": POSITIVE, "rtol": POSITIVE, "h_init": POSITIVE, "theta": Interval(0.0, 1.0, "right"),
                  "t_err": Interval(0.0, T_MAX, "neither")},
          adaptive=True, in_default_sweep=False,
          description="adaptive DPM-Solver-12 / -23 (Lu et al. 2022a Alg. 4); NFE counts rejected steps; "
                      "one step size for the whole batch, as the reference")
def dpm_solver_adaptive(model, x, nfe, *, noise, order, prediction, solver_type, atol, rtol, h_init, theta, t_err,
                        t_end):
    """DPM-Solver-12 (order 2) / -23 (order 3), Lu et al. 2022a Alg. 4: embedded pair, error control in lambda.

    Step control runs on the host in float64: each try reads its error estimate back from the device (one sync per
    try, which accepting or rejecting needs) and sends the next step's coefficients there (one copy).
    """
    sch, data = model.schedule, prediction == "data"
    t_end = end_time(sch, t_end)
    pred = _predictor(model, data)
    r = [0.5] if order == 2 else [1.0 / 3.0, 2.0 / 3.0]
    s = torch.tensor(sch.T, dtype=torch.float64)
    lam_s, lam_0 = sch.lambda_(s), sch.lambda_(torch.tensor(t_end, dtype=torch.float64))
    h, x_prev = torch.tensor(h_init, dtype=torch.float64), x
    while torch.abs(s - t_end) > t_err:
        t = sch.inverse_lambda(lam_s + h)
        mids = torch.stack([sch.inverse_lambda(lam_s + ri * h) for ri in r] + [t] * (3 - order))
        times, rr, co = on_state(x, *_singlestep_tables(sch, data, s[None], t[None], mids[None]))
        # Lower order (k - 1) and higher order (k) share the model values at s and s1.
        x_lo, ms = _singlestep_update(pred, x, times[0], rr[0], co[0], order - 1, solver_type)
        x_hi, _ = _singlestep_update(pred, x, times[0], rr[0], co[0], order, solver_type, ms)
        # E = max over the batch of the RMS of (x_hi - x_lo) / max(atol, rtol max(|x_lo|, |x_prev|)).
        delta = torch.clamp(rtol * torch.maximum(x_lo.abs(), x_prev.abs()), min=atol)
        err = ((x_hi - x_lo) / delta).reshape(x.shape[0], -1).square().mean(-1).sqrt().max()
        err = err.to("cpu", torch.float64)  # the one host sync per try
        if not torch.isfinite(err):
            return x_hi  # diverged: returned as is
        if err <= 1.0:
            x, s, x_prev = x_hi, t, x_lo
            lam_s = sch.lambda_(s)
        h = torch.minimum(theta * h * err ** (-1.0 / order), lam_0 - lam_s)
    return x


register_preset("dpm_solver_fast", "dpm_solver", method="singlestep", order=3,
                description="DPM-Solver-fast (Lu et al. 2022a): singlestep orders 3,..,3 + (2,1 | 1 | 2), exact NFE")
register_preset("dpm_solver_2", "dpm_solver", method="singlestep_fixed", order=2, description="singlestep DPM-Solver-2")
register_preset("dpm_solver_3", "dpm_solver", method="singlestep_fixed", order=3, in_default_sweep=False,
                description="singlestep DPM-Solver-3")
register_preset("dpm_solver_2m", "dpm_solver", method="multistep", order=2, description="multistep DPM-Solver-2")
register_preset("dpm_solver_3m", "dpm_solver", method="multistep", order=3, in_default_sweep=False,
                description="multistep DPM-Solver-3")
register_preset("dpm_solver++_2s", "dpm_solver++", method="singlestep_fixed", order=2,
                description="DPM-Solver++(2S) (Lu et al. 2022b), singlestep")
register_preset("dpm_solver++_2m", "dpm_solver++", method="multistep", order=2,
                description="DPM-Solver++(2M) (Lu et al. 2022b), multistep")
register_preset("dpm_solver++_3m", "dpm_solver++", method="multistep", order=3,
                description="DPM-Solver++(3M) (Lu et al. 2022b), multistep")

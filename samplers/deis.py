"""DEIS (Zhang & Chen 2022): exponential-integrator multistep solvers tAB-DEIS and rhoAB-DEIS."""
from __future__ import annotations

import numpy as np
import torch

from .grids import T_END, time_grid
from .registry import register, register_preset
from .state import grid_tables, lincomb, on_state

DEIS_METHODS = ("tab", "rhoab")
DEIS_ORDERS = (0, 1, 2, 3)
DEIS_COEFFICIENTS = ("exact", "riemann")
RIEMANN_POINTS = 10000  # the reference's left Riemann sum (qsh-zh/deis, th_deis/multistep.py, num_item)
GAUSS_NODES = 16        # Gauss-Legendre nodes per panel for coefficients="exact"
GAUSS_PANEL = 1.0       # widest panel in lambda (t(lambda) is analytic within pi/2 of the real axis)

_F64 = torch.float64
_GL_X, _GL_W = (torch.as_tensor(a, dtype=_F64) for a in np.polynomial.legendre.leggauss(GAUSS_NODES))


def _riemann(a, b):
    """The reference's rule: left Riemann sum with RIEMANN_POINTS points on [a, b]."""
    k = torch.arange(RIEMANN_POINTS, dtype=_F64)
    return a + (b - a) * k / RIEMANN_POINTS, torch.full_like(k, float(b - a) / RIEMANN_POINTS)


def _gauss(a, b, panels: int = 1):
    """Composite Gauss-Legendre nodes and weights on [a, b]."""
    edges = torch.linspace(float(a), float(b), panels + 1, dtype=_F64)
    half, mid = 0.5 * (edges[1:] - edges[:-1]), 0.5 * (edges[1:] + edges[:-1])
    return (mid[:, None] + half[:, None] * _GL_X).flatten(), (half[:, None] * _GL_W).flatten()


def _lagrange(z: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """L_j(z) = prod_{k != j} (z - z_k) / (z_j - z_k), shape (len(nodes), len(z))."""
    rows = []
    for j in range(len(nodes)):
        lj = torch.ones_like(z)
        for k in range(len(nodes)):
            if k != j:
                lj = lj * (z - nodes[k]) / (nodes[j] - nodes[k])
        rows.append(lj)
    return torch.stack(rows)


def _coefficients(sch, method: str, rule: str, s, t, nodes) -> torch.Tensor:
    """c_j = int_{s}^{t} L_j d rho for one step; L_j is the Lagrange basis in t (tab) or in rho (rhoab)."""
    if method == "rhoab":
        z, w = (_riemann if rule == "riemann" else _gauss)(sch.rho(s), sch.rho(t))
    elif rule == "riemann":
        # The reference's integrand in t: d rho / d tau = -f(tau) / (alpha_tau sigma_tau), f = d log alpha / d tau.
        z, w = _riemann(s, t)
        f, _ = sch.drift_diffusion(z)
        w = w * (-f / (sch.alpha(z) * sch.sigma(z)))
    else:
        # Exact: substitute lambda, d rho = -exp(-lambda) d lambda; panels keep the quadrature at round-off.
        lam_s, lam_t = float(sch.lambda_(s)), float(sch.lambda_(t))
        lam, w = _gauss(lam_s, lam_t, panels=max(1, int(np.ceil(abs(lam_t - lam_s) / GAUSS_PANEL))))
        z, w = sch.inverse_lambda(lam), -w * torch.exp(-lam)
    return _lagrange(z, nodes) @ w


@register("deis", defaults={"method": "tab", "order": 3, "coefficients": "exact", "grid": "time_quadratic",
                            "t_end": T_END},
          choices={"method": DEIS_METHODS, "order": DEIS_ORDERS, "coefficients": DEIS_COEFFICIENTS},
          in_default_sweep=False,
          description="DEIS (Zhang & Chen 2022): exponential multistep, eps extrapolated in t (tab) or rho (rhoab)")
def deis(model, x, nfe, *, noise, method, order, coefficients, grid, t_end):
    """tAB- / rhoAB-DEIS (Zhang & Chen 2022); order = polynomial degree, order min(i, order) at step i; NFE = steps."""
    ts, ratio, c = on_state(x, *_tables(model.schedule, nfe, method, order, coefficients, grid, t_end))
    eps = []  # eps at t_i, t_{i-1}, ... (newest first)
    for i in range(nfe):
        eps = [model.eps(x, ts[i])] + eps[:order]
        # x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} sum_j c_j eps_{i-j}   (x / alpha = v, dv = eps d rho);
        # c already holds alpha_{i+1} c_j, so each eps is touched once.
        x = lincomb((ratio[i], x), *((c[i, j], e) for j, e in enumerate(eps)))
    return x


@grid_tables
def _tables(sch, nfe, method, order, coefficients, grid, t_end):
    """(ts, alpha_{i+1} / alpha_i, c): row i of c is alpha_{i+1} c_j of step i for eps_{i-j}, j = 0 .. min(i, order)."""
    ts = time_grid(sch, grid, nfe, t_end)
    alpha = sch.alpha(ts)
    knots = ts if method == "tab" else sch.rho(ts)  # the variable eps is extrapolated in
    c = torch.zeros(nfe, order + 1, dtype=torch.float64)
    for i in range(nfe):
        nodes = knots[max(0, i - order): i + 1].flip(0)
        c[i, :len(nodes)] = alpha[i + 1] * _coefficients(sch, method, coefficients, ts[i], ts[i + 1], nodes)
    return ts, alpha[1:] / alpha[:-1], c

for _order in DEIS_ORDERS[1:]:
    for _method in DEIS_METHODS:
        register_preset(f"deis_{_method}{_order}", "deis", method=_method, order=_order,
                        in_default_sweep=_order == 3,
                        description=f"{_method}-DEIS order {_order} (Zhang & Chen 2022), exact coefficients")

"""Likelihood of a diffusion model in bits/dim: the probability-flow ODE (Song et al. 2021) and VDM's bound (Kingma et al. 2021).

Two families behind one registry, ``get_estimator(name, **options).estimate(model, x, nfe, seed=, indices=, levels=)``:

* ``ode_*``: log p_eps(x) by the instantaneous change of variables along the PF-ODE from t_eps to T
  (score_sde ``likelihood.py``), log p_eps(x) = log N(x_T; 0, s^2 I) + int_{t_eps}^{T} div v dt, with the prior the
  schedule's own x_T distribution, s = ``prior_std`` (VP 1 as score_sde, EDM sigma_max, flow sigma_T = T), what the
  samplers start from. The ODE is solved in lambda = log(alpha / sigma) for y = xbar / sqrt(1 + rho^2)
  (xbar = x / alpha, rho = sigma / alpha = e^{-lambda}), the state of VP's ODE: dy/dlambda = sigma_vp^2 y -
  sigma_vp eps_hat(k y, t(lambda)) with sigma_vp^2 = 1 / (1 + e^{2 lambda}) and k = alpha sqrt(1 + rho^2) (1 on VP).
  y is bounded as t -> 0 (where dx/dt grows like 1/sigma) and as t -> T, and the ODE in y depends on lambda alone,
  so every family takes the same steps; x_T = k_T y_T and log p moves by D log(k_T / k_eps) between the two.
  ``space="t"`` (dopri5) solves x in t by the schedule's drift f and diffusion g^2 instead.
  NFE: one model call per function evaluation, the divergence by backward passes through that call (exact: D of
  them; Hutchinson: one per probe); Euler 1, Heun 2, RK4 4 per step; dopri5 counts its evaluations (2 + 6 per step,
  rejected steps included). Discrete data (``levels``) are dequantised x + u, u ~ U[-w/2, w/2) with w the level
  spacing, so the bins are centred on the values the network was trained on; bits/dim add -log2 w.
  Truncation at t_eps (None: the schedule's t_end): "none" evaluates p_eps at the data (score_sde; drops
  log p(x | x_eps)): the density of what the samplers return, x at t_end, which keeps the scale alpha_eps (flow:
  1 - t_eps); "gaussian" draws
  x_eps ~ q(x_eps | x) and adds the Gaussian decoder's term, exactly D log alpha_eps; "discrete" (no
  dequantisation) adds VDM's discrete decoder, log p(x | x_eps) - log q(x_eps | x): a bound on P(discrete x).
* ``vlb_*``: VDM's variational bound on the discrete data: reconstruction + KL(q(z_T | x) || N(0, s^2 I)) +
  diffusion term, with gamma = -2 lambda; continuous time (NFE = time samples) or T discrete steps (NFE = T).
  Every term but the prior's is a function of gamma alone (z / alpha against the decoder), so is each family's.

Every random draw (Hutchinson probes, dequantisation, truncation noise, VLB times and noise) comes from
``SampleNoise`` streams of (seed, sample index), so fixed-step estimates do not depend on batching or ranks
(dopri5 shares its steps across the batch, as score_sde's solver does). Outputs are per-sample tensors
(``nll_nats``, ``nll_bpd`` and one ``<family>_<term>_bpd`` per term).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch

from . import grids
from .schedules import FAMILIES, VPSchedule
from .noise import SampleNoise
from .registry import Interval, Unsupported, UnsupportedNFE
from .state import check_state, on_state

# Per-index noise streams; samplers.noise uses 0 (x_T) and 1 (sampler noise).
STREAM_PROBE = 10       # Hutchinson-Skilling probes, one set per solve
STREAM_DEQUANT = 11     # uniform dequantisation
STREAM_TRUNCATION = 12  # x_eps ~ q(x_eps | x) for truncation "gaussian" / "discrete"
STREAM_VLB_TIME = 13    # the offset of the stratified VLB times
STREAM_VLB_EPS = 14     # the noise of z_t in the VLB diffusion term
STREAM_VLB_RECON = 15   # the noise of z_0 in the VLB reconstruction term

# Start of the likelihood ODE / VLB: None is the schedule's sampling end (``schedule.t_end``: VP 1e-3, EDM sigma_min,
# flow 1e-3), so the likelihood is that of the distribution the samplers draw from, inside the range the networks were
# trained on (VP [1e-3, 1]); score_sde uses 1e-5.
T_EPS = None
ODE_RTOL = ODE_ATOL = 1e-5  # score_sde's RK45 tolerances
EXACT_DIVERGENCE_MAX_DIM = 1024  # exact divergence costs D backward passes per evaluation; above this use Hutchinson
LEVEL_TOLERANCE = 1e-3    # data further than this fraction of a bin from a level is not discrete
DATA_RANGE = (-1.0, 1.0)
LN2 = math.log(2.0)

FIXED_STEP_TABLEAUS = {  # explicit Runge-Kutta (c, a, b): NFE per step = len(c)
    "euler": ((0.0,), ((),), (1.0,)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}
ODE_TERMS = ("ode_prior_bpd", "ode_flow_bpd", "ode_truncation_bpd")
VLB_TERMS = ("vlb_recon_bpd", "vlb_prior_bpd", "vlb_diffusion_bpd")


# -- units -------------------------------------------------------------------------------------
def bin_width(levels: int, data_range: Sequence[float] = DATA_RANGE) -> float:
    """Spacing of ``levels`` equally spaced values spanning ``data_range``: (hi - lo) / (L - 1)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite (lo, hi) with hi > lo, got {tuple(data_range)}")
    return (hi - lo) / (levels - 1)


def dequantization_offset_bits(levels: int, data_range: Sequence[float] = DATA_RANGE) -> float:
    """-log2(bin width): P(pixel) ~ p(x) * width^D, so -log2 P / D = -log2 p / D - log2 width (3 for 17 levels on [-1, 1])."""
    return -math.log2(bin_width(levels, data_range))


def bits_per_dim(logp_nats, dim: int, levels: int | None = None, data_range: Sequence[float] = DATA_RANGE):
    """-log p / (D ln 2) + the dequantisation offset (none for ``levels=None``: a density of continuous data)."""
    offset = 0.0 if levels is None else dequantization_offset_bits(levels, data_range)
    return -logp_nats / (dim * LN2) + offset


def level_index(x: torch.Tensor, levels: int, data_range: Sequence[float] = DATA_RANGE) -> torch.Tensor:
    """The level k of each value x = lo + k * width (long); ValueError for data off the levels."""
    lo, w = float(data_range[0]), bin_width(levels, data_range)
    k = (x.to(torch.float64) - lo) / w
    idx = torch.round(k)
    if not bool(((k - idx).abs() <= LEVEL_TOLERANCE).all() & (idx >= 0).all() & (idx <= levels - 1).all()):
        raise ValueError(f"data are not on {levels} levels spanning {tuple(data_range)}: pass discrete data "
                         "(before dequantisation) or levels=None for continuous data")
    return idx.long()


# -- schedule in gamma = -log SNR ----------------------------------------------------------------
def gamma(schedule, t) -> torch.Tensor:
    """VDM's gamma(t) = -log SNR = -2 lambda(t) (float64)."""
    return -2.0 * schedule.lambda_(t)


def gamma_prime(schedule, t) -> torch.Tensor:
    """d gamma / dt by autograd of the schedule (float64, t's shape and device)."""
    t = torch.as_tensor(t, dtype=torch.float64).detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(gamma(schedule, t).sum(), t)
    return d


def _alpha_sigma(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of a VP marginal from gamma: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def _marginal_variances(schedule, t, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t^2, sigma_t^2) with gamma(t) = g: VP in closed form from gamma, any other family from the schedule at t."""
    if isinstance(schedule, VPSchedule):
        return torch.sigmoid(-g), torch.sigmoid(g)
    t = torch.as_tensor(t, dtype=torch.float64, device=g.device)
    return schedule.alpha(t) ** 2, schedule.sigma(t) ** 2


def _marginal(schedule, t, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) with gamma(t) = g (see ``_marginal_variances``)."""
    if isinstance(schedule, VPSchedule):
        return _alpha_sigma(g)
    t = torch.as_tensor(t, dtype=torch.float64, device=g.device)
    return schedule.alpha(t), schedule.sigma(t)


def log_vp_scale(schedule, t, lam) -> torch.Tensor | None:
    """log k with x = k y, y = xbar / sqrt(1 + rho^2) the VP-scaled state: k = alpha_t sqrt(1 + e^{-2 lambda}); None on VP.

    y is a function of xbar = x / alpha and rho = e^{-lambda} alone, the same on every family; on VP it is x (k = 1).
    """
    if isinstance(schedule, VPSchedule):
        return None
    return schedule.log_alpha(t) - 0.5 * torch.nn.functional.logsigmoid(2.0 * torch.as_tensor(lam, dtype=torch.float64))


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or scalar coefficient shaped to multiply x."""
    return v.reshape((-1,) + (1,) * (x.dim() - 1)) if v.dim() else v


# -- the pieces of the bounds ----------------------------------------------------------------------
def discrete_decoder_logprob(k: torch.Tensor, z: torch.Tensor, g: torch.Tensor, levels: int,
                             data_range: Sequence[float] = DATA_RANGE, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x | z) summed per sample, VDM's decoder: softmax over levels x_j of -(z/alpha - x_j)^2 / (2 e^gamma).

    ``alpha`` of z's marginal; None: VP's, from gamma. In xbar = z / alpha the decoder depends on gamma alone.
    """
    lo = float(data_range[0])
    x_levels = lo + bin_width(levels, data_range) * torch.arange(levels, dtype=z.dtype, device=z.device)
    if alpha is None:
        alpha, _ = _alpha_sigma(g)
    z_rescaled = z / _bcast(alpha.to(z.dtype), z)
    logits = -0.5 * (z_rescaled[..., None] - x_levels) ** 2 * _bcast(torch.exp(-g).to(z.dtype), z)[..., None]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, k[..., None]).squeeze(-1)
    return logp.flatten(1).sum(1)


def prior_kl(x: torch.Tensor, alpha2: torch.Tensor, sigma2: torch.Tensor, prior_std: float = 1.0) -> torch.Tensor:
    """KL(q(z_T | x) || N(0, s^2 I)) per sample: 0.5 sum((sigma_T^2 + alpha_T^2 x^2) / s^2 - 1 - log(sigma_T^2 / s^2))."""
    var = prior_std**2
    flat = x.flatten(1).to(torch.float64)
    return 0.5 * ((sigma2 + alpha2 * flat**2) / var - 1.0 - torch.log(sigma2 / var)).sum(1).to(x.dtype)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per sample (score_sde's VP prior)."""
    flat = z.flatten(1)
    return -0.5 * flat.shape[1] * math.log(2 * math.pi) - 0.5 * (flat**2).sum(1)


def prior_logprob(z: torch.Tensor, prior_std: float) -> torch.Tensor:
    """log N(z; 0, s^2 I) per sample, the schedule's x_T distribution (s = prior_std: VP 1, EDM sigma_max, flow T)."""
    return standard_normal_logprob(z / prior_std) - z[0].numel() * math.log(prior_std)


def eps_divergence(model, x: torch.Tensor, t, probes: torch.Tensor | None = None):
    """eps_hat(x, t) and div_x eps_hat per sample: exact (D vector-Jacobian products) or Hutchinson-Skilling.

    One model call (one NFE); ``probes`` (P, B, *shape) gives the estimate mean_p p . (d eps_hat / dx)^T p.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = model.eps(xg, t)
        if e.grad_fn is None:
            raise ValueError(f"network {model.name!r}: its output carries no gradient with respect to x (is it called "
                             "under torch.inference_mode or no_grad?); the ODE likelihood needs a differentiable network")
        if probes is None:
            flat = e.flatten(1)
            div = sum(torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=True)[0].flatten(1)[:, i]
                      for i in range(flat.shape[1]))
        else:
            div = sum((torch.autograd.grad(e, xg, grad_outputs=p, retain_graph=True)[0] * p).flatten(1).sum(1)
                      for p in probes) / len(probes)
    return e.detach(), div.detach()


def _flow(model, x, t, c_x, c_eps, probes, scale=None):
    """(dx/ds, div dx/ds) for dx/ds = c_x x + c_eps eps_hat(k x, t), k = ``scale`` (None: 1): one NFE."""
    if scale is None:
        e, div_e = eps_divergence(model, x, t, probes)
    else:
        e, div_e = eps_divergence(model, scale * x, t, probes)
        div_e = scale * div_e                                             # d eps_hat / dx = k (d eps_hat / d(kx))
    return c_x * x + c_eps * e, c_x * x[0].numel() + c_eps * div_e


# -- ODE solvers of the augmented state (x, int div) ---------------------------------------------------
def _solve_fixed(model, x, steps, tableau, grid, t_eps, probes):
    """Explicit RK in lambda over a registered time grid (t_eps -> T), NFE = steps * stages; returns (x_T, int div).

    The state is the VP-scaled y = x / k (``log_vp_scale``): dy/dlambda = sigma_vp^2 y - sigma_vp eps_hat with
    sigma_vp^2 = 1 / (1 + e^{2 lambda}), the same ODE and steps on every family (VP: y = x, as score_sde).
    """
    sch = model.schedule
    c, a, b = tableau
    ts = grids.time_grid(sch, grid, steps, t_end=t_eps).flip(0)          # t_eps ... T
    lam = sch.lambda_(ts)
    h = lam[1:] - lam[:-1]
    lam_stage = lam[:-1, None] + h[:, None] * torch.tensor(c, dtype=torch.float64)   # (steps, stages)
    t_stage = sch.inverse_lambda(lam_stage)
    t_stage[:, 0] = ts[:-1]                                               # exact grid points where c = 0
    if c[-1] == 1.0:
        t_stage[:, -1] = ts[1:]
    sig2 = torch.sigmoid(-2.0 * lam_stage)                                # sigma_vp^2 = 1 / (1 + e^{2 lambda})
    log_k = log_vp_scale(sch, ts, lam)
    scale = None if log_k is None else on_state(x, torch.exp(log_vp_scale(sch, t_stage, lam_stage)))[0]
    h, t_stage, sig2, sig = on_state(x, h, t_stage, sig2, sig2.sqrt())
    y = x if log_k is None else x / on_state(x, torch.exp(log_k[0]))[0]
    delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(steps):
        ks = []
        for j in range(len(c)):
            yj = y
            for l, a_jl in enumerate(a[j]):
                if a_jl:
                    yj = yj + (h[i] * a_jl) * ks[l][0]
            # dy/dlambda = sigma^2 y - sigma eps_hat; d(int div)/dlambda = D sigma^2 - sigma div_y eps_hat.
            ks.append(_flow(model, yj, t_stage[i, j], sig2[i, j], -sig[i, j], probes,
                            None if scale is None else scale[i, j]))
        y = y + h[i] * sum(b_j * k[0] for b_j, k in zip(b, ks))
        delta = delta + h[i] * sum(b_j * k[1] for b_j, k in zip(b, ks))
    return _to_x(x, y, delta, log_k)


def _to_x(x, y_T, delta, log_k):
    """(x_T, int div of the x-ODE) from the VP-scaled solution: x_T = k_T y_T, and log p moves by D log(k_T / k_eps)."""
    if log_k is None:
        return y_T, delta
    k_T, dlog = on_state(x, torch.exp(log_k[-1]), log_k[-1] - log_k[0])
    return k_T * y_T, delta + x[0].numel() * dlog


def _solve_adaptive(model, x, space, t_eps, rtol, atol, probes):
    """dopri5 (torchdiffeq) on the augmented state, in lambda (the VP-scaled state, as ``_solve_fixed``) or x in t;
    steps shared by the batch."""
    sch = model.schedule
    dev = x.device

    def in_lambda(lam, state):
        s2 = torch.sigmoid(-2.0 * lam).to(x.dtype)
        t = sch.inverse_lambda(lam)
        log_k = log_vp_scale(sch, t, lam)
        return _flow(model, state[0], t, s2, -s2.sqrt(), probes, None if log_k is None else torch.exp(log_k).to(x.dtype))

    def in_t(t, state):
        f, g2 = sch.drift_diffusion(t)  # dx/dt = f x + g^2 eps_hat / (2 sigma): the schedule's ode_velocity
        return _flow(model, state[0], t, f.to(x.dtype), (0.5 * g2 / sch.sigma(t)).to(x.dtype), probes)

    from torchdiffeq import odeint  # imports scipy (0.4-0.7 s): only when an adaptive likelihood is solved

    t0, t1 = torch.tensor(t_eps, dtype=torch.float64), torch.tensor(sch.T, dtype=torch.float64)
    ends = torch.stack([sch.lambda_(t0), sch.lambda_(t1)]) if space == "lambda" else torch.stack([t0, t1])
    log_k = log_vp_scale(sch, torch.stack([t0, t1]), ends) if space == "lambda" else None
    y0 = (x if log_k is None else x / on_state(x, torch.exp(log_k[0]))[0],
          torch.zeros(x.shape[0], dtype=x.dtype, device=dev))
    # dopri5 may step past T and interpolate back; a flow's schedule ends at t = 1, so in t its last step lands on T
    # (VP keeps score_sde's free steps; in lambda every family takes VP's).
    options = {"step_t": ends[-1:]} if space == "t" and not isinstance(sch, VPSchedule) else None
    y_T, delta = odeint(in_lambda if space == "lambda" else in_t, y0, ends.to(dev), method="dopri5",
                        rtol=rtol, atol=atol, options=options)
    return _to_x(x, y_T[-1], delta[-1], log_k)


# -- the estimators -------------------------------------------------------------------------------------
def _draws(seed, indices, shape, stream, n, x) -> torch.Tensor:
    """n successive standard normal draws per sample index, (n, B, *shape), float64 on x's device."""
    noise = SampleNoise(seed, indices, shape, stream=stream, dtype=torch.float64, device=x.device)
    return torch.stack([noise.randn() for _ in range(n)])


def _check_t_eps(schedule, t_eps, who) -> float:
    """t_eps on this schedule (None: its sampling end t_end); ValueError unless 0 <= t_eps < T with a finite log SNR
    there (t_eps = 0 only for schedules with sigma_0 > 0)."""
    if t_eps is None:
        return float(schedule.t_end)
    if not t_eps < schedule.T or not math.isfinite(float(schedule.lambda_(torch.tensor(t_eps, dtype=torch.float64)))):
        raise ValueError(f"{who}: t_eps={t_eps} needs t_eps < T={schedule.T} and a finite log SNR there "
                         f"(sigma > 0); allowed for {schedule!r}: (0, {schedule.T}) or None (its end, {schedule.t_end})")
    return t_eps


def _check_data(model, x, indices, levels, data_range, who):
    check_state(x, who)
    if tuple(x.shape[1:]) != tuple(model.data_shape) or len(indices) != x.shape[0]:
        raise ValueError(f"{who}: x has shape {tuple(x.shape)} and {len(indices)} indices; expected "
                         f"(len(indices), *{tuple(model.data_shape)})")
    return None if levels is None else level_index(x, levels, data_range)


def ode_likelihood(model, x, nfe, *, seed, indices, levels, data_range, solver, divergence, n_probes, probe,
                   n_dequant, dequantization, truncation, t_eps, grid="logSNR", space="lambda", rtol=ODE_RTOL,
                   atol=ODE_ATOL) -> dict:
    """log p of data by the PF-ODE and the instantaneous change of variables (Song et al. 2021, score_sde likelihood.py).

    The n_dequant draws (each with its own probes and truncation noise) are solved as one batch and averaged in nats.
    """
    who = f"ode_{solver}"
    k = _check_data(model, x, indices, levels, data_range, who)
    sch = model.schedule
    t_eps = _check_t_eps(sch, t_eps, who)
    if truncation == "discrete" and (levels is None or dequantization != "none"):
        raise ValueError(f"{who}: truncation='discrete' needs discrete data (levels) and dequantization='none'")
    dim, R, B, shape = x[0].numel(), n_dequant, x.shape[0], tuple(x.shape[1:])
    if divergence == "exact" and dim > EXACT_DIVERGENCE_MAX_DIM:
        raise ValueError(f"{who}: exact divergence of a {dim}-dim model costs {dim} backward passes per NFE; "
                         f"allowed up to {EXACT_DIVERGENCE_MAX_DIM}: use divergence='hutchinson'")
    x_rep = x.expand(R, *x.shape)
    if levels is not None and dequantization == "uniform":
        # x + u, u ~ U[-width/2, width/2): bins centred on the levels the model was trained on.
        u = torch.special.ndtr(_draws(seed, indices, shape, STREAM_DEQUANT, R, x)).to(x.dtype) - 0.5
        x_rep = x_rep + bin_width(levels, data_range) * u
    x_rep = x_rep.reshape(R * B, *shape)
    log_trunc = torch.zeros(R * B, dtype=x.dtype, device=x.device)
    if truncation != "none":
        g_eps = gamma(sch, torch.tensor(t_eps, dtype=torch.float64)).to(x.device)
        alpha, sigma = _marginal(sch, t_eps, g_eps)
        n = _draws(seed, indices, shape, STREAM_TRUNCATION, R, x).to(x.dtype).reshape(R * B, *shape)
        x_data = x_rep
        x_rep = alpha.to(x.dtype) * x_data + sigma.to(x.dtype) * n  # x_eps ~ q(x_eps | x)
        if truncation == "gaussian":
            # log N(x; x_eps/alpha, sigma^2/alpha^2) - log q(x_eps | x) = D log alpha for every draw.
            log_trunc = log_trunc + dim * torch.log(alpha).to(x.dtype)
        else:
            log_q = -0.5 * dim * math.log(2 * math.pi) - dim * torch.log(sigma).to(x.dtype) \
                - 0.5 * (n.flatten(1) ** 2).sum(1)
            log_dec = discrete_decoder_logprob(k.expand(R, *k.shape).reshape(R * B, *shape), x_rep, g_eps,
                                               levels, data_range, alpha)
            log_trunc = log_dec - log_q
    probes = None
    if divergence == "hutchinson":
        z = _draws(seed, indices, shape, STREAM_PROBE, R * n_probes, x).to(x.dtype)
        z = z.reshape(R, n_probes, B, *shape).transpose(0, 1).reshape(n_probes, R * B, *shape)
        probes = torch.sign(z) if probe == "rademacher" else z
    if solver == "dopri5":
        x_T, delta = _solve_adaptive(model, x_rep, space, t_eps, rtol, atol, probes)
    else:
        x_T, delta = _solve_fixed(model, x_rep, nfe // len(FIXED_STEP_TABLEAUS[solver][0]),
                                  FIXED_STEP_TABLEAUS[solver], grid, t_eps, probes)
    terms = {"ode_prior_bpd": -prior_logprob(x_T, sch.prior_std), "ode_flow_bpd": -delta,
             "ode_truncation_bpd": -log_trunc}
    nats = {key: v.reshape(R, B).mean(0) for key, v in terms.items()}
    nll = sum(nats.values())
    offset_levels = None if truncation == "discrete" else levels  # 'discrete' is already a probability of the levels
    out = {"nll_nats": nll, "nll_bpd": bits_per_dim(-nll, dim, offset_levels, data_range)}
    out.update({key: v / (dim * LN2) for key, v in nats.items()})
    return out


def vdm_bound(model, x, nfe, *, seed, indices, levels, data_range, kind, t_eps, time_sampling="logSNR",
              grid="logSNR") -> dict:
    """VDM's bound -log p(x) <= recon + prior + diffusion (Kingma et al. 2021, model_vdm.py); data kept discrete.

    ``levels=None`` (continuous data) uses the Gaussian decoder N(x; z_0/alpha_0, e^gamma_0), whose expected
    -log is D/2 (log 2 pi + gamma_0 + 1), exactly.
    """
    who = f"vlb_{kind}"
    k = _check_data(model, x, indices, levels, data_range, who)
    sch = model.schedule
    t_eps = _check_t_eps(sch, t_eps, who)
    dim, B, shape, dev = x[0].numel(), x.shape[0], tuple(x.shape[1:]), x.device
    g0_host, gT_host = (float(gamma(sch, torch.tensor(v, dtype=torch.float64))) for v in (t_eps, sch.T))
    g0, gT = (torch.full((), g, dtype=torch.float64, device=dev) for g in (g0_host, gT_host))
    # Reconstruction at t_eps (VDM's t = 0).
    if levels is None:
        recon = torch.full((B,), 0.5 * dim * (math.log(2 * math.pi) + g0_host + 1.0), dtype=x.dtype, device=dev)
    else:
        a0, s0 = _marginal(sch, t_eps, g0)
        z0 = a0.to(x.dtype) * x + s0.to(x.dtype) * _draws(seed, indices, shape, STREAM_VLB_RECON, 1, x)[0].to(x.dtype)
        recon = -discrete_decoder_logprob(k, z0, g0, levels, data_range, a0)
    prior = prior_kl(x, *_marginal_variances(sch, sch.T, gT), sch.prior_std)
    noise = SampleNoise(seed, indices, shape, stream=STREAM_VLB_EPS, dtype=x.dtype, device=dev)
    diffusion = torch.zeros(B, dtype=x.dtype, device=dev)
    with torch.no_grad():
        if kind == "continuous":
            # Stratified times u_k = (k + u) / K with one uniform offset per sample (VDM's antithetic sampler).
            u = torch.special.ndtr(_draws(seed, indices, (), STREAM_VLB_TIME, 1, x)[0])
            for i in range(nfe):
                u_k = (i + u) / nfe
                if time_sampling == "logSNR":
                    # int gamma'(t) L(t) dt = int L(t(gamma)) dgamma: gamma uniform, weight gamma_T - gamma_0.
                    g_k = g0 + (gT - g0) * u_k
                    t_k, w = sch.inverse_lambda(-0.5 * g_k), (gT - g0).expand(B)
                else:
                    t_k = t_eps + (sch.T - t_eps) * u_k
                    g_k, w = gamma(sch, t_k), (sch.T - t_eps) * gamma_prime(sch, t_k)
                a, s = (_bcast(v.to(x.dtype), x) for v in _marginal(sch, t_k, g_k))
                e = noise.randn()
                err = ((e - model.eps(a * x + s * e, t_k)) ** 2).flatten(1).sum(1)
                diffusion = diffusion + (0.5 * w.to(x.dtype) / nfe) * err
        else:
            ts = grids.time_grid(sch, grid, nfe, t_end=t_eps).flip(0)         # s_0 = t_eps < ... < s_T = T
            g = gamma(sch, ts)
            ts, weight, alpha, sigma = on_state(x, ts, 0.5 * torch.expm1(g[1:] - g[:-1]), *_marginal(sch, ts, g))
            for i in range(nfe):
                # 0.5 (SNR(s) - SNR(t)) ||x - x_hat||^2 = 0.5 expm1(gamma_t - gamma_s) ||eps - eps_hat(z_t)||^2.
                e = noise.randn()
                err = ((e - model.eps(alpha[i + 1] * x + sigma[i + 1] * e, ts[i + 1])) ** 2).flatten(1).sum(1)
                diffusion = diffusion + weight[i] * err
    nats = {"vlb_recon_bpd": recon, "vlb_prior_bpd": prior, "vlb_diffusion_bpd": diffusion}
    nll = sum(nats.values())
    out = {"nll_nats": nll, "nll_bpd": nll / (dim * LN2)}
    out.update({key: v / (dim * LN2) for key, v in nats.items()})
    return out


# -- the registry ---------------------------------------------------------------------------------------
def _any_nfe(nfe, **_):
    if nfe < 1:
        raise UnsupportedNFE(f"NFE must be >= 1, got {nfe}")


def _stages_nfe(solver):
    stages = len(FIXED_STEP_TABLEAUS[solver][0])

    def check(nfe, **_):
        if nfe < stages or nfe % stages:
            raise UnsupportedNFE(f"ode_{solver} spends {stages} evaluations per step (NFE a multiple of {stages}), "
                                 f"got {nfe}")
    return check


def _check_ode(*, truncation, dequantization, **_):
    if truncation == "discrete" and dequantization != "none":
        raise ValueError("truncation='discrete' bounds the probability of the discrete data itself: "
                         "it needs dequantization='none'")


@dataclass(frozen=True)
class EstimatorSpec:
    """What ``register_estimator`` records."""

    name: str
    fn: Callable
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple]
    bounds: Mapping[str, Interval]
    check_nfe: Callable[..., None]
    validate: Callable[..., None] | None
    adaptive: bool
    description: str
    families: tuple = ("vp",)


_ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(name: str, fn: Callable, *, defaults: Mapping[str, Any], choices: Mapping[str, tuple] | None = None,
                       bounds: Mapping[str, Interval] | None = None, check_nfe: Callable[..., None] = _any_nfe,
                       validate: Callable[..., None] | None = None, adaptive: bool = False, description: str = "",
                       families: Sequence[str] = ("vp",)):
    """Register ``fn(model, x, nfe, *, seed, indices, levels, data_range, **options) -> dict`` under ``name``.

    Every option has a default; options with ``choices`` take one of them, numeric options need an ``Interval``;
    ``validate(**options)`` checks them together. An ``adaptive`` estimator is called with ``nfe=None``.
    ``families``: the schedule families (``NoiseSchedule.family``) it computes correctly; others are Unsupported.
    """
    choices, bounds = dict(choices or {}), dict(bounds or {})
    if not name or any(ch.isspace() for ch in name) or name in _ESTIMATORS:
        raise ValueError(f"estimator name {name!r} is invalid or already registered")
    numeric = {k for k, v in defaults.items() if v is None or isinstance(v, (int, float)) and not isinstance(v, bool)}
    if (set(choices) | set(bounds)) - set(defaults) or numeric - set(choices) - set(bounds):
        raise ValueError(f"estimator {name!r}: every choice/bound needs an option, every numeric option a bound")
    spec = EstimatorSpec(name, fn, MappingProxyType(dict(defaults)), MappingProxyType(choices),
                         MappingProxyType(bounds), check_nfe, validate, adaptive,
                         description or (fn.__doc__ or name).strip().splitlines()[0], tuple(families))
    Estimator(spec, {})  # the defaults themselves must be allowed
    _ESTIMATORS[name] = spec


def _check_option(spec: EstimatorSpec, key: str, value):
    if key not in spec.defaults:
        raise ValueError(f"estimator {spec.name!r} has no option {key!r}; allowed: {sorted(spec.defaults)}")
    default = spec.defaults[key]
    if default is None:  # an optional number (t_eps: None is the schedule's own end)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"estimator {spec.name!r}: option {key}={value!r} must be a number or None")
        default = 0.0
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**53 else math.inf
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not type(default):
        raise ValueError(f"estimator {spec.name!r}: option {key}={value!r} must be of type {type(default).__name__}")
    if key in spec.choices and value not in spec.choices[key]:
        raise ValueError(f"estimator {spec.name!r}: {key}={value!r} is not allowed; allowed: {list(spec.choices[key])}")
    if key in spec.bounds and value not in spec.bounds[key]:  # NaN and inf are in no Interval
        raise ValueError(f"estimator {spec.name!r}: {key}={value!r} is out of range; allowed: {spec.bounds[key]}")
    return value


class Estimator:
    """A registered likelihood estimator with frozen, validated options."""

    def __init__(self, spec: EstimatorSpec, options: Mapping[str, Any]):
        self.spec, self.name, self.adaptive = spec, spec.name, spec.adaptive
        self.options = MappingProxyType({**spec.defaults, **{k: _check_option(spec, k, v) for k, v in options.items()}})
        if spec.validate is not None:
            spec.validate(**self.options)

    def check_nfe(self, nfe: int | None) -> None:
        """Raise ``UnsupportedNFE`` unless the estimator spends exactly ``nfe`` evaluations (None if adaptive)."""
        if self.adaptive:
            if nfe is not None:
                raise UnsupportedNFE(f"{self.name!r} is adaptive: it picks its own NFE from rtol/atol; pass nfe=None")
            return
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise UnsupportedNFE(f"NFE must be an integer, got {nfe!r}")
        self.spec.check_nfe(nfe, **self.options)

    def check_model(self, model) -> None:
        """Raise ``Unsupported`` unless the estimator is written for the family of ``model``'s schedule."""
        family = getattr(model.schedule, "family", "?")
        if family not in self.spec.families:
            raise Unsupported(f"likelihood estimator {self.name!r} is not written for the {family!r} schedule family "
                              f"({model.schedule!r}); it supports: {list(self.spec.families)}")

    def estimate(self, model, x: torch.Tensor, nfe: int | None, *, seed: int, indices: Sequence[int],
                 levels: int | None = None, data_range: Sequence[float] = DATA_RANGE) -> dict[str, torch.Tensor]:
        """Per-sample estimates of -log p(x) for data x (B, *data_shape) with sample ``indices`` (B of them).

        Args:
            model: a ``DiffusionModel``; the ODE estimators need its network differentiable in x.
            x: data in the state dtype (float64 / float32) on the model's device; with ``levels`` the exact
                level values lo + k (hi - lo) / (levels - 1), before any dequantisation.
            nfe: network evaluations per batch (None for adaptive estimators).
            seed, indices: every random draw is a function of (seed, index): batch- and rank-invariant.
            levels: the data's number of levels (17 for digits), or None for continuous data (no dequantisation,
                no bits/dim offset, Gaussian decoder in the VLB).
            data_range: the values of the lowest and highest level.

        Returns: {"nll_nats": (B,), "nll_bpd": (B,), and per term "<ode|vlb>_<term>_bpd": (B,)} on x's device.
        Raises ``Unsupported`` for a schedule family the estimator is not written for (see ``check_model``).
        """
        self.check_nfe(nfe)
        self.check_model(model)
        if levels is not None:
            bin_width(levels, data_range)
        return self.spec.fn(model, x, nfe, seed=seed, indices=list(indices), levels=levels,
                            data_range=tuple(float(v) for v in data_range), **self.options)

    def config_json(self) -> str:
        """Every option, sorted: the estimator's identity in a results row."""
        return json.dumps(dict(self.options), sort_keys=True)

    def __repr__(self):
        return f"Estimator({self.name}, {self.config_json()})"


def get_estimator(name: str, **options) -> Estimator:
    """The estimator registered as ``name`` with ``options`` overriding its defaults (validated here)."""
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown likelihood estimator {name!r}; allowed: {available_estimators()}")
    return Estimator(_ESTIMATORS[name], options)


def available_estimators() -> list[str]:
    return sorted(_ESTIMATORS)


T_EPS_RANGE = Interval(0.0, None, "left")  # below the schedule's T, and 0 only where sigma_0 > 0 (checked per schedule)
_ODE_DEFAULTS = {"divergence": "hutchinson", "probe": "rademacher", "n_probes": 1, "n_dequant": 1,
                 "dequantization": "uniform", "truncation": "none", "t_eps": T_EPS}
_ODE_CHOICES = {"divergence": ("hutchinson", "exact"), "probe": ("rademacher", "gaussian"),
                "dequantization": ("uniform", "none"), "truncation": ("none", "gaussian", "discrete")}
_ODE_BOUNDS = {"n_probes": Interval(1, None), "n_dequant": Interval(1, None), "t_eps": T_EPS_RANGE}

register_estimator("ode_dopri5", partial(ode_likelihood, solver="dopri5"),
                   defaults={**_ODE_DEFAULTS, "rtol": ODE_RTOL, "atol": ODE_ATOL, "space": "lambda"},
                   choices={**_ODE_CHOICES, "space": ("lambda", "t")},
                   bounds={**_ODE_BOUNDS, "rtol": Interval(0.0, None, "neither"), "atol": Interval(0.0, None, "neither")},
                   validate=_check_ode, adaptive=True, families=FAMILIES,
                   description="PF-ODE log-likelihood, dopri5 (torchdiffeq) at rtol/atol; NFE = function evaluations")
for _solver in ("euler", "heun", "rk4"):
    register_estimator(f"ode_{_solver}", partial(ode_likelihood, solver=_solver),
                       defaults={**_ODE_DEFAULTS, "grid": "logSNR"},
                       choices={**_ODE_CHOICES, "grid": tuple(grids.available())}, bounds=_ODE_BOUNDS,
                       check_nfe=_any_nfe if _solver == "euler" else _stages_nfe(_solver), validate=_check_ode,
                       families=FAMILIES,
                       description=f"PF-ODE log-likelihood, fixed-step {_solver} in lambda "
                                   f"({len(FIXED_STEP_TABLEAUS[_solver][0])} NFE per step)")
register_estimator("vlb_continuous", partial(vdm_bound, kind="continuous"),
                   defaults={"t_eps": T_EPS, "time_sampling": "logSNR"},
                   choices={"time_sampling": ("logSNR", "time_uniform")}, bounds={"t_eps": T_EPS_RANGE}, families=FAMILIES,
                   description="VDM continuous-time bound; NFE = stratified time samples per data point")
register_estimator("vlb_discrete", partial(vdm_bound, kind="discrete"),
                   defaults={"t_eps": T_EPS, "grid": "logSNR"},
                   choices={"grid": tuple(grids.available())}, bounds={"t_eps": T_EPS_RANGE}, families=FAMILIES,
                   description="VDM discrete-time bound with T = NFE steps on a time grid; every step evaluated once")

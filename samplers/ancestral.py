"""k-diffusion's ancestral samplers (Crowson, ``k_diffusion/sampling.py``): a deterministic step down to rho_down,
then fresh noise rho_up, with Euler, DPM-Solver-2 or DPM-Solver++(2S) steps; eta = 0 gives the ODE samplers.

Written in the family-invariant variables x_bar = x / alpha and rho = sigma / alpha (k-diffusion's x and sigma), so
they run unchanged on every schedule. Ancestral noise is rho_up z in x_bar, alpha rho_up z in x; every z comes from
the sampler's per-sample-index streams (``SampleNoise``), so a sample does not depend on its batch.
``denoise_to_zero`` ends as k-diffusion's trailing sigma = 0 does: the last of the NFE is x0(x, t_end). ``afs``
(diff-sampler's analytic first step, where given) replaces the first model call by eps = x_bar / sqrt(1 + rho^2).
"""
from __future__ import annotations

import torch

from .grids import T_END, time_grid
from .model import alpha_sigma
from .registry import Interval, UnsupportedNFE, register, register_preset
from .state import grid_tables, lincomb, on_state

# eta > 1 can make rho_down 0 before the end (k-diffusion then switches that step to Euler, a different NFE).
ETA_RANGE = Interval(0.0, 1.0)
S_NOISE_RANGE = Interval(0.0, None)
KDIFF_DEFAULTS = {"eta": 1.0, "s_noise": 1.0, "grid": "karras", "t_end": T_END, "denoise_to_zero": False}
AFS_DEFAULTS = {**KDIFF_DEFAULTS, "afs": False}


def ancestral_step(rho_from, rho_to, eta):
    """(rho_down, rho_up) of k-diffusion's ``get_ancestral_step`` (float64 tensors)."""
    up = torch.minimum(rho_to, eta * (rho_to**2 * (rho_from**2 - rho_to**2) / rho_from**2).sqrt())
    return (rho_to**2 - up**2).sqrt(), up


def noisy(eta, s_noise, **_) -> bool:
    """Whether an (eta, s_noise) sampler draws noise."""
    return eta > 0 and s_noise > 0


def check_per_step(per_step: int):
    """check_nfe of a sampler spending ``per_step`` evaluations a step, one less with ``afs``, one more with
    ``denoise_to_zero``."""
    def check(nfe, *, denoise_to_zero, afs=False, **_):
        n = nfe - int(denoise_to_zero) + int(afs)
        if n < per_step or n % per_step or nfe < 1:
            extra = (" - 1 (afs)" if afs else "") + (" + 1 (denoise_to_zero)" if denoise_to_zero else "")
            raise UnsupportedNFE(f"this sampler spends {per_step} evaluation(s) per step: NFE must be "
                                 f"{per_step} N{extra} with N >= 1, got {nfe}")
    return check


def grid_steps(nfe, per_step, denoise_to_zero, afs=False) -> int:
    """Steps on the grid to t_end for an NFE budget (see ``check_per_step``)."""
    return (nfe - int(denoise_to_zero) + int(afs)) // per_step


def afs_factor(rho):
    """The analytic first step (diff-sampler's AFS): eps at the first point taken as x_bar / sqrt(1 + rho^2)."""
    return 1.0 / torch.sqrt(1.0 + rho**2)


def points(sch, ts, dtype):
    """(ts, alpha, sigma, rho) at host times ts; (alpha, sigma) as a model call with a ``dtype`` state has them."""
    a, s = alpha_sigma(sch, ts, dtype)
    return ts, a, s, sch.rho(ts)


def finish(model, xb, t, a, s, denoise_to_zero):
    """x = alpha x_bar at t_end, or with ``denoise_to_zero`` the final denoising step x0(x, t_end) (one NFE)."""
    x = xb.mul_(a)
    return model.x0(x, t, alpha_sigma=(a, s)) if denoise_to_zero else x


@grid_tables
def _euler_tables(sch, steps, eta, s_noise, grid, t_end, dtype):
    ts, a, s, rho = points(sch, time_grid(sch, grid, steps, t_end), dtype)
    down, up = ancestral_step(rho[:-1], rho[1:], eta)
    # x_bar += eps (rho_down - rho) + s_noise rho_up z.
    c_z = s_noise * up
    return tuple(bool(c > 0) for c in c_z), ts, a, s, down - rho[:-1], c_z, afs_factor(rho[0])


@register("euler_ancestral", defaults=AFS_DEFAULTS, bounds={"eta": ETA_RANGE, "s_noise": S_NOISE_RANGE},
          check_nfe=check_per_step(1), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_euler_ancestral: Euler in (x/alpha, rho) to rho_down, then rho_up noise")
def euler_ancestral(model, x, nfe, *, noise, eta, s_noise, grid, t_end, denoise_to_zero, afs):
    """k-diffusion ``sample_euler_ancestral``; eta = 0 is Euler in rho (= DDIM; diff-sampler's euler_sampler)."""
    steps = grid_steps(nfe, 1, denoise_to_zero, afs)
    draws, *tables = _euler_tables(model.schedule, steps, eta, s_noise, grid, t_end, x.dtype)
    ts, a, s, h, c_z, c_afs = on_state(x, *tables)
    xb = x / a[0]
    for i in range(steps):
        # Euler step to rho_down: d x_bar / d rho = eps (AFS: eps = x_bar / sqrt(1 + rho^2) at the first point).
        d = xb * c_afs if afs and i == 0 else model.eps(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        xb = lincomb(xb, (h[i], d))
        if draws[i]:
            xb.add_(noise.randn().mul_(c_z[i]))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


@grid_tables
def _dpm2_tables(sch, steps, eta, s_noise, grid, t_end, dtype):
    ts = time_grid(sch, grid, steps, t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    down, up = ancestral_step(rho[:-1], rho[1:], eta)
    # Midpoint geometric in rho: exp(lerp(log rho, log rho_down, 1/2)).
    mid = torch.exp(torch.lerp(rho[:-1].log(), down.log(), 0.5))
    t_mid, a_mid, s_mid, _ = points(sch, sch.inverse_rho(mid), dtype)
    c_z = s_noise * up
    return (tuple(bool(c > 0) for c in c_z), ts, a, s, t_mid, a_mid, s_mid, mid - rho[:-1], down - rho[:-1], c_z,
            afs_factor(rho[0]))


@register("dpm_2_ancestral", defaults=AFS_DEFAULTS, bounds={"eta": ETA_RANGE, "s_noise": S_NOISE_RANGE},
          check_nfe=check_per_step(2), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_dpm_2_ancestral: DPM-Solver-2 (midpoint in log rho) to rho_down, "
                      "then rho_up noise; 2 NFE per step")
def dpm_2_ancestral(model, x, nfe, *, noise, eta, s_noise, grid, t_end, denoise_to_zero, afs):
    """k-diffusion ``sample_dpm_2_ancestral``; eta = 0 is ``sample_dpm_2`` (its s_churn = 0; diff-sampler's dpm_2)."""
    steps = grid_steps(nfe, 2, denoise_to_zero, afs)
    draws, *tables = _dpm2_tables(model.schedule, steps, eta, s_noise, grid, t_end, x.dtype)
    ts, a, s, t_mid, a_mid, s_mid, h1, h2, c_z, c_afs = on_state(x, *tables)
    xb = x / a[0]
    for i in range(steps):
        d = xb * c_afs if afs and i == 0 else model.eps(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        # Euler to the midpoint, then the whole step with the midpoint's slope.
        x_mid = lincomb(xb, (h1[i], d)).mul_(a_mid[i])
        xb = lincomb(xb, (h2[i], model.eps(x_mid, t_mid[i], alpha_sigma=(a_mid[i], s_mid[i]))))
        if draws[i]:
            xb.add_(noise.randn().mul_(c_z[i]))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


@grid_tables
def _dpmpp_2s_tables(sch, steps, eta, s_noise, grid, t_end, dtype):
    ts = time_grid(sch, grid, steps, t_end)
    ts, a, s, rho = points(sch, ts, dtype)
    down, up = ancestral_step(rho[:-1], rho[1:], eta)
    # In lambda = -log rho: h = lambda_down - lambda, the intermediate point at lambda + h / 2.
    h = torch.log(rho[:-1] / down)
    mid = rho[:-1] * torch.exp(-0.5 * h)
    t_mid, a_mid, s_mid, _ = points(sch, sch.inverse_rho(mid), dtype)
    c_z = s_noise * up
    return (tuple(bool(c > 0) for c in c_z), ts, a, s, t_mid, a_mid, s_mid,
            mid / rho[:-1], -torch.expm1(-0.5 * h), down / rho[:-1], -torch.expm1(-h), c_z)


@register("dpmpp_2s_ancestral", defaults=KDIFF_DEFAULTS, bounds={"eta": ETA_RANGE, "s_noise": S_NOISE_RANGE},
          check_nfe=check_per_step(2), stochastic=noisy, in_default_sweep=False,
          description="k-diffusion sample_dpmpp_2s_ancestral: DPM-Solver++(2S) to rho_down, then rho_up noise; "
                      "2 NFE per step")
def dpmpp_2s_ancestral(model, x, nfe, *, noise, eta, s_noise, grid, t_end, denoise_to_zero):
    """k-diffusion ``sample_dpmpp_2s_ancestral`` (Lu et al. 2022b, 2S with r = 1/2, in x_bar and lambda)."""
    steps = (nfe - int(denoise_to_zero)) // 2
    draws, *tables = _dpmpp_2s_tables(model.schedule, steps, eta, s_noise, grid, t_end, x.dtype)
    ts, a, s, t_mid, a_mid, s_mid, r1, c1, r2, c2, c_z = on_state(x, *tables)
    xb = x / a[0]
    for i in range(steps):
        d0 = model.x0(xb * a[i], ts[i], alpha_sigma=(a[i], s[i]))
        # x_bar_s = (rho_s / rho) x_bar - expm1(-h/2) D, then the full step with D(x_bar_s).
        x_mid = lincomb((r1[i], xb), (c1[i], d0)).mul_(a_mid[i])
        xb = lincomb((r2[i], xb), (c2[i], model.x0(x_mid, t_mid[i], alpha_sigma=(a_mid[i], s_mid[i]))))
        if draws[i]:
            xb.add_(noise.randn().mul_(c_z[i]))
    return finish(model, xb, ts[-1], a[-1], s[-1], denoise_to_zero)


register_preset("dpm_2", "dpm_2_ancestral", eta=0.0, in_default_sweep=False,
                description="k-diffusion sample_dpm_2: DPM-Solver-2 in rho with a geometric midpoint; 2 NFE per step")

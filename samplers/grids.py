"""Time grids, a registry of their own: each maps (schedule, steps, t_start, t_end) to steps + 1 times.

A grid is part of a sampler's identity in the results (STYLE principle 3). Conventions follow
DPM-Solver's ``get_time_steps`` (time_uniform, time_quadratic, logSNR) and Karras et al. (2022) for
``karras`` (uniform in rho^(1/7), rho = sigma / alpha), and Align Your Steps' model-free closed form for
``kl_optimal`` (uniform in atan(rho)). Grids defined in time place their points in the
schedule's ``unwarp``-ed time (a shifted flow's u, as diffusers shifts flow sigmas); logSNR and karras grids
are defined by the log-SNR alone, so they are the same grid in lambda on every family.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch

from .schedules import VP_T_END, NoiseSchedule

T_END = None  # a sampler's default end of integration: the model's own (schedule.t_end: VP 1e-3, EDM sigma_min)
T_MAX = 1.0   # the largest VP schedule end T (VPLinear, VPDiscrete)
KARRAS_RHO = 7.0
TIMES_PREFIX = "times:"  # an explicit list of times (a fitted schedule), named by its content: times:<sha1 12>
TIMES_RTOL = 1e-12       # its ends must match the sampler's t_start / t_end to this relative tolerance

GridFn = Callable[[NoiseSchedule, int, float, float], torch.Tensor]
_GRIDS: dict[str, GridFn] = {}
_TIMES: dict[str, torch.Tensor] = {}


def register_grid(name: str):
    def deco(fn: GridFn) -> GridFn:
        if name in _GRIDS:
            raise ValueError(f"time grid {name!r} is already registered")
        _GRIDS[name] = fn
        return fn
    return deco


def available() -> list[str]:
    """The named grids (explicit ``times:`` grids are not listed: they are registered when a preset is read)."""
    return sorted(n for n in _GRIDS if n not in _TIMES)


def register_times(times: Sequence[float]) -> str:
    """Register explicit times t_0 > .. > t_K > 0 (a fitted schedule) as the grid ``times:<sha1>``; returns its name.

    The name is a hash of the float64 values, so a sampler's options (and the cell id) name the times themselves.
    The grid answers only its own K steps between its own ends: anything else is a ValueError.
    """
    ts = [float(t) for t in times]
    if len(ts) < 2 or not all(math.isfinite(t) and t > 0 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"explicit times must be at least 2 finite, positive, strictly decreasing numbers, got {ts}")
    name = TIMES_PREFIX + hashlib.sha1(",".join(t.hex() for t in ts).encode()).hexdigest()[:12]
    if name in _TIMES:
        return name
    table = torch.tensor(ts, dtype=torch.float64)

    def explicit(schedule, steps, t_start, t_end):
        if steps != len(ts) - 1:
            raise ValueError(f"time grid {name} has {len(ts) - 1} steps; this run asks for {steps} "
                             f"(a fitted schedule serves the NFE it was fitted for)")
        for what, want, got in (("t_start", ts[0], t_start), ("t_end", ts[-1], t_end)):
            if abs(got - want) > TIMES_RTOL * abs(want):
                raise ValueError(f"time grid {name} runs from {ts[0]!r} to {ts[-1]!r}; this run asks for "
                                 f"{what}={got!r}")
        return table.clone()

    _GRIDS[name], _TIMES[name] = explicit, table
    return name


def explicit_times(name: str) -> torch.Tensor | None:
    """The times of an explicit grid (``register_times``), None for a named grid."""
    return _TIMES[name].clone() if name in _TIMES else None


def get_grid(name: str) -> GridFn:
    if name not in _GRIDS:
        raise ValueError(f"unknown time grid {name!r}; allowed: {available()}")
    return _GRIDS[name]


def end_time(schedule: NoiseSchedule, t_end: float | None) -> float:
    """A sampler's ``t_end`` option on this schedule: None is the schedule's own end; ValueError outside (0, T)."""
    t = schedule.t_end if t_end is None else float(t_end)
    if not 0 < t < schedule.T:
        raise ValueError(f"t_end={t_end} is outside the model's time range; allowed for {schedule!r}: "
                         f"(0, {schedule.T}) or None (its default end, {schedule.t_end})")
    return t


def time_grid(schedule: NoiseSchedule, name: str, steps: int, t_end: float | None = T_END,
              t_start: float | None = None) -> torch.Tensor:
    """steps + 1 decreasing times (float64) from t_start (default schedule.T) to t_end (None: schedule.t_end)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"a time grid needs at least 1 step, got {steps}")
    t_end = end_time(schedule, t_end)
    t_start = schedule.T if t_start is None else t_start
    if not 0 < t_end < t_start <= schedule.T:
        raise ValueError(f"need 0 < t_end < t_start <= T={schedule.T}, got t_end={t_end}, t_start={t_start}")
    ts = get_grid(name)(schedule, int(steps), float(t_start), float(t_end))
    ts[0], ts[-1] = t_start, t_end  # exact end points, whatever round-off the inverse map had
    return ts


@register_grid("time_uniform")
def _time_uniform(schedule, steps, t_start, t_end):
    u0, u1 = float(schedule.unwarp(t_start)), float(schedule.unwarp(t_end))
    return schedule.warp(torch.linspace(u0, u1, steps + 1, dtype=torch.float64))


@register_grid("time_quadratic")
def _time_quadratic(schedule, steps, t_start, t_end):
    u0, u1 = float(schedule.unwarp(t_start)), float(schedule.unwarp(t_end))
    return schedule.warp(torch.linspace(u0**0.5, u1**0.5, steps + 1, dtype=torch.float64) ** 2)


@register_grid("logSNR")
def _log_snr(schedule, steps, t_start, t_end):
    lam = torch.linspace(float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end)), steps + 1,
                         dtype=torch.float64)
    return schedule.inverse_lambda(lam)


@register_grid("karras")
def _karras(schedule, steps, t_start, t_end):
    r = 1.0 / KARRAS_RHO
    hi, lo = float(schedule.rho(t_start)) ** r, float(schedule.rho(t_end)) ** r
    rho = torch.linspace(hi, lo, steps + 1, dtype=torch.float64) ** KARRAS_RHO
    return schedule.inverse_rho(rho)


@register_grid("kl_optimal")
def _kl_optimal(schedule, steps, t_start, t_end):
    """Align Your Steps' closed form for Gaussian data (Sabour et al. 2024; ComfyUI's ``kl_optimal_scheduler``):
    rho = sigma / alpha uniform in atan(rho), model-free."""
    hi, lo = math.atan(float(schedule.rho(t_start))), math.atan(float(schedule.rho(t_end)))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return schedule.inverse_rho(torch.tan((1.0 - u) * hi + u * lo))

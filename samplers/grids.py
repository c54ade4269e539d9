"""Time grids, a registry of their own: each maps (schedule, steps, t_start, t_end) to steps + 1 times.

A grid is part of a sampler's identity in the results (STYLE principle 3). Conventions follow
DPM-Solver's ``get_time_steps`` (time_uniform, time_quadratic, logSNR) and Karras et al. (2022) for
``karras`` (uniform in rho^(1/7), rho = sigma / alpha).
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import NoiseSchedule

T_END = 1e-3  # default end of integration (DPM-Solver's eps for continuous VP models)
T_MAX = 1.0   # the largest schedule end T (VPLinear, VPDiscrete); options are checked against it when built
KARRAS_RHO = 7.0

GridFn = Callable[[NoiseSchedule, int, float, float], torch.Tensor]
_GRIDS: dict[str, GridFn] = {}


def register_grid(name: str):
    def deco(fn: GridFn) -> GridFn:
        if name in _GRIDS:
            raise ValueError(f"time grid {name!r} is already registered")
        _GRIDS[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_GRIDS)


def get_grid(name: str) -> GridFn:
    if name not in _GRIDS:
        raise ValueError(f"unknown time grid {name!r}; allowed: {available()}")
    return _GRIDS[name]


def time_grid(schedule: NoiseSchedule, name: str, steps: int, t_end: float = T_END,
              t_start: float | None = None) -> torch.Tensor:
    """steps + 1 decreasing times (float64) from t_start (default schedule.T) to t_end."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"a time grid needs at least 1 step, got {steps}")
    t_start = schedule.T if t_start is None else t_start
    if not 0 < t_end < t_start <= schedule.T:
        raise ValueError(f"need 0 < t_end < t_start <= T={schedule.T}, got t_end={t_end}, t_start={t_start}")
    ts = get_grid(name)(schedule, int(steps), float(t_start), float(t_end))
    ts[0], ts[-1] = t_start, t_end  # exact end points, whatever round-off the inverse map had
    return ts


@register_grid("time_uniform")
def _time_uniform(schedule, steps, t_start, t_end):
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@register_grid("time_quadratic")
def _time_quadratic(schedule, steps, t_start, t_end):
    return torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2


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

"""The model boundary: any network f(x, t) with its prediction type becomes eps / x0 / score at continuous t.

Prediction types are normalised here and nowhere else (STYLE principle 2). Every call of the wrapped
network is counted, so NFE is measured, never inferred from a step count (principle 4).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .schedules import NoiseSchedule, VPDiscrete

PREDICTIONS = ("eps", "x0", "v", "score")
TIME_INPUTS = ("continuous", "discrete")


class DiffusionModel:
    """A network ``fn(x, t_in) -> prediction`` seen through its schedule and prediction type.

    Args:
        fn: the network; called with x in ``net_dtype`` of shape (B, *data_shape) and a time
            tensor of shape (B,) in the network's own convention (see ``time_input``).
        schedule: the VP noise schedule the network was trained with.
        prediction: what ``fn`` predicts: "eps", "x0", "v" (alpha eps - sigma x0) or "score".
        time_input: "continuous" passes t in [0, T]; "discrete" passes (t - 1/N) N of a
            ``VPDiscrete`` schedule (DPM-Solver's map of continuous to discrete time).
        data_shape: the shape of one sample, e.g. (2,) or (1, 8, 8).
        net_dtype: dtype the network computes in; inputs are cast to it and outputs cast back.
    """

    def __init__(self, fn: Callable, schedule: NoiseSchedule, prediction: str = "eps", *,
                 time_input: str = "continuous", data_shape: tuple = (), net_dtype=torch.float32,
                 name: str = "model"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; allowed: {list(PREDICTIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; allowed: {list(TIME_INPUTS)}")
        if time_input == "discrete" and not isinstance(schedule, VPDiscrete):
            raise ValueError("time_input='discrete' needs a VPDiscrete schedule")
        self.fn, self.schedule, self.prediction = fn, schedule, prediction
        self.time_input, self.data_shape, self.net_dtype, self.name = time_input, tuple(data_shape), net_dtype, name
        self.nfe = 0

    # -- the one place the network is called ------------------------------------------------
    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """Raw network output at continuous time t (scalar or shape (B,)); counts one NFE."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        t_in = self.schedule.to_discrete(t) if self.time_input == "discrete" else t
        self.nfe += 1
        out = self.fn(x.to(self.net_dtype), t_in.to(self.net_dtype))
        return out.to(x.dtype)

    def _coefs(self, x, t):
        shape = (-1,) + (1,) * (x.dim() - 1)
        t = torch.as_tensor(t, dtype=torch.float64)
        a = self.schedule.alpha(t).to(x.dtype)
        s = self.schedule.sigma(t).to(x.dtype)
        return (a.reshape(shape) if a.dim() else a), (s.reshape(shape) if s.dim() else s)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """Noise prediction eps(x_t, t)."""
        out = self(x, t)
        if self.prediction == "eps":
            return out
        a, s = self._coefs(x, t)
        if self.prediction == "x0":
            return (x - a * out) / s
        if self.prediction == "v":
            return s * x + a * out
        return -s * out  # score

    def x0(self, x: torch.Tensor, t) -> torch.Tensor:
        """Data prediction x0(x_t, t)."""
        out = self(x, t)
        if self.prediction == "x0":
            return out
        a, s = self._coefs(x, t)
        if self.prediction == "eps":
            return (x - s * out) / a
        if self.prediction == "v":
            return a * x - s * out
        return (x + s**2 * out) / a  # score

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """Score grad_x log p_t(x) = -eps / sigma."""
        _, s = self._coefs(x, t)
        return -self.eps(x, t) / s

    @contextmanager
    def counting(self) -> Iterator["NFECount"]:
        """Count the evaluations made inside the block: ``with model.counting() as c: ...; c.n``."""
        count = NFECount(self, self.nfe)
        try:
            yield count
        finally:
            count.close()

    def __repr__(self):
        return f"DiffusionModel({self.name}, prediction={self.prediction}, schedule={self.schedule!r})"


class NFECount:
    """Number of network evaluations made since the count was opened."""

    def __init__(self, model: DiffusionModel, start: int):
        self._model, self._start, self._end = model, start, None

    def close(self):
        self._end = self._model.nfe

    @property
    def n(self) -> int:
        return (self._end if self._end is not None else self._model.nfe) - self._start

"""High-accuracy references for any model: the probability-flow ODE solved by a fixed-step solver (``ReferenceSolver``,
the reference of solver error) or by adaptive dopri5 (torchdiffeq; trajectories for ``bench tune``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from samplers.model import DiffusionModel

REFERENCE_RTOL = 1e-5


def reference_ode_solution(model: DiffusionModel, x_T: torch.Tensor, t_end: float, rtol: float = REFERENCE_RTOL,
                           t_start: float | None = None) -> torch.Tensor:
    """x at t_end from x_T at t_start (default T): dx/dt = f x + g^2 eps / (2 sigma), float64 state, atol = rtol.

    Computes on x_T's device, which must be the model's.
    """
    # A separate boundary around the same network: the benchmarked model's NFE count stays untouched.
    oracle = DiffusionModel(model.fn, model.schedule, model.prediction, time_input=model.time_input,
                            data_shape=model.data_shape, net_dtype=model.net_dtype, name=f"{model.name}-reference",
                            device=model.device)
    sch = oracle.schedule
    t_start = sch.T if t_start is None else t_start

    def velocity(t, x):
        t = t.cpu()  # schedules live on the CPU (VPDiscrete's tables); x stays on the model's device
        return sch.ode_velocity(x, t, oracle.eps(x, t))

    from torchdiffeq import odeint  # imports scipy (0.4 s): only when a reference is solved

    ts = torch.tensor([t_start, t_end], dtype=torch.float64, device=x_T.device)
    # step_t: land on t_end exactly; an overshooting step would evaluate t < 0, where sigma is NaN.
    return odeint(velocity, x_T.to(torch.float64), ts, method="dopri5", rtol=rtol, atol=rtol,
                  options={"step_t": ts[1:]})[-1]


# The reference of every checkpoint without an exact solution (chosen and measured by benchmarks/reference_accuracy.py:
# on `digits` its error is 4.5e-4 per sample, 1.9 % of the default table's smallest solver error, at 0.4x the NFE of
# the former 500-step Heun solve).
REFERENCE_SOLVER = "dpm_solver++_3m"
REFERENCE_GRID = "karras"
REFERENCE_NFE = 400
TIGHT_FACTOR = 2  # the tighter solve that estimates the reference's own error: TIGHT_FACTOR x the NFE


@dataclass(frozen=True)
class ReferenceSolver:
    """The PF-ODE solved with a fixed-step solver of the sampler registry: each sample's solution depends on its x_T
    alone (fixed steps), whatever the batch it is solved in; ``tight`` solves with TIGHT_FACTOR x the NFE.

    ``model`` is a boundary of its own around the network (the benchmarked model's NFE count stays untouched).
    """

    model: DiffusionModel
    method: str = REFERENCE_SOLVER
    grid: str = REFERENCE_GRID
    nfe: int = REFERENCE_NFE

    @classmethod
    def around(cls, model: DiffusionModel, nfe: int | None = None) -> "ReferenceSolver":
        """The reference solver (REFERENCE_NFE unless ``nfe``) on a fresh boundary around ``model``'s network."""
        return cls(model.replace(name=f"{model.name}-reference"), nfe=nfe or REFERENCE_NFE)

    @property
    def name(self) -> str:
        """What determines its solutions (part of the reference cache's key)."""
        return f"{self.method},grid={self.grid},nfe={self.nfe}"

    def solve(self, x_T: torch.Tensor, t_end: float, nfe: int | None = None) -> torch.Tensor:
        """x at t_end from x_T at T (float64 state) in ``nfe`` (default ``self.nfe``) evaluations."""
        import samplers  # the registry imports every sampler module: only when a reference is solved

        sampler = samplers.get(self.method, grid=self.grid, t_end=t_end)
        return sampler.sample(self.model, x_T.to(torch.float64), nfe or self.nfe)

    def __call__(self, x_T: torch.Tensor, t_end: float) -> torch.Tensor:
        return self.solve(x_T, t_end)

    @property
    def tight_nfe(self) -> int:
        return TIGHT_FACTOR * self.nfe

    def tight(self, x_T: torch.Tensor, t_end: float) -> torch.Tensor:
        """The same solve with TIGHT_FACTOR x the NFE: its distance to ``solve`` estimates the reference's error."""
        return self.solve(x_T, t_end, self.tight_nfe)

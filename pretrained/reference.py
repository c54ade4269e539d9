"""A high-accuracy reference for any model: the probability-flow ODE solved by adaptive dopri5 (torchdiffeq)."""
from __future__ import annotations

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

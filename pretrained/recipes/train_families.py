"""Train digits-edm and digits-flow: the digits UNet in the EDM and flow-matching families, on the same split.

digits-edm (Karras et al. 2022, ``EDMLoss`` of NVlabs/edm training/loss.py): ln sigma ~ N(P_MEAN, P_STD^2), x = x0 +
sigma n, the network F(c_in x, c_noise) with EDM's preconditioning (sigma_data 0.5) trained on the effective target
(x0 - c_skip x) / c_out with unit weight, which is EDM's loss weighting (sigma^2 + sd^2) / (sigma sd)^2 on D.
digits-flow (Lipman et al. 2023, conditional OT; rectified flow): t ~ U[T_MIN, 1], x_t = (1 - t) x0 + t eps, the
network's velocity regressed on eps - x0 (SD3's convention, diffusers' FlowMatchEulerDiscreteScheduler).
Both use train_digits' loop (Adam, warm-up, clip, EMA, resumable, quick FID with patience); the quick FID samples
with DPM-Solver++(2M) on the logSNR grid, whose points are the same in lambda on every family.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..digits import EDM_FOLDER, FAMILIES, FLOW_FOLDER, family_model
from .train_digits import T_MIN, add_training_args, train

P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal sigma sampling (training/loss.py)
EVAL_SAMPLER = "dpm_solver++_2m"
OUTS = {"digits-edm": EDM_FOLDER, "digits-flow": FLOW_FOLDER}


def edm_loss(net, sch, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """EDM's loss: mean |F(c_in x, c_noise) - (x0 - c_skip x) / c_out|^2 with ln sigma ~ N(P_MEAN, P_STD^2)."""
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(len(x0), generator=g, dtype=torch.float64))
    n = torch.randn(x0.shape, generator=g)
    c_skip, c_out, c_in, c_noise = (c.float()[:, None, None, None] for c in sch.precondition(sigma))
    x = x0 + sigma.float()[:, None, None, None] * n
    target = (x0 - c_skip * x) / c_out
    return ((net(c_in * x, c_noise.flatten()) - target) ** 2).mean()


def flow_loss(net, sch, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Conditional flow matching: mean |v_theta(x_t, t) - (eps - x0)|^2, t ~ U[T_MIN, 1]."""
    t = T_MIN + (1 - T_MIN) * torch.rand(len(x0), generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g)
    tt = t.float()[:, None, None, None]
    x_t = (1 - tt) * x0 + tt * eps
    return ((net(x_t, t.float()) - (eps - x0)) ** 2).mean()


LOSSES = {"digits-edm": (edm_loss, "EDM loss: ln sigma ~ N(-1.2, 1.2^2), target (x0 - c_skip x) / c_out, unit weight "
                                   "(= weight (sigma^2 + sd^2) / (sigma sd)^2 on D), sigma_data 0.5"),
          "digits-flow": (flow_loss, "conditional OT flow matching: t ~ U[1e-3, 1], x_t = (1 - t) x0 + t eps, "
                                     "target eps - x0")}


def main(argv=None, name: str | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = add_training_args(argparse.ArgumentParser(description=__doc__), workdir=f"train_{name}", out=OUTS[name])
    a = p.parse_args(argv)
    _, schedule, prediction = FAMILIES[name]
    sch = schedule()
    loss, what = LOSSES[name]
    train(a, name=name, loss=loss, schedule=sch, model_fn=family_model(name), eval_sampler=EVAL_SAMPLER, manifest={
        "schedule": sch.config(), "prediction": prediction, "time_input": "continuous",
        "t_range": [sch.t_end, sch.T], "loss": what})


def main_edm(argv=None):
    main(argv, "digits-edm")


def main_flow(argv=None):
    main(argv, "digits-flow")

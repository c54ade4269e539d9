"""The analytic checkpoints gmm-2d and gmm-16d, in every family: exact scores, densities and ODE oracle (see gmm.py).

``gmm-16d`` is the mixture under VP (an eps network); ``gmm-16d-edm`` the same data under EDM's schedule behind EDM's
preconditioned denoiser; ``gmm-16d-flow`` under flow matching behind a velocity network. One PF-ODE in three
parameterisations: the same trajectory in lambda up to the scale alpha.
"""
from __future__ import annotations

import torch

from samplers.schedules import EDM, FlowMatching, VPLinear

from .gmm import GaussianMixture, random_mixture, ring_2d
from .registry import Checkpoint, register_checkpoint, register_head


LIKELIHOOD_SEED = 12345  # the held-out points likelihoods are estimated on: exact samples, the same for every cell


def _checkpoint(name: str, mix: GaussianMixture, description: str) -> Checkpoint:
    return Checkpoint(name=name, model=mix.as_model(name), description=description,
                      reference_solution=mix.ode_solution, real_data=mix.sample, log_prob=mix.log_prob,
                      moments=mix.moments(), reference_exact=True, extras={"mixture": mix}, device=mix.device,
                      likelihood_data=lambda n: mix.sample(n, LIKELIHOOD_SEED))


@register_checkpoint("gmm-2d", data_shape=(2,), schedule="vp_linear", prediction="eps",
                     description="analytic 8-mode ring in 2-d (exact score, exact ODE oracle)")
def gmm_2d(device: torch.device) -> Checkpoint:
    return _checkpoint("gmm-2d", ring_2d(VPLinear(), device=device), "analytic 8-mode ring in 2-d")


@register_checkpoint("gmm-16d", data_shape=(16,), schedule="vp_linear", prediction="eps",
                     description="analytic 6-mode diagonal mixture in 16-d (exact score, exact ODE oracle)")
def gmm_16d(device: torch.device) -> Checkpoint:
    return _checkpoint("gmm-16d", random_mixture(VPLinear(), device=device), "analytic 6-mode mixture in 16-d")


FAMILY_SCHEDULES = {"edm": (EDM, "edm", "EDM / VE, sigma 0.002..80, EDM's preconditioned denoiser"),
                    "flow": (FlowMatching, "velocity", "flow matching (alpha = 1 - t, sigma = t), velocity")}


def _register_family(base: str, make, family: str, data_shape: tuple, what: str) -> None:
    schedule_cls, prediction, how = FAMILY_SCHEDULES[family]
    name = f"{base}-{family}"

    @register_checkpoint(name, data_shape=data_shape, schedule=schedule_cls.name, prediction=prediction,
                         description=f"{what} under {how} (exact score, exact ODE oracle)")
    def _load(device: torch.device) -> Checkpoint:
        return _checkpoint(name, make(schedule_cls(), device=device), f"{what}, {family}")


for _family in FAMILY_SCHEDULES:
    _register_family("gmm-2d", ring_2d, _family, (2,), "analytic 8-mode ring in 2-d")
    _register_family("gmm-16d", random_mixture, _family, (16,), "analytic 6-mode mixture in 16-d")


# GENIE's derivative head with the exact d eps / d gamma (autograd JVP of the exact eps), as the genie sampler reads it.
MIXTURES = {"gmm-2d": ring_2d, "gmm-16d": random_mixture}


def _exact_genie_head(ck: Checkpoint):
    return ck.extras["mixture"].as_model(f"{ck.name}/genie", derivative=True)


for _name in MIXTURES:
    register_head(_name, "genie", _exact_genie_head)

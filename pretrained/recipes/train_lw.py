"""Train digits-lw: the digits UNet with likelihood weighting lambda(t) = g(t)^2 and importance-sampled t (ScoreFlow).

Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion models". In eps form the
weighted loss is (g^2 / sigma^2) |eps - eps_theta(x_t, t)|^2 / 2. On a VP schedule g^2 / sigma^2 = d gamma / dt with
gamma = log(sigma^2 / alpha^2) = -2 lambda, so the density p(t) = (g^2 / sigma^2) / Z on [T_MIN, 1],
Z = gamma(1) - gamma(T_MIN), has the CDF (gamma(t) - gamma(T_MIN)) / Z: t ~ p is lambda uniform between lambda(1) and
lambda(T_MIN), mapped back by the schedule's inverse_lambda, and every sample's weight is the constant Z. The
optimiser sees the per-pixel mean of |eps - eps_theta|^2 with t ~ p: the weighted loss times 2 / (Z D), so gradient
clipping means what it means in train_digits. Training data are uniformly dequantised (as ScoreFlow trains): each of
the 17 levels spreads over its bin, x + (u - 1/2) * 2/16, u ~ U[0, 1).

Default: fine-tuned from the shipped digits EMA weights (net and EMA start there; Adam state new), with the
train_digits loop, options and quick FID. The shipped step is the one with the lowest holdout bound: the weighted
loss over t in [T_MIN, 1] on the 300 dequantised "holdout" images, in bits/dim (fixed t, u and eps), which is the
diffusion term of the variational bound on -log p (VDM's L_infinity); the prior term and the part below T_MIN, which
the network does not change, are left out.
"""
from __future__ import annotations

import argparse
import math

import torch

from samplers.schedules import VPLinear

from ..data import MAX_LEVEL, digits_split
from ..digits import load_unet
from ..weights import WEIGHTS_ROOT
from .train_digits import T_MIN, add_training_args, denoising_loss, train

OUT = WEIGHTS_ROOT / "digits-lw"
BIN = 2.0 / MAX_LEVEL  # width of one of the 17 levels in [-1, 1]
HOLDOUT_SEED = 4321
HOLDOUT_COLUMN = "holdout_bpd"
HOLDOUT_BATCH = 600
INITS = ("digits", "scratch")


def lw_normaliser(sch, t_min: float = T_MIN) -> float:
    """Z = integral of g^2 / sigma^2 over [t_min, T] = gamma(T) - gamma(t_min), gamma = -2 lambda."""
    return float(2.0 * (sch.lambda_(t_min) - sch.lambda_(sch.T)))


def importance_t(sch, u: torch.Tensor, t_min: float = T_MIN) -> torch.Tensor:
    """Inverse CDF of p(t) proportional to g(t)^2 / sigma_t^2 on [t_min, T]: lambda uniform, then t(lambda)."""
    lam_hi, lam_lo = sch.lambda_(t_min), sch.lambda_(sch.T)
    return sch.inverse_lambda(lam_hi - u.double() * (lam_hi - lam_lo)).clamp(t_min, sch.T)


def dequantise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform dequantisation: each level spread over its bin, x + (u - 1/2) * BIN."""
    return x + (torch.rand(x.shape, generator=g) - 0.5) * BIN


def lw_loss(net, sch, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-pixel mean |eps_theta - eps|^2, x0 dequantised, t ~ p(t): (2 / (Z D)) x the likelihood-weighted loss."""
    x0 = dequantise(x0, g)
    t = importance_t(sch, torch.rand(len(x0), generator=g, dtype=torch.float64))
    eps = torch.randn(x0.shape, generator=g)
    return denoising_loss(net, sch, x0, t, eps)


def holdout_bound(sch, n_t: int, seed: int = HOLDOUT_SEED):
    """net -> the weighted loss on the dequantised holdout split in bits/dim, n_t stratified times per image.

    Z / 2 E_p |eps - eps_theta|^2 / (D ln 2): the diffusion term of the bound on -log p over [T_MIN, 1]; u, t and eps
    fixed by ``seed``, so the values along a training curve differ by the network only.
    """
    g = torch.Generator().manual_seed(seed)
    x = dequantise(digits_split("holdout")[0].repeat(n_t, 1, 1, 1), g)
    n = len(x) // n_t
    u = (torch.arange(n_t, dtype=torch.float64).repeat_interleave(n) + torch.rand(len(x), generator=g,
                                                                                  dtype=torch.float64)) / n_t
    t, eps = importance_t(sch, u), torch.randn(x.shape, generator=g)
    scale = lw_normaliser(sch) / (2.0 * math.log(2.0))

    def evaluate(net) -> dict:
        with torch.no_grad():
            sq = sum(denoising_loss(net, sch, x[i:i + HOLDOUT_BATCH], t[i:i + HOLDOUT_BATCH],
                                    eps[i:i + HOLDOUT_BATCH]).item() * len(x[i:i + HOLDOUT_BATCH])
                     for i in range(0, len(x), HOLDOUT_BATCH))
        return {HOLDOUT_COLUMN: scale * sq / len(x)}

    return evaluate


def main(argv=None):
    p = add_training_args(argparse.ArgumentParser(description=__doc__), workdir="train_lw", out=OUT)
    p.add_argument("--init", choices=INITS, default="digits",
                   help="start from the shipped digits EMA weights (checked against their pin) or from scratch")
    p.add_argument("--holdout-t", type=int, default=8, help="stratified times per holdout image of the bound")
    p.set_defaults(max_steps=6000, eval_every=500, patience=4)
    a = p.parse_args(argv)

    sch = VPLinear()
    z = lw_normaliser(sch)
    if a.init == "digits":
        net, init_manifest = load_unet()
        init, init_entry = net.state_dict(), {"from": "digits", "weights_sha256": init_manifest["weights_sha256"]}
    else:
        init, init_entry = None, {"from": "scratch"}
    deq = f"uniform: x + (u - 1/2) * {BIN} (one of the {int(MAX_LEVEL) + 1} level bins), u ~ U[0, 1)"
    manifest = train(a, name="digits-lw", loss=lw_loss, init=init, evaluate=holdout_bound(sch, a.holdout_t),
                     select=HOLDOUT_COLUMN, eval_at_start=a.init != "scratch", manifest={
        "data": f"sklearn load_digits, (1, 8, 8) in [-1, 1], split 'train', dequantised ({deq})",
        "init": init_entry,
        "weighting": {"lambda": "g(t)^2 (likelihood weighting; Song, Durkan, Murray & Ermon 2021)",
                      "loss": "(g^2 / sigma^2) |eps - eps_theta|^2 / 2, t in [t_min, 1]",
                      "optimised": "per-pixel mean |eps - eps_theta|^2 with t ~ p: the loss times 2 / (Z D)",
                      "Z": z, "bits_per_dim_per_unit_train_loss": z / (2 * math.log(2))},
        "importance_sampling": {"density": "p(t) = (g(t)^2 / sigma_t^2) / Z on [t_min, 1], "
                                           "Z = gamma(1) - gamma(t_min), gamma = log(sigma^2 / alpha^2) = -2 lambda",
                                "sampler": "t = inverse_lambda(lambda(t_min) - u (lambda(t_min) - lambda(1))), "
                                           "u ~ U[0, 1) (exact inverse CDF)"},
        "dequantisation": deq,
        "likelihood_proxy": {"column": HOLDOUT_COLUMN, "protocol": (
            f"EMA weights; Z/2 E_p |eps - eps_theta|^2 / (D ln 2) on the 300 dequantised 'holdout' images, "
            f"{a.holdout_t} stratified t per image (seed {HOLDOUT_SEED}): the diffusion term of the bound on -log p "
            f"of the dequantised data over [t_min, 1] (prior term and t < t_min left out); selects the shipped step; "
            f"curve in 'eval_curves'")},
    }, training={"recipe": "python -m pretrained.train lw", "init": a.init, "patience": a.patience,
                 "eval_every": a.eval_every, "max_steps": a.max_steps})
    return manifest


if __name__ == "__main__":
    main()

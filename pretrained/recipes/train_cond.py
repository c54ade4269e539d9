"""Train digits-cond: the digits UNet with a class embedding, for classifier-free guidance (Ho & Salimans 2022).

Eps-prediction loss of train_digits with the image's label as input; each label is replaced by the null class
(``NUM_CLASSES``) with probability ``--p-uncond``, so one network learns eps(x_t, t, y) and eps(x_t, t).
Default: fine-tuned from the shipped digits EMA weights: the null class's embedding starts at zero (the unconditional
branch starts as the digits model), the ten class embeddings at the UNet's own random init (N(0, 1): a zero init
grew too slowly, norm 0.3 after 600 steps against the time embedding's 8, accuracy still at chance);
``--init scratch`` starts from a random init.

The training curve has the train_digits quick FID of the null-label (unconditional) model in "fid" and, in
"fid_cond" / "acc_cond", the quick FID and the digits-classifier accuracy of the conditional model (guidance scale 1)
with class-balanced labels (``samplers.noise.sample_labels``, seed EVAL_SEED), FID against the same (unbalanced) 300
"reference" images. The shipped step is the one with the lowest "fid_cond" (the shipped weights: step 2000, whose
null-label quick FID, 43, is worse than at steps 2800-3200, 30: the two branches peak at different steps).
"""
from __future__ import annotations

import argparse
import functools

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

import samplers
from samplers.model import DiffusionModel
from samplers.noise import sample_labels
from samplers.schedules import VPLinear

from ..data import digits_split
from ..digits import DATA_SHAPE, load_feature_net, load_unet
from ..nets import UNet
from ..weights import WEIGHTS_ROOT, read_manifest
from .train_digits import EVAL_SEED, T_MIN, add_training_args, denoising_loss, quantize, train

OUT = WEIGHTS_ROOT / "digits-cond"
NUM_CLASSES = 10
P_UNCOND = 0.1  # Ho & Salimans 2022 train with 0.1 or 0.2
INITS = ("digits", "scratch", "digits-cond")


def cond_loss(net: UNet, sch, x0: torch.Tensor, g: torch.Generator, *, y: torch.Tensor,
              p_uncond: float = P_UNCOND) -> torch.Tensor:
    """Ho et al.'s simple loss with labels, each dropped to the null class with probability p_uncond."""
    y = torch.where(torch.rand(len(y), generator=g) < p_uncond, NUM_CLASSES, y)
    t = T_MIN + (1 - T_MIN) * torch.rand(len(x0), generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g)
    return denoising_loss(net, sch, x0, t, eps, y)


def digits_init(seed: int) -> dict:
    """The shipped digits weights in the conditional UNet; class embeddings random (seed), the null class's zero."""
    torch.manual_seed(seed)
    state = UNet(num_classes=NUM_CLASSES).state_dict()
    state.update(load_unet()[0].state_dict())
    state["class_emb.weight"][NUM_CLASSES] = 0.0  # eps(x, t, null) = digits eps(x, t) at the start
    return state


def worse_branch(ev: dict) -> float:
    """The selection score of ``--select both``: the worse of the unconditional ("fid") and conditional quick FIDs,
    so neither branch of classifier-free guidance is shipped weak."""
    return max(ev["fid"], ev["fid_cond"])


def conditional_eval(n: int, nfe: int):
    """net -> {"fid_cond", "acc_cond"}: DDIM ``nfe`` steps of eps(x, t, y), n samples, balanced labels."""
    feat_net, _ = load_feature_net()
    with torch.no_grad():
        ref_stats = fid_features_to_statistics(feat_net.features(digits_split("reference")[0]).double())
    x_T = samplers.initial_noise(EVAL_SEED, range(n), DATA_SHAPE)
    y = sample_labels(EVAL_SEED, range(n), NUM_CLASSES)

    def evaluate(net: UNet) -> dict:
        net.eval()

        def fn(x, t):
            with torch.no_grad():
                return net(x, t, y)

        model = DiffusionModel(fn, VPLinear(), "eps", data_shape=DATA_SHAPE, net_dtype=torch.float32,
                               name="digits-cond")
        x0 = quantize(samplers.get("ddim").sample(model, x_T, nfe).float())
        with torch.no_grad():
            f = feat_net.features(x0).double()
            acc = (feat_net(x0).argmax(1) == y).double().mean().item()
        fid = fid_statistics_to_metric(fid_features_to_statistics(f), ref_stats, verbose=False)
        return {"fid_cond": fid["frechet_inception_distance"], "acc_cond": acc}

    return evaluate


def main(argv=None):
    p = add_training_args(argparse.ArgumentParser(description=__doc__), workdir="train_cond", out=OUT)
    p.add_argument("--init", choices=INITS, default="digits")
    p.add_argument("--p-uncond", type=float, default=P_UNCOND)
    p.add_argument("--select", choices=("cond", "both"), default="cond",
                   help="the shipped step: lowest conditional quick FID, or lowest worse-of-both-branches")
    p.set_defaults(max_steps=4000, eval_every=400, patience=4)
    a = p.parse_args(argv)
    if not 0.0 < a.p_uncond < 1.0:
        raise SystemExit(f"--p-uncond must be in (0, 1), got {a.p_uncond}")
    init = {"digits": lambda: digits_init(a.seed), "scratch": lambda: None,
            "digits-cond": lambda: load_unet(OUT, name="digits-cond")[0].state_dict()}[a.init]()
    train(a, name="digits-cond", loss=functools.partial(cond_loss, p_uncond=a.p_uncond), init=init,
          net_factory=functools.partial(UNet, num_classes=NUM_CLASSES), labelled=True,
          evaluate=conditional_eval(a.eval_samples, a.eval_nfe),
          select=worse_branch if a.select == "both" else "fid_cond",
          eval_at_start=a.init != "scratch", select_start=a.init == "digits-cond",
          manifest={"conditioning": {"num_classes": NUM_CLASSES, "null_label": NUM_CLASSES,
                                     "p_uncond": a.p_uncond, "labels": "load_digits targets 0..9"}},
          training={"init": a.init, "p_uncond": a.p_uncond, "select": a.select,
                    **({"continued_from": read_manifest(OUT)["weights_sha256"],
                        "continued_from_training": read_manifest(OUT)["training"]} if a.init == "digits-cond" else {}),
                    "recipe": f"python -m pretrained.train cond --init {a.init} --p-uncond {a.p_uncond} "
                              f"--select {a.select} --lr {a.lr}"})


if __name__ == "__main__":
    main()

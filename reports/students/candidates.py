"""A retrained network against the shipped one, on the benchmark's held-out seeds: paired FID, before shipping.

PYTHONPATH=. python reports/students/candidates.py {cd,genie,cond} FOLDER

FOLDER holds the candidate weights (its manifest trusted: it is not pinned yet). Both networks sample the
benchmark's x_T and noise of seeds 0-4 (500 samples, ``samplers.initial_noise`` / ``SampleNoise`` / the condition's
labels, as the runner draws them), FID with the checkpoint's own protocol (``bench.metrics.fid.fid_kid``); the
training curves' quick FID used x_T seed 1234 and selected the shipped step on it, so it is not held out. Prints per
cell the shipped and candidate FID (mean over seeds) and their paired difference with its 95 % t-interval.
"""
from __future__ import annotations

import sys

import numpy as np
import scipy.stats
import torch

import pretrained
import samplers
from bench.metrics.fid import fid_kid
from pretrained.digits import load_unet
from pretrained.distill import v_model
from pretrained.genie import as_model, load_head

SEEDS, N = range(5), 500
CELLS = {"cd": [("cd", 1, None), ("cd", 2, None), ("cd", 4, None), ("cd", 8, None)],
         "genie": [("genie", 10, None), ("genie", 20, None), ("genie,afs=True", 10, None)],
         "cond": [("ddim", 20, 0.0), ("ddim", 20, 1.0)]}


def models(kind: str, folder: str):
    """(checkpoint, shipped model, candidate model)."""
    if kind == "cd":
        ck = pretrained.load("digits")
        net, _ = load_unet(folder, name=None, trust_manifest=True)
        return ck, ck.model, ck.model.replace(heads={**ck.model.heads, "cd": v_model(net, "digits/cd-candidate")})
    if kind == "genie":
        ck = pretrained.load("digits")
        head, _ = load_head(folder, trust_manifest=True)
        return ck, ck.model, ck.model.replace(heads={**ck.model.heads,
                                                     "genie": as_model(ck.extras["net"], head, "digits/genie-cand")})
    ck = pretrained.load("digits-cond")
    shipped = ck.model
    net, _ = load_unet(folder, name=None, trust_manifest=True)
    return ck, shipped, shipped.replace(fn=lambda x, t, y=None: net(x, t, y) if y is not None else net(x, t))


def sample(ck, model, spec: str, nfe: int, guidance, seed: int) -> torch.Tensor:
    name, *opts = spec.split(",")
    sampler = samplers.get(name, **dict(o.split("=") for o in opts) | ({"afs": True} if "afs=True" in opts else {}))
    idx = range(N)
    x_T = samplers.initial_noise(seed, idx, ck.data_shape)
    noise = samplers.SampleNoise(seed, idx, ck.data_shape) if sampler.stochastic else None
    if guidance is not None:
        model = model.guided(model.condition.draw(seed, idx), guidance)
    with torch.no_grad():
        return sampler.sample(model, x_T, nfe, noise=noise)


def main(kind: str, folder: str) -> None:
    torch.set_num_threads(1)
    ck, old, new = models(kind, folder)
    print(f"| {kind} cell | shipped FID | candidate FID | candidate - shipped, 95 % CI over seeds {list(SEEDS)} |")
    print("|---|---|---|---|")
    for spec, nfe, guidance in CELLS[kind]:
        a = np.array([fid_kid(sample(ck, old, spec, nfe, guidance, s).float(), ck)["fid"] for s in SEEDS])
        b = np.array([fid_kid(sample(ck, new, spec, nfe, guidance, s).float(), ck)["fid"] for s in SEEDS])
        d = b - a
        h = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        g = "" if guidance is None else f" guidance {guidance:g}"
        print(f"| {spec} NFE {nfe}{g} | {a.mean():.2f} | {b.mean():.2f} | {d.mean():+.2f} "
              f"[{d.mean() - h:+.2f}, {d.mean() + h:+.2f}] |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

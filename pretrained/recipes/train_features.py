"""Train the digits FID feature network: a 3-conv CNN classifier on the "train" split (cross-entropy, Adam)."""
from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from ..data import digits_split, split_sha256
from ..nets import DigitsClassifier
from ..weights import WEIGHTS_ROOT, save_weights
from .pins_note import pin_note

OUT = WEIGHTS_ROOT / "digits_features"
FEATURE_LAYER = "fc_pre_relu"


def train_classifier(epochs: int = 40, batch: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple:
    """The trained classifier (eval mode) and its accuracy on the "holdout" split."""
    torch.manual_seed(seed)
    x, y = digits_split("train")
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xh, yh = digits_split("holdout")
    with torch.no_grad():
        acc = (net(xh).argmax(1) == yh).float().mean().item()
    return net, acc, loss.item()


def kid_gamma(net: DigitsClassifier) -> float:
    """1 / E|f|^2 over the "train" split: KID's polynomial-kernel scale for features of norm ~90 (Inception's 1/d
    assumes O(1) features; with 1/d the cubic kernel's diagonal swamps the estimate)."""
    with torch.no_grad():
        return float(1.0 / net.features(digits_split("train")[0]).double().pow(2).sum(1).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    net, acc, loss = train_classifier(a.epochs, seed=a.seed)
    manifest = save_weights(a.out, net.state_dict(), {
        "name": "digits_features", "architecture": "pretrained.nets.DigitsClassifier",
        "feature_layer": FEATURE_LAYER, "feature_dim": DigitsClassifier.FEATURE_DIM,
        "input": "float32 (N, 1, 8, 8) in [-1, 1]", "train_split": "train", "split_sha256": split_sha256(),
        "epochs": a.epochs, "batch": 64, "lr": 1e-3, "seed": a.seed, "final_train_loss": loss,
        "holdout_accuracy": acc, "kid_gamma": kid_gamma(net), "train_seconds": round(time.time() - t0, 1),
        "recipe": "python -m pretrained.train features"})
    print(f"holdout accuracy {acc:.4f}; wrote {a.out} (sha256 {manifest['weights_sha256'][:12]})")
    print(pin_note("digits_features", a.out, manifest["weights_sha256"]))


if __name__ == "__main__":
    main()

"""Metrics of conditional (guided) samples: classifier accuracy against the requested labels, and the share of
samples outside the data range (the instability of high-order solvers at large guidance, Lu et al. 2022b).

Streamed and shardable like ``accumulate``: a rank keeps counts, ranks merge by adding them.
- ``accuracy``: the share of samples the checkpoint's classifier (``extras["classifier"]``, logits) assigns to the
  label they were drawn for, the images quantised to 8 bits as the FID pipeline sees them; classifier in float64,
  so the count does not depend on the batch size.
- ``out_of_range``: the share of samples with at least one coordinate more than ``extras["range_tolerance"]``
  outside ``extras["data_range"]`` in the sampler's output, before any clipping or quantisation. Digits: outside
  [-1, 1] by more than one level of the data (2/16): by any amount, nearly every sample of every sampler is out
  (background pixels sit at exactly -1 and land a little beyond it), so the share would saturate at 1.
"""
from __future__ import annotations

import copy

import torch

from .features import to_uint8


class GuidedAccumulator:
    """Counts of one rank's share of one cell: samples, correctly classified, outside the data range.

    Args:
        checkpoint: a ``pretrained.Checkpoint``; its ``extras`` give "classifier" and "data_range" (either may be
            absent: that metric is then not computed).
        labels: sample indices -> the labels those samples were drawn for (None: unconditional cell, no accuracy).
        device: where the batches live.
    """

    def __init__(self, checkpoint, labels=None, device="cpu"):
        net = checkpoint.extras.get("classifier")
        self.classifier = None if net is None or labels is None else copy.deepcopy(net).to(device).double().eval()
        self.labels, self.range = labels, checkpoint.extras.get("data_range")
        self.tolerance = checkpoint.extras.get("range_tolerance", 0.0)
        self.n = self.correct = self.outside = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, indices) -> None:
        """Fold in a batch ``x`` (the sampler's output, unclipped) of these global sample indices."""
        self.n += len(x)
        if self.range is not None:
            lo, hi = self.range[0] - self.tolerance, self.range[1] + self.tolerance
            flat = x.detach().flatten(1)
            self.outside += int(((flat < lo) | (flat > hi)).any(1).sum())
        if self.classifier is not None:
            logits = self.classifier(to_uint8(x).double() / 127.5 - 1.0)
            y = self.labels(list(indices)).to(logits.device)
            self.correct += int((logits.argmax(1) == y).sum())

    def state(self) -> dict:
        return {"n": self.n, "correct": None if self.classifier is None else self.correct,
                "outside": None if self.range is None else self.outside}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        add = lambda k: None if states[0][k] is None else sum(s[k] for s in states)
        return {"n": sum(s["n"] for s in states), "correct": add("correct"), "outside": add("outside")}


def guided_metrics(merged: dict) -> dict:
    """{"accuracy", "out_of_range"} (those computed) from a merged state."""
    n, out = merged["n"], {}
    if n and merged["correct"] is not None:
        out["accuracy"] = merged["correct"] / n
    if n and merged["outside"] is not None:
        out["out_of_range"] = merged["outside"] / n
    return out

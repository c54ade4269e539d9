"""Streaming likelihood metrics: per-sample NLL estimates kept by sample index, merged across batches and ranks.

A likelihood estimator (``samplers.likelihood``) returns per-sample tensors; ``NllAccumulator`` keeps them
by sample index (8 bytes per sample and key), ``merge`` puts every rank's share in sample-index order, and
``nll_metrics`` averages over the data: its numbers do not depend on batch size or ranks beyond float64
summation order.
"""
from __future__ import annotations

import math

import torch

from samplers.likelihood import ODE_TERMS, VLB_TERMS

# The columns ``nll_metrics`` fills; a row of one estimator family leaves the other family's terms empty.
NLL_COLUMNS = {
    "nll_bpd": "mean over data of the per-sample NLL estimate, bits/dim (dequantised ODE: with the -log2(bin) offset)",
    "nll_bpd_se": "standard error of nll_bpd over data: std (ddof 1) / sqrt(n) of per-sample values that already "
                  "average their probes and dequantisation draws, so it includes their noise",
    "nll_n": "number of data samples the estimate averages",
    "ode_prior_bpd": "ODE: mean -log N(x_T; 0, s^2 I) / (D ln 2), s = prior_std (VP 1, EDM sigma_max, flow T)",
    "ode_flow_bpd": "ODE: mean -int_{t_eps}^{T} div v dt / (D ln 2) (the change of variables)",
    "ode_truncation_bpd": "ODE: mean of the truncation term at t_eps / (D ln 2) (0 for truncation='none')",
    "vlb_recon_bpd": "VLB: mean reconstruction term -log p(x | z_{t_eps}) / (D ln 2)",
    "vlb_prior_bpd": "VLB: mean KL(q(z_T | x) || N(0, s^2 I)) / (D ln 2), s the schedule's prior_std",
    "vlb_diffusion_bpd": "VLB: mean diffusion term / (D ln 2)",
}
PER_SAMPLE_KEYS = ("nll_nats", "nll_bpd") + ODE_TERMS + VLB_TERMS


class NllAccumulator:
    """Per-sample likelihood estimates of one rank's share of one cell, by sample index."""

    def __init__(self):
        self.idx: list[torch.Tensor] = []
        self.values: dict[str, list[torch.Tensor]] = {}

    def update(self, out: dict, indices) -> None:
        """Fold in an estimator's output for the samples ``indices`` (every tensor of shape (len(indices),))."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        keys = sorted(k for k in out if k in PER_SAMPLE_KEYS)
        if "nll_bpd" not in keys or (self.values and keys != sorted(self.values)):
            raise ValueError(f"estimator output has keys {sorted(out)}; expected 'nll_bpd' and the same keys in every "
                             f"batch, among {list(PER_SAMPLE_KEYS)}")
        for k in keys:
            v = out[k].detach()
            if v.shape != idx.shape:
                raise ValueError(f"estimator output {k!r} has shape {tuple(v.shape)}, expected ({len(idx)},)")
            self.values.setdefault(k, []).append(v.to(torch.float64))
        self.idx.append(idx)

    def state(self) -> dict:
        """A CPU-only summary to gather across ranks: {"idx": (n,), "values": {key: (n,) float64}}."""
        idx = torch.cat(self.idx) if self.idx else torch.zeros(0, dtype=torch.long)
        return {"idx": idx, "values": {k: torch.cat(v).cpu() for k, v in self.values.items()}}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """One state for the cell, in sample-index order; ValueError if ranks overlap or disagree on keys."""
        states = [s for s in states if len(s["idx"])]
        if not states:
            return {"idx": torch.zeros(0, dtype=torch.long), "values": {}}
        keys = sorted(states[0]["values"])
        if any(sorted(s["values"]) != keys for s in states):
            raise ValueError("likelihood states disagree on their keys: were they made by one estimator?")
        idx = torch.cat([s["idx"] for s in states])
        order = torch.argsort(idx)
        idx = idx[order]
        if len(idx) > 1 and bool((idx[1:] == idx[:-1]).any()):
            raise ValueError("a sample index appears in more than one batch or rank")
        return {"idx": idx, "values": {k: torch.cat([s["values"][k] for s in states])[order] for k in keys}}


def nll_metrics(merged: dict) -> dict:
    """The NLL_COLUMNS present in a merged state: means over data, the standard error of nll_bpd, the count.

    Non-finite per-sample values make the means NaN (the harness marks such a cell diverged).
    """
    values = merged["values"]
    n = len(merged["idx"])
    if not n:
        return {}
    bpd = values["nll_bpd"]
    out = {"nll_bpd": float(bpd.mean()), "nll_bpd_se": float(bpd.std() / math.sqrt(n)) if n > 1 else math.nan,
           "nll_n": n}
    out.update({k: float(values[k].mean()) for k in ODE_TERMS + VLB_TERMS if k in values})
    return out


def exact_nll_bpd(log_prob, x: torch.Tensor, levels: int | None = None) -> float:
    """Mean exact -log p_0 of data x in bits/dim (with the dequantisation offset for ``levels``), where p_0 is known."""
    from samplers.likelihood import bits_per_dim

    flat = x.to(torch.float64).flatten(1)
    return float(bits_per_dim(log_prob(flat), flat.shape[1], levels).mean())

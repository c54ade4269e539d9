"""Streaming per-cell metrics: each rank folds its batches into small sums; ranks meet once, to merge them.

A cell's samples never sit whole in memory or on rank 0: a batch updates float64 moment sums, the
exact log-likelihood sum, the per-sample solver errors of the reference subset, the FID feature
statistics, the counts of guided metrics (``guided.py``), and keeps the first few samples for the report. ``state`` is what a rank sends;
``merge`` adds states up in sample-index order, so the result does not depend on batch size or ranks
beyond float64 summation order.
"""
from __future__ import annotations

import math

import torch

from .moments import frechet_distance

KEEP_SAMPLES = 16  # samples of each cell kept for the report's image grids
FLOOR_FACTOR = 10  # a solver error within this factor of the reference's own error is at the reference's floor


class CellAccumulator:
    """Metric sums of one rank's share of one cell.

    Args:
        checkpoint: a ``pretrained.Checkpoint`` (its moments, log_prob and FID extractor decide what is kept).
        device: where the batches live; sums are kept there in float64 and moved to the CPU by ``state``.
        fid: a ``FidAccumulator`` (or None where the checkpoint has no feature network).
        guided: a ``GuidedAccumulator`` (or None where the checkpoint has neither classifier nor data range).
    """

    def __init__(self, checkpoint, device, fid=None, guided=None):
        self.ck, self.device, self.fid, self.guided = checkpoint, torch.device(device), fid, guided
        self.n = 0
        self.max_abs = torch.zeros((), dtype=torch.float64, device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.sum = self.outer = None
        self.loglik = torch.zeros((), dtype=torch.float64, device=self.device)
        self.err_idx, self.err = [], []
        self.keep_idx, self.keep = [], []

    def update(self, x: torch.Tensor, indices: list[int], reference: torch.Tensor | None = None,
               ref_count: int = 0) -> None:
        """Fold a batch in; ``reference[i]`` is the reference solution of sample i for i < ref_count."""
        x64 = x.detach().to(torch.float64)
        flat = x64.flatten(1)
        self.n += len(indices)
        self.max_abs = torch.maximum(self.max_abs, flat.abs().amax() if len(flat) else self.max_abs)
        self.finite &= torch.isfinite(flat).all()
        if self.ck.moments is not None:
            s, o = flat.sum(0), flat.T @ flat
            self.sum, self.outer = (s, o) if self.sum is None else (self.sum + s, self.outer + o)
        if self.ck.log_prob is not None:
            self.loglik += self.ck.log_prob(flat).sum()
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if reference is not None:
            sel = idx < ref_count
            if sel.any():
                ref = reference[idx[sel].to(reference.device)].to(self.device, torch.float64).flatten(1)
                self.err.append((flat[sel.to(self.device)] - ref).norm(dim=1).cpu())
                self.err_idx.append(idx[sel])
        sel = idx < KEEP_SAMPLES
        if sel.any():
            self.keep.append(x.detach()[sel.to(x.device)].float().cpu())
            self.keep_idx.append(idx[sel])
        if self.fid is not None:
            self.fid.update(x, list(indices))
        if self.guided is not None:
            self.guided.update(x, list(indices))

    def state(self) -> dict:
        """A CPU-only summary to gather across ranks."""
        cat = lambda xs, empty: torch.cat(xs) if xs else empty
        return {"n": self.n, "max_abs": float(self.max_abs), "finite": bool(self.finite),
                "sum": None if self.sum is None else self.sum.cpu(),
                "outer": None if self.outer is None else self.outer.cpu(), "loglik": float(self.loglik),
                "err_idx": cat(self.err_idx, torch.zeros(0, dtype=torch.long)),
                "err": cat(self.err, torch.zeros(0, dtype=torch.float64)),
                "keep_idx": cat(self.keep_idx, torch.zeros(0, dtype=torch.long)),
                "keep": cat(self.keep, torch.zeros(0)),
                "fid": None if self.fid is None else self.fid.state(),
                "guided": None if self.guided is None else self.guided.state()}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """One state for the whole cell; per-sample parts in sample-index order."""
        def ordered(idx_key, val_key):
            idx = torch.cat([s[idx_key] for s in states])
            vals = [s[val_key] for s in states if len(s[idx_key])]
            if not vals:
                return states[0][val_key]
            return torch.cat(vals)[torch.argsort(idx)]
        sums = [s for s in states if s["sum"] is not None]
        out = {"n": sum(s["n"] for s in states), "max_abs": max(s["max_abs"] for s in states),
               "finite": all(s["finite"] for s in states), "loglik": sum(s["loglik"] for s in states),
               "sum": sum(s["sum"] for s in sums) if sums else None,
               "outer": sum(s["outer"] for s in sums) if sums else None,
               "err": ordered("err_idx", "err"), "keep": ordered("keep_idx", "keep")}
        fids = [s["fid"] for s in states if s["fid"] is not None]
        if fids:
            from .fid import FidAccumulator
            out["fid"] = FidAccumulator.merge(fids)
        guided = [s["guided"] for s in states if s.get("guided") is not None]
        if guided:
            from .guided import GuidedAccumulator
            out["guided"] = GuidedAccumulator.merge(guided)
        return out


def solver_error_metrics(err: torch.Tensor, reference_error: float | None = None) -> dict:
    """Mean, median and standard error of the mean of per-sample solver errors; ``at_reference_floor`` where the mean
    is within FLOOR_FACTOR x the reference's own error (then the row measures the reference as much as the solver)."""
    n = len(err)
    out = {"solver_error_mean": float(err.mean()), "solver_error_median": float(err.median()), "reference_n": n,
           "solver_error_se": float(err.std() / math.sqrt(n)) if n > 1 else math.nan}
    if reference_error is not None:
        out.update(reference_error=reference_error,
                   at_reference_floor=out["solver_error_mean"] <= FLOOR_FACTOR * reference_error)
    else:
        out["at_reference_floor"] = False  # exact: no floor but float64 round-off
    return out


def cell_metrics(checkpoint, merged: dict, *, cache_dir=None, device="cpu", reference=None,
                 reference_info: dict | None = None) -> dict:
    """Every metric the checkpoint supports, from a merged state; ``reference``: a user's FID reference set;
    ``reference_info``: the solver-error reference's cost and own error (``bench.runner.ReferenceCache``)."""
    out = {}
    err = merged["err"]
    if len(err):
        info = reference_info or {}
        out.update(solver_error_metrics(err, info.get("reference_error")), reference_exact=checkpoint.reference_exact)
        out.update({k: info[k] for k in ("reference_nfe", "reference_s") if info.get(k) is not None})
    n = merged["n"]
    if merged["sum"] is not None and n > 1:
        mean = merged["sum"] / n
        cov = (merged["outer"] - n * torch.outer(mean, mean)) / (n - 1)  # unbiased, as np.cov
        true_mean, true_cov = checkpoint.moments
        out["frechet"] = frechet_distance(mean.numpy(), cov.numpy(), true_mean.cpu().numpy(), true_cov.cpu().numpy())
    if checkpoint.log_prob is not None and n:
        out["loglik"] = merged["loglik"] / n
    if merged.get("fid") is not None:
        from .fid import fid_kid_from_state, reference_name
        out.update(reference_name(checkpoint, reference))
        out.update(fid_kid_from_state(merged["fid"], checkpoint, cache_dir=cache_dir, device=device,
                                      reference=reference))
    if merged.get("guided") is not None:
        from .guided import guided_metrics
        out.update(guided_metrics(merged["guided"]))
    return out

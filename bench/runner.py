"""The runner: computes each cell's samples and metrics and stores one flat row per cell.

A cell that fails is a row too: ``unsupported`` (the sampler cannot spend that NFE), ``diverged``
(non-finite or exploding samples) or ``error`` (any other exception, with its text). Only Ctrl-C
stops a sweep; every finished cell is already in the store, so rerunning resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

import pretrained
from samplers import SampleNoise, UnsupportedNFE, initial_noise
from samplers.grids import T_END

from . import dist
from .grid import Cell
from .metrics.moments import frechet_to_moments, mean_loglik
from .metrics.solver_error import solver_error
from .provenance import provenance
from .store import ResultsStore

DIVERGED_ABS = 1e2  # |x| beyond this (data lives in about [-3, 3]) marks a cell diverged
DEFAULT_BATCH = 1000
KEEP_SAMPLES = 16  # samples of each cell kept for the report's image grids


class ReferenceCache:
    """Exact / reference ODE solutions per (checkpoint, seed, n, t_end), in memory and on disk."""

    def __init__(self, directory: Path | None):
        self.dir = directory
        self._mem: dict[str, torch.Tensor] = {}

    def get(self, ck, seed: int, n: int, t_end: float, x_T: torch.Tensor) -> torch.Tensor:
        key_src = json.dumps({"checkpoint": ck.name, "weights": ck.fingerprint, "seed": seed, "n": n,
                              "t_end": t_end, "shape": list(x_T.shape), "exact": ck.reference_exact})
        key = hashlib.sha1(key_src.encode()).hexdigest()[:20]
        if key in self._mem:
            return self._mem[key]
        path = self.dir / f"reference-{ck.name}-{key}.pt" if self.dir else None
        if path is not None and path.exists():
            ref = torch.load(path, weights_only=True)
        else:
            ref = ck.reference_solution(x_T, t_end)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs may share a results folder
                torch.save(ref, tmp)
                tmp.replace(path)
        self._mem[key] = ref
        return ref


WARMUP_SAMPLES = 2  # an untimed run on this many samples before each timed cell


def generate_shard(ck, cell: Cell, x_T: torch.Tensor, batch_size: int) -> dict:
    """This process's share of a cell's samples, in batches, with NFE counted per batch and wall-clock.

    Returns {"samples", "nfe_per_batch", "wall"} or {"error"}: a failure on one rank must not leave
    the others waiting in the gather.
    """
    sampler, indices = cell.sampler, dist.shard(cell.n_samples)
    try:
        warm = indices[:WARMUP_SAMPLES]
        sampler.sample(ck.model, x_T[list(warm)], cell.nfe,
                       noise=SampleNoise(cell.seed, warm, ck.data_shape) if sampler.stochastic else None)
        outs, counts = [], []
        start = time.perf_counter()
        for lo in range(0, len(indices), batch_size):
            idx = indices[lo:lo + batch_size]
            noise = SampleNoise(cell.seed, idx, ck.data_shape) if sampler.stochastic else None
            with ck.model.counting() as count:
                outs.append(sampler.sample(ck.model, x_T[list(idx)], cell.nfe, noise=noise))
            counts.append(count.n)
        wall = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 -- becomes the cell's error row
        return {"error": f"{type(exc).__name__}: {exc}"}
    empty = x_T[:0]
    return {"samples": torch.cat(outs) if outs else empty, "nfe_per_batch": counts, "wall": wall}


def cell_metrics(ck, samples: torch.Tensor, reference: torch.Tensor) -> dict:
    """Every metric the checkpoint supports; solver error on the first len(reference) samples."""
    out = solver_error(samples[: len(reference)], reference)
    out.update(reference_exact=ck.reference_exact, reference_n=len(reference))
    if ck.moments is not None:
        out["frechet"] = frechet_to_moments(samples, *ck.moments)
    if ck.log_prob is not None:
        out["loglik"] = mean_loglik(samples, ck.log_prob)
    if ck.extras.get("fid"):
        from .metrics.fid import fid_kid
        out.update(fid_kid(samples, ck))
    return out


def run_cell(ck, cell: Cell, x_T: torch.Tensor, refs: ReferenceCache, batch_size: int,
             store: ResultsStore | None = None) -> dict | None:
    """One row (on rank 0; None elsewhere): key, status, timing, metrics. Failures are rows, not exceptions.

    With a ``store``, the first KEEP_SAMPLES samples of a finished cell are kept beside the results.
    """
    row = {**cell.key, "cell_id": cell.cell_id, "grid": cell.sampler.options.get("grid"),
           "batch_size": batch_size, "status": "ok"}
    try:
        cell.sampler.check_nfe(cell.nfe)
    except UnsupportedNFE as exc:
        return row | {"status": "unsupported", "error": str(exc)} if dist.is_main() else None
    parts = dist.gather(generate_shard(ck, cell, x_T, batch_size))
    if not dist.is_main():
        return None
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return row | {"status": "error", "error": errors[0]}
    counts = [c for p in parts for c in p["nfe_per_batch"]]
    samples = dist.unshard([p["samples"] for p in parts], cell.n_samples)
    wall = max(p["wall"] for p in parts)
    max_abs = float(samples.abs().max())
    row.update(nfe_counted=sum(counts) / len(counts), wall_clock_s=wall, s_per_sample=wall / cell.n_samples,
               max_abs=max_abs)
    if not torch.isfinite(samples).all() or max_abs > DIVERGED_ABS:
        return row | {"status": "diverged",
                      "error": f"samples non-finite or |x| > {DIVERGED_ABS:g} (max |x| = {max_abs:.3g})"}
    if store is not None:
        store.save_samples(cell.cell_id, samples[:KEEP_SAMPLES].numpy())
    try:
        t_end = float(cell.sampler.options.get("t_end", T_END))
        k = min(cell.n_samples, ck.reference_samples or cell.n_samples)
        row.update(cell_metrics(ck, samples, refs.get(ck, cell.seed, k, t_end, x_T[:k])))
    except Exception as exc:  # noqa: BLE001 -- a failed metric is the cell's error row (STYLE principle 8)
        row.update(status="error", error=f"{type(exc).__name__}: {exc}")
    return row


def run_sweep(cells: list[Cell], results_dir: str | Path, *, batch_size: int = DEFAULT_BATCH,
              progress: bool = True) -> dict:
    """Run every cell not already stored in ``results_dir``; returns counts by status."""
    dist.init_from_env()
    store = ResultsStore(results_dir)
    done = dist.broadcast(store.done_cells() if dist.is_main() else None)
    todo = [c for c in cells if c.cell_id not in done]
    refs = ReferenceCache(Path(results_dir) / "cache")
    run = {"run_id": dist.broadcast(uuid.uuid4().hex[:12]), **provenance(), "world_size": dist.world_size()}
    counts = {"skipped": len(cells) - len(todo)}
    x_T_key, x_T = None, None
    bar = tqdm(total=len(cells), initial=counts["skipped"], unit="cell", disable=not (progress and dist.is_main()),
               dynamic_ncols=True)
    try:
        for cell in todo:
            ck = pretrained.load(cell.checkpoint)
            if x_T_key != (cell.checkpoint, cell.seed, cell.n_samples):
                x_T_key = (cell.checkpoint, cell.seed, cell.n_samples)
                x_T = initial_noise(cell.seed, range(cell.n_samples), ck.data_shape)
            bar.set_postfix_str(f"{cell.checkpoint} {cell.sampler.name} nfe={cell.nfe} seed={cell.seed}")
            row = run_cell(ck, cell, x_T, refs, batch_size, store)
            if row is not None:
                row.update(run, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                store.append([row])
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            bar.update(1)
    finally:
        bar.close()
    return counts

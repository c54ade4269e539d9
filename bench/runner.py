"""The runner: computes each cell's samples and metrics and stores one flat row per cell.

A cell that fails is a row too: ``unsupported`` (the sampler cannot spend that NFE), ``diverged``
(non-finite or exploding samples) or ``error`` (any other exception, with its text). Only Ctrl-C or a
results folder that cannot be written stops a sweep; every finished cell is already in the store, so
rerunning resumes. Runs that share a results folder split its cells through the store's claims.

Under torchrun every rank generates the sample indices r, r + W, ... of each cell in batches and folds
them into streaming metric sums (``bench.metrics.accumulate``); the reference ODE solution is computed
in fixed chunks of indices spread over the ranks; ranks meet only to gather those sums and chunks.

A guided cell (``Cell.guidance``) draws each sample's condition from (seed, sample index), as x_T, and samples
with the model's classifier-free guided view of each batch (``DiffusionModel.guided``): its NFE count is guided
evaluations, ``network_passes`` the passes through the network. Its solver error is not measured (the reference
solution is the unguided model's).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

import pretrained
from pretrained.students import unsupported_reason
from samplers import SampleNoise, Unsupported, initial_noise
from samplers.grids import end_time

from . import dist
from .atomic import atomic_write
from .devices import describe_device, synchronize
from .grid import DTYPES, Cell, LikelihoodMethod
from .metrics.accumulate import KEEP_SAMPLES, CellAccumulator, cell_metrics
from .metrics.guided import GuidedAccumulator
from .metrics.nll import NllAccumulator, exact_nll_bpd, nll_metrics
from .provenance import provenance
from .store import ResultsStore

DIVERGED_ABS = 1e2  # |x| beyond this (data lives in about [-3, 3]) marks a cell diverged
DEFAULT_BATCH = 1000
WARMUP_SAMPLES = 2  # an untimed run on this many samples before each timed cell
REFERENCE_CHUNK = 64  # the reference solution is computed in chunks of at most this many sample indices
DEFAULT_REFERENCE_SAMPLES = 128  # solver error on the first 128 samples of a cell where the reference is solved
REFERENCE_ERROR_SAMPLES = 2  # samples (of seed 0) on which a solved reference's own error is estimated


@dataclass(frozen=True)
class RunOptions:
    """How cells are computed (not what they are: that is the Cell)."""

    device: torch.device = torch.device("cpu")
    batch_size: int = DEFAULT_BATCH
    compile: bool = False
    cache_dir: Path | None = None
    reference_samples: int | None = None  # solver error on the first this many samples (None: reference_count's)


def reference_chunks(k: int) -> list[tuple[int, int]]:
    """Indices 0..k-1 as an even number of near-equal chunks of at most REFERENCE_CHUNK (one chunk below 2 indices).

    The chunks depend on k alone (never on ranks or batch size), and chunk c goes to rank c mod W: on 2 ranks each
    solves half of the indices (200 indices: 4 chunks of 50, not 64 + 64 / 64 + 8).
    """
    n = -(-k // REFERENCE_CHUNK)
    n = min(k, n + n % 2)
    return [(i * k // n, (i + 1) * k // n) for i in range(n)]


class ReferenceCache:
    """Exact / reference ODE solutions of the first k sample indices of a seed, in memory and on disk.

    The solution is computed in fixed chunks (``reference_chunks``, chunk c on rank c mod W), so it is the same
    whatever the batch size or the number of ranks; every rank gets the whole of it, with what it cost (``cost``:
    the solver's NFE per sample and the seconds its chunks took, stored with them). ``error`` estimates a solved
    reference's own error once per checkpoint and t_end. Files are safetensors / JSON named by a hash of everything
    that determines them.
    """

    def __init__(self, directory: Path | None):
        self.dir = directory
        self._mem: dict[str, torch.Tensor] = {}
        self._cost: dict[str, dict] = {}
        self._error: dict[str, float] = {}

    def _key(self, ck, **fields) -> str:
        solver = getattr(ck.reference_solver, "name", None)
        src = json.dumps({"checkpoint": ck.name, "weights": ck.fingerprint, "shape": list(ck.data_shape),
                          "exact": ck.reference_exact, "solver": solver, **fields}, sort_keys=True)
        return hashlib.sha256(src.encode()).hexdigest()[:24]

    def _x_T(self, ck, seed: int, lo: int, hi: int, device) -> torch.Tensor:
        return initial_noise(seed, range(lo, hi), ck.data_shape, device=device, std=ck.model.schedule.prior_std)

    def _chunk(self, ck, seed: int, t_end: float, lo: int, hi: int, device) -> tuple[torch.Tensor, float]:
        """(the solution of indices lo..hi-1, the seconds it took to compute, read back from a cached file)."""
        path = self.dir / f"reference-{self._key(ck, seed=seed, lo=lo, hi=hi, t_end=t_end)}.safetensors" \
            if self.dir else None
        if path is not None and path.is_file():
            try:
                with safe_open(str(path), "pt", device="cpu") as f:
                    return f.get_tensor("x").to(device), float((f.metadata() or {})["seconds"])
            except Exception:  # noqa: BLE001 -- a damaged cache file is recomputed, never trusted
                pass
        synchronize(device)
        start = time.perf_counter()
        ref = ck.reference_solution(self._x_T(ck, seed, lo, hi, device), t_end).to(torch.float64)
        synchronize(device)
        seconds = time.perf_counter() - start
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            cpu = {"x": ref.detach().cpu().contiguous()}
            atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata={"seconds": repr(seconds)}))
        return ref, seconds

    def get(self, ck, seed: int, k: int, t_end: float, device) -> torch.Tensor:
        """(k, *shape) float64 on ``device``: the reference solution from x_T of sample indices 0..k-1."""
        key = f"{ck.name}|{ck.fingerprint}|{seed}|{k}|{t_end}|{device}"
        if key not in self._mem:
            chunks = reference_chunks(k)
            try:
                mine = {c: (x.cpu(), s) for j, c in enumerate(chunks) if j % dist.world_size() == dist.rank()
                        for x, s in [self._chunk(ck, seed, t_end, *c, device)]}
            except Exception as exc:  # noqa: BLE001 -- every rank must reach the gather, then all raise alike
                mine = {"error": f"{type(exc).__name__}: {exc}"}
            gathered = dist.gather(mine)
            errors = [g["error"] for g in gathered if "error" in g]
            if errors:
                raise RuntimeError(f"reference solution: {errors[0]}")
            parts = {c: xs for part in gathered for c, xs in part.items()}
            self._mem[key] = torch.cat([parts[c][0] for c in chunks]).to(device)
            solver = ck.reference_solver
            self._cost[key] = {"reference_nfe": None if solver is None else solver.nfe,
                               "reference_s": sum(parts[c][1] for c in chunks)}
        return self._mem[key]

    def cost(self, ck, seed: int, k: int, t_end: float, device) -> dict:
        """What ``get``'s solution cost: {"reference_nfe": NFE per sample (None: exact), "reference_s": seconds}."""
        return self._cost[f"{ck.name}|{ck.fingerprint}|{seed}|{k}|{t_end}|{device}"]

    def error(self, ck, t_end: float, device) -> float | None:
        """The reference's own error: mean L2 distance to the solver's ``tight`` solve on the first
        REFERENCE_ERROR_SAMPLES indices of seed 0 (one batch, on rank 0, once per checkpoint and t_end; cached);
        None where the reference is exact."""
        solver = ck.reference_solver
        if solver is None:
            return None
        key = self._key(ck, t_end=t_end, error_samples=REFERENCE_ERROR_SAMPLES)
        if key in self._error:
            return self._error[key]
        path = self.dir / f"reference-error-{key}.json" if self.dir else None
        result = None
        if dist.is_main():  # rank 0 alone reads or computes it: every rank then takes the same value
            try:
                result = json.loads(path.read_text()) if path is not None and path.is_file() else None
                float(result["reference_error"])
            except Exception:  # noqa: BLE001 -- a damaged cache file is recomputed, never trusted
                result = None
            if result is None:
                try:
                    x_T = self._x_T(ck, 0, 0, REFERENCE_ERROR_SAMPLES, device)
                    start = time.perf_counter()
                    d = (solver.solve(x_T, t_end) - solver.tight(x_T, t_end)).flatten(1).norm(dim=1)
                    result = {"checkpoint": ck.name, "reference": solver.name, "tight_nfe": solver.tight_nfe,
                              "t_end": t_end, "seed": 0, "per_sample": d.tolist(),
                              "reference_error": float(d.mean()), "seconds": time.perf_counter() - start}
                    if path is not None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
                except Exception as exc:  # noqa: BLE001 -- every rank must reach the broadcast, then all raise
                    result = {"error": f"{type(exc).__name__}: {exc}"}
        result = dist.broadcast(result)
        if "error" in result:
            raise RuntimeError(f"reference error estimate: {result['error']}")
        self._error[key] = float(result["reference_error"])
        return self._error[key]


def reference_count(ck, cell: Cell, opts: "RunOptions") -> int:
    """How many of the cell's first samples solver error is measured on: ``--reference-samples``, else the
    checkpoint's own count, else all of them for an exact reference and DEFAULT_REFERENCE_SAMPLES for a solved one.
    0 for guided cells (the reference is the unguided model's ODE solution)."""
    if cell.guidance is not None:
        return 0
    n = opts.reference_samples or ck.reference_samples
    if n is None:
        n = cell.n_samples if ck.reference_exact else DEFAULT_REFERENCE_SAMPLES
    return min(cell.n_samples, n)


def _model_for(model, cell: Cell, opts: RunOptions, cache: dict, role: str = "sample"):
    """The checkpoint's ``model`` at the cell's network precision (compiled if asked), one per sweep and role."""
    key = (cell.checkpoint, role, cell.net_dtype, opts.compile)
    if key not in cache:
        if cell.net_dtype != "native":
            model = model.replace(autocast_dtype=DTYPES[cell.net_dtype])
        if opts.compile:
            model = model.replace(fn=torch.compile(model.fn))
        cache[key] = model
    return cache[key]


def generate_shard(ck, model, cell: Cell, opts: RunOptions, reference, ref_count: int) -> dict:
    """This rank's share of a cell: samples in batches, folded into metric sums; NFE per batch and wall-clock.

    Returns {"state", "nfe_per_batch", "passes_per_batch", "wall"} or {"error"}: a failure on one rank must not
    leave the others waiting in the gather.
    """
    sampler, device, dtype = cell.sampler, opts.device, DTYPES[cell.state_dtype]
    indices = dist.shard(cell.n_samples)
    labels = None if cell.guidance is None else (lambda idx: model.condition.draw(cell.seed, idx))

    def draw(idx):
        x_T = initial_noise(cell.seed, idx, ck.data_shape, device=device, dtype=dtype, std=ck.model.schedule.prior_std)
        noise = (SampleNoise(cell.seed, idx, ck.data_shape, device=device, dtype=dtype)
                 if sampler.stochastic else None)
        # the batch's view: its samples' conditions, guided; calls count on ``model``'s counters
        return x_T, noise, model if labels is None else model.guided(labels(idx), cell.guidance)

    try:
        fid = None
        if cell.fid_ref is not None or ck.extras.get("fid"):
            from .metrics.fid import FidAccumulator, reference_spec
            fid = FidAccumulator(ck, device, spec=reference_spec(ck, cell.fid_ref))
        guided = (GuidedAccumulator(ck, labels, device)
                  if "classifier" in ck.extras or "data_range" in ck.extras else None)
        acc = CellAccumulator(ck, device, fid, guided)
        warm = list(indices[: (opts.batch_size if opts.compile else WARMUP_SAMPLES)])
        if warm:
            x_T, noise, view = draw(warm)
            sampler.sample(view, x_T, cell.nfe, noise=noise)
        counts, passes, wall = [], [], 0.0
        for lo in range(0, len(indices), opts.batch_size):
            idx = list(indices[lo:lo + opts.batch_size])
            x_T, noise, view = draw(idx)
            synchronize(device)
            start = time.perf_counter()
            with model.counting() as count:
                out = sampler.sample(view, x_T, cell.nfe, noise=noise)
            synchronize(device)
            wall += time.perf_counter() - start
            counts.append(count.n)
            passes.append(count.passes)
            acc.update(out, idx, reference, ref_count)
        state = acc.state()
    except Exception as exc:  # noqa: BLE001 -- becomes the cell's error row
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"state": state, "nfe_per_batch": counts, "passes_per_batch": passes, "wall": wall}


def likelihood_shard(ck, model, cell: Cell, opts: RunOptions) -> dict:
    """This rank's share of a likelihood cell: per-sample NLL estimates of held-out data indices r, r + W, ..."""
    est, device, dtype = cell.sampler.estimator, opts.device, DTYPES[cell.state_dtype]
    indices = dist.shard(cell.n_samples)
    try:
        data = ck.likelihood_data(cell.n_samples)
        acc, counts, wall = NllAccumulator(), [], 0.0
        for lo in range(0, len(indices), opts.batch_size):
            idx = list(indices[lo:lo + opts.batch_size])
            x = data[idx].to(device, dtype)
            synchronize(device)
            start = time.perf_counter()
            with model.counting() as count:
                out = est.estimate(model, x, cell.nfe, seed=cell.seed, indices=idx, levels=ck.data_levels)
            synchronize(device)
            wall += time.perf_counter() - start
            counts.append(count.n)
            acc.update(out, idx)
        state = acc.state()
    except Exception as exc:  # noqa: BLE001 -- becomes the cell's error row
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"state": state, "nfe_per_batch": counts, "wall": wall}


def run_likelihood_cell(ck, cell: Cell, opts: RunOptions, row: dict, models: dict) -> dict | None:
    """The row of an ``nll:<estimator>`` cell: NLL of the checkpoint's held-out data in bits/dim, with its terms."""
    if ck.likelihood_data is None:
        return row | {"status": "unsupported", "error": f"checkpoint {ck.name!r} has no held-out data to estimate "
                      f"a likelihood on"} if dist.is_main() else None
    base = ck.grad_model or ck.model
    parts = dist.gather(likelihood_shard(ck, _model_for(base, cell, opts, models, "grad"), cell, opts))
    if not dist.is_main():
        return None
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return row | {"status": "error", "error": errors[0]}
    counts = [c for p in parts for c in p["nfe_per_batch"]]
    wall = max(p["wall"] for p in parts)
    row.update(nfe_counted=sum(counts) / len(counts), wall_clock_s=wall, s_per_sample=wall / cell.n_samples)
    row.update(nll_metrics(NllAccumulator.merge([p["state"] for p in parts])))
    if not math.isfinite(row.get("nll_bpd", math.nan)):
        return row | {"status": "diverged", "error": "a per-sample NLL estimate is not finite"}
    if ck.log_prob is not None:
        row["nll_exact_bpd"] = exact_nll_bpd(ck.log_prob, ck.likelihood_data(cell.n_samples).to(ck.device),
                                             ck.data_levels)
    return row


def run_cell(ck, cell: Cell, refs: ReferenceCache, opts: RunOptions, store: ResultsStore | None = None,
             models: dict | None = None) -> dict | None:
    """One row (on rank 0; None elsewhere): key, status, timing, metrics. Failures are rows, not exceptions.

    With a ``store``, the first KEEP_SAMPLES samples of a finished cell are kept beside the results.
    Every rank must call this for the same cells in the same order (it gathers).
    """
    models = models if models is not None else {}
    row = {**cell.key, "cell_id": cell.cell_id, "grid": cell.sampler.options.get("grid"),
           "batch_size": opts.batch_size, "status": "ok", "compiled": opts.compile,
           "device": describe_device(opts.device)}
    try:
        cell.sampler.check_nfe(cell.nfe)
        cell.sampler.check_model(ck.model, cell.nfe)  # a student or head this checkpoint lacks; an estimator's family
        if cell.guidance is not None and ck.model.condition is None:
            ck.model.guided([], cell.guidance)  # raises Unsupported: the checkpoint is unconditional
    except Unsupported as exc:
        return row | {"status": "unsupported", "error": unsupported_reason(exc)} if dist.is_main() else None
    if isinstance(cell.sampler, LikelihoodMethod):
        return run_likelihood_cell(ck, cell, opts, row, models)
    try:
        t_end = end_time(ck.model.schedule, cell.sampler.options.get("t_end"))
        k = reference_count(ck, cell, opts)
        reference, ref_info = None, {}
        if k:
            reference = refs.get(ck, cell.seed, k, t_end, opts.device)
            ref_info = {**refs.cost(ck, cell.seed, k, t_end, opts.device),
                        "reference_error": refs.error(ck, t_end, opts.device)}
        part = generate_shard(ck, _model_for(ck.model, cell, opts, models), cell, opts, reference, k)
    except Exception as exc:  # noqa: BLE001 -- the reference failed: every rank fails the same way
        part = {"error": f"{type(exc).__name__}: {exc}"}
    parts = dist.gather(part)
    if not dist.is_main():
        return None
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return row | {"status": "error", "error": errors[0]}
    merged = CellAccumulator.merge([p["state"] for p in parts])
    counts = [c for p in parts for c in p["nfe_per_batch"]]
    wall = max(p["wall"] for p in parts)
    passes = [c for p in parts for c in p["passes_per_batch"]]
    row.update(nfe_counted=sum(counts) / len(counts), network_passes=sum(passes) / len(passes), wall_clock_s=wall,
               s_per_sample=wall / cell.n_samples, max_abs=merged["max_abs"])
    if not merged["finite"] or merged["max_abs"] > DIVERGED_ABS:
        return row | {"status": "diverged",
                      "error": f"samples non-finite or |x| > {DIVERGED_ABS:g} (max |x| = {merged['max_abs']:.3g})"}
    try:
        if store is not None:
            store.save_samples(cell.cell_id, merged["keep"][:KEEP_SAMPLES].numpy())
        row.update(cell_metrics(ck, merged, cache_dir=opts.cache_dir, device=opts.device, reference=cell.fid_ref,
                                 reference_info=ref_info))
    except Exception as exc:  # noqa: BLE001 -- a failed metric is the cell's error row (STYLE principle 8)
        row.update(status="error", error=f"{type(exc).__name__}: {exc}")
    return row


def _claim(store: ResultsStore, cell: Cell) -> bool:
    """Rank 0 claims the cell for this run; every rank learns whether to compute it."""
    return dist.broadcast(store.claim(cell.cell_id) == "claimed" if dist.is_main() else None)


def run_sweep(cells: list[Cell], results_dir: str | Path, *, options: RunOptions = RunOptions(),
              progress: bool = True) -> dict:
    """Run every cell not already stored in ``results_dir`` (and not being computed by another run).

    Returns counts by status, plus "skipped" (stored before) and "taken" (claimed by a concurrent run).
    """
    store = ResultsStore(results_dir)
    if dist.is_main():
        store.prepare()
    done = dist.broadcast(store.done_cells() if dist.is_main() else None)
    todo = [c for c in cells if c.cell_id not in done]
    opts = options if options.cache_dir else RunOptions(**{**options.__dict__, "cache_dir": Path(results_dir) / "cache"})
    refs = ReferenceCache(opts.cache_dir)
    run = {"run_id": dist.broadcast(uuid.uuid4().hex[:12]), **provenance(), "world_size": dist.world_size()}
    counts = {"skipped": len(cells) - len(todo)}
    models: dict = {}
    bar = tqdm(total=len(cells), initial=counts["skipped"], unit="cell", disable=not (progress and dist.is_main()),
               dynamic_ncols=True)
    try:
        with store.heartbeat():
            for cell in todo:
                bar.set_postfix_str(f"{cell.checkpoint} {cell.sampler.name} nfe={cell.nfe} seed={cell.seed}")
                if not _claim(store, cell):
                    counts["taken"] = counts.get("taken", 0) + 1
                    bar.update(1)
                    continue
                ck = pretrained.load(cell.checkpoint, device=opts.device)
                try:
                    row = run_cell(ck, cell, refs, opts, store, models)
                except BaseException:
                    if dist.is_main():
                        store.release(cell.cell_id)
                    raise
                if row is not None:
                    row.update(run, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                    try:
                        store.append([row])
                    except BaseException:
                        store.release(cell.cell_id)
                        raise
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
                bar.update(1)
    finally:
        bar.close()
    return counts

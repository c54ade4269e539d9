"""``python -m bench ...`` with timers around the harness's parts (for test_startup.py, test_sweep_breakdown.py).

    python benchmarks/probe.py first-cell run ARGS...   stop when the first cell starts: print {"first_cell": ...}
    python benchmarks/probe.py breakdown run ARGS...    run the sweep; print the time spent in each part as JSON

Nothing in the harness changes: functions are wrapped from outside before ``bench.cli.main`` runs (the modules
wrapped are the ones ``bench run`` imports before its first cell anyway). Times are wall (``time.perf_counter``) and
CPU of this thread (``time.thread_time``), attributed to the outermost wrapped part running; the network's time
is counted inside ``Sampler.sample`` only (the reference solution's own network calls are part of "reference").
The last stdout line is the JSON; time stamps are ``time.time()``, comparable with the parent's clock.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from functools import wraps

# Parts whose inner calls are not counted separately (the reference solution and the likelihood estimators run the
# network and samplers of their own).
OPAQUE = {"reference", "io", "cell_metrics", "likelihood"}


class Probe:
    """Inclusive and exclusive (less nested parts) wall and CPU seconds per part."""

    def __init__(self):
        self.incl = defaultdict(lambda: [0.0, 0.0])
        self.excl = defaultdict(lambda: [0.0, 0.0])
        self.calls = defaultdict(int)
        self.stack = []  # [part, wall0, cpu0, child wall, child cpu]
        self.active = False  # parts count from the first cell on (the pre-flight's dry runs belong to start-up)

    def wrap(self, owner, attr, part):
        orig = getattr(owner, attr)

        @wraps(orig)
        def timed(*args, **kwargs):
            if not self.active or any(frame[0] in OPAQUE for frame in self.stack):
                return orig(*args, **kwargs)
            self.stack.append([part, time.perf_counter(), time.thread_time(), 0.0, 0.0])
            try:
                return orig(*args, **kwargs)
            finally:
                _, w0, c0, cw, cc = self.stack.pop()
                dw, dc = time.perf_counter() - w0, time.thread_time() - c0
                self.calls[part] += 1
                self.incl[part][0] += dw
                self.incl[part][1] += dc
                self.excl[part][0] += dw - cw
                self.excl[part][1] += dc - cc
                if self.stack:
                    self.stack[-1][3] += dw
                    self.stack[-1][4] += dc
        setattr(owner, attr, timed)

    def report(self) -> dict:
        return {"incl": dict(self.incl), "excl": dict(self.excl), "calls": dict(self.calls)}


def _emit(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def first_cell(argv: list[str]) -> int:
    import bench.runner as runner

    def stop(*args, **kwargs):
        _emit({"first_cell": time.time(), "cpu": time.process_time()})
        os._exit(0)
    runner.run_cell = stop
    from bench.cli import main
    return main(argv)


def breakdown(argv: list[str]) -> int:
    import bench.runner as runner
    import pretrained
    import samplers.noise
    import samplers.registry
    from bench.metrics import accumulate
    from bench.store import ResultsStore

    probe, marks = Probe(), {}
    first = runner.run_cell

    def run_cell(*args, **kwargs):
        if "first_cell" not in marks:
            marks.update(first_cell=time.time(), first_cell_cpu=time.process_time())
            probe.active = True
        return first(*args, **kwargs)
    runner.run_cell = run_cell
    probe.wrap(runner.ReferenceCache, "get", "reference")
    if hasattr(runner.ReferenceCache, "error"):  # the reference's own error, estimated once per checkpoint
        probe.wrap(runner.ReferenceCache, "error", "reference")
    if hasattr(runner, "run_likelihood_cell"):  # nll:<estimator> cells of the sweep
        probe.wrap(runner, "run_likelihood_cell", "likelihood")
    probe.wrap(runner, "generate_shard", "cell")          # exclusive part: metric sums, the FID network, bookkeeping
    probe.wrap(samplers.registry.Sampler, "sample", "sampling")  # exclusive part: the solver
    probe.wrap(runner, "initial_noise", "noise")
    probe.wrap(runner, "SampleNoise", "noise")
    probe.wrap(samplers.noise.SampleNoise, "randn", "noise")  # a stochastic sampler's draws, too
    probe.wrap(accumulate.CellAccumulator, "merge", "cell_metrics")
    probe.wrap(runner, "cell_metrics", "cell_metrics")
    for attr in ("append", "save_samples", "claim"):
        probe.wrap(ResultsStore, attr, "io")
    # The network of every checkpoint the sweep loads (loaded once per process; the runner gets the same object).
    load = pretrained.registry._load
    loaded = {}

    def load_and_wrap(*args, **kwargs):
        ck = load(*args, **kwargs)
        loaded[ck.name] = ck
        if not getattr(ck.model.fn, "_probed", False):
            holder = type("Net", (), {"fn": staticmethod(ck.model.fn)})
            probe.wrap(holder, "fn", "model")
            ck.model.fn = holder.fn
            ck.model.fn._probed = True
        return ck
    load_and_wrap.cache_clear = load.cache_clear
    pretrained.registry._load = load_and_wrap
    from bench.cli import main
    code = main(argv)
    end, cpu, report = time.time(), time.process_time(), probe.report()
    _emit({**report, **marks, "end": end, "cpu": cpu, "code": code, "floor": floor(argv, loaded)})
    return code


def network_seconds_per_sample(ck, batch: int, repeats: int = 5) -> float:
    """The network's own time per sample at ``batch`` (median of ``repeats`` calls after one warm-up), at t = T / 2."""
    import statistics

    import torch
    x = torch.randn(batch, *ck.data_shape, generator=torch.Generator().manual_seed(0)).to(ck.device)
    t = torch.full((batch,), ck.model.schedule.T / 2, dtype=torch.float64)
    ck.model(x, t)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ck.model(x, t)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def floor(argv: list[str], loaded: dict) -> dict:
    """The model-evaluation floor of the finished run: counted NFE x samples x the network's own time per sample at
    the cell's batch size (min(batch size, samples)), summed over its ok cells (likelihood cells: forward passes)."""
    from bench.store import ResultsStore

    rows = ResultsStore(argv[argv.index("--results") + 1]).read()
    rows = rows[rows["status"] == "ok"]
    per_sample, total, evals = {}, 0.0, 0
    for _, r in rows.iterrows():
        n = int(r["nll_n"]) if str(r["sampler"]).startswith("nll:") else int(r["n_samples"])
        batch = min(int(r["batch_size"]), n)
        key = (r["checkpoint"], batch)
        if key not in per_sample:
            per_sample[key] = network_seconds_per_sample(loaded[r["checkpoint"]], batch)
        total += float(r["nfe_counted"]) * n * per_sample[key]
        evals += float(r["nfe_counted"]) * n
    return {"floor_s": total, "sample_evaluations": evals, "cells": len(rows),
            "s_per_sample": {f"{c}@{b}": v for (c, b), v in per_sample.items()}}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    raise SystemExit({"first-cell": first_cell, "breakdown": breakdown}[mode](args))

"""Where the time of the default sweep goes (issue 8, "Speed").

Runs ``python -m bench run --nfe 5 10 20`` on the default checkpoint ``digits`` with the default samplers and
likelihood estimators, one seed (0), 32 samples per cell and 8 held-out points per likelihood cell (with
SAMPLERBENCH_BENCH_FULL=1: the defaults, 500 and 50, one seed instead of three), one thread, into a fresh results
folder, in a subprocess timed from outside by ``probe.py`` (nothing in the harness changes). Parts, wall and CPU
seconds, summed over the sweep:
  - model: the network's forward calls made by the samplers (the boundary's fn);
  - solver: sampling time (``Sampler.sample``, warm-up calls included) less the model's and noise draws';
  - noise: x_T and sampler-noise draws (per-sample generators);
  - reference: the reference ODE solution (``ReferenceCache.get``, a 1000-NFE Heun solve per seed);
  - likelihood: the sweep's ``nll:<estimator>`` cells (``run_likelihood_cell``, their network calls included);
  - metrics: moment / FID feature sums while sampling (``generate_shard`` less sampling and noise), merging, and
    FID / KID / solver error per cell (``cell_metrics``);
  - I/O: ``ResultsStore.append``, ``save_samples`` and cell claims;
  - start-up: process start to the first cell (imports, loading the checkpoint, checking the sweep);
  - other: the rest (progress bar, provenance, the loop itself).
The table is printed and stored in ``benchmark.extra_info``; the benchmark's own time is the whole subprocess.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from timers import table

ROOT = Path(__file__).resolve().parent.parent
FULL = os.environ.get("SAMPLERBENCH_BENCH_FULL") == "1"
SIZES = [] if FULL else ["--n-samples", "32", "--nll-samples", "8"]
ARGS = ["run", "--nfe", "5", "10", "20", "--checkpoint", "digits", "--seeds", "0", *SIZES, "--threads", "1", "--quiet"]


def _breakdown(results: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe.py"), "breakdown", *ARGS, "--results",
                          str(results)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "start": start}


def test_sweep_breakdown(benchmark, tmp_path):
    r = benchmark.pedantic(_breakdown, args=(tmp_path / "results",), rounds=1, iterations=1)
    incl, excl = r["incl"], r["excl"]
    get = lambda d, k: d.get(k, [0.0, 0.0])
    parts = {
        "model": get(incl, "model"),
        "solver": get(excl, "sampling"),
        "noise": get(incl, "noise"),
        "reference": get(incl, "reference"),
        "likelihood": get(incl, "likelihood"),
        "metrics": [a + b for a, b in zip(get(excl, "cell"), get(incl, "cell_metrics"))],
        "I/O": get(incl, "io"),
    }
    total_wall = r["end"] - r["start"]
    parts["start-up"] = [r["first_cell"] - r["start"], r["first_cell_cpu"]]
    parts["other"] = [total_wall - sum(w for w, _ in parts.values()), r["cpu"] - sum(c for _, c in parts.values())]
    rows = [{"part": k, "wall_s": w, "cpu_s": c, "share_of_wall": w / total_wall} for k, (w, c) in parts.items()]
    rows.append({"part": "total", "wall_s": total_wall, "cpu_s": r["cpu"], "share_of_wall": 1.0})
    model_w, solver_w = parts["model"][0], parts["solver"][0]
    benchmark.extra_info.update({
        "command": "python -m bench " + " ".join(ARGS), "seeds": [0],
        "parts": {row["part"]: {k: row[k] for k in ("wall_s", "cpu_s", "share_of_wall")} for row in rows},
        "solver_over_model": solver_w / model_w if model_w else None, "calls": r["calls"]})
    print("\n" + table(rows, ["part", "wall_s", "cpu_s", "share_of_wall"],
                       f"python -m bench {' '.join(ARGS)} (wall and CPU seconds)"))
    print(f"solver overhead / model time: {solver_w / model_w:.3g} (wall)")

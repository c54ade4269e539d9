"""Where the time of the default sweep goes (issue 8, "Speed").

Runs ``python -m bench run --nfe 5 10 20`` on the default checkpoint ``digits`` with the default samplers and
likelihood estimators, one seed (0), 32 samples per cell and 8 held-out points per likelihood cell (with
SAMPLERBENCH_BENCH_FULL=1: the defaults, 500 and 50, one seed instead of three), one thread, into a fresh results
folder, in a subprocess timed from outside by ``probe.py`` (nothing in the harness changes). Parts, wall and CPU
seconds, summed over the sweep:
  - model: the network's forward calls made by the samplers (the boundary's fn);
  - solver: sampling time (``Sampler.sample``, warm-up calls included) less the model's and noise draws';
  - noise: x_T and sampler-noise draws (per-sample generators);
  - reference: the reference ODE solution (``ReferenceCache.get``: a 400-NFE solve of the first 128 samples per seed)
    and its own error (``ReferenceCache.error``, once per checkpoint);
  - likelihood: the sweep's ``nll:<estimator>`` cells (``run_likelihood_cell``, their network calls included);
  - metrics: moment / FID feature sums while sampling (``generate_shard`` less sampling and noise), merging, and
    FID / KID / solver error per cell (``cell_metrics``);
  - I/O: ``ResultsStore.append``, ``save_samples`` and cell claims;
  - start-up: process start to the first cell (imports, loading the checkpoint, checking the sweep);
  - other: the rest (progress bar, provenance, the loop itself).
The floor is the run's model evaluations at the network's own speed: counted NFE x samples x the network's time per
sample at the cell's batch size (measured in the same process after the sweep), summed over the ok cells (likelihood
cells: their forward evaluations); "above floor" = whole wall time / floor is the one number that can regress.
``test_large_cell_breakdown`` does the same for one large DDIM cell (2000 samples; FULL: 10,000) and computes the
reference's share of a 50,000-sample default sweep from the measured per-sample costs.
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
LARGE = ["run", "--nfe", "10", "--checkpoint", "digits", "--sampler", "ddim", "--seeds", "0", "--n-samples",
         "10000" if FULL else "2000", "--threads", "1", "--quiet"]
BIG_SWEEP = 50_000  # samples per cell of the extrapolated sweep


def _breakdown(results: Path, args=ARGS) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe.py"), "breakdown", *args, "--results",
                          str(results)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "start": start}


def _parts(r: dict) -> tuple[dict, float]:
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
    return parts, total_wall


def _report(benchmark, r: dict, args: list, extra: dict | None = None) -> dict:
    parts, total_wall = _parts(r)
    rows = [{"part": k, "wall_s": w, "cpu_s": c, "share_of_wall": w / total_wall} for k, (w, c) in parts.items()]
    rows.append({"part": "total", "wall_s": total_wall, "cpu_s": r["cpu"], "share_of_wall": 1.0})
    fl = r["floor"]
    rows.append({"part": "floor", "wall_s": fl["floor_s"], "cpu_s": "", "share_of_wall": fl["floor_s"] / total_wall})
    model_w, solver_w = parts["model"][0], parts["solver"][0]
    summary = {"above_floor": total_wall / fl["floor_s"], "floor_s": fl["floor_s"], "total_s": total_wall,
               "reference_share": parts["reference"][0] / total_wall, **(extra or {})}
    benchmark.extra_info.update({
        "command": "python -m bench " + " ".join(args), "seeds": [0],
        "parts": {row["part"]: {k: row[k] for k in ("wall_s", "cpu_s", "share_of_wall")} for row in rows},
        "solver_over_model": solver_w / model_w if model_w else None, "calls": r["calls"], "floor": fl,
        "load_average": os.getloadavg(), **summary})
    print("\n" + table(rows, ["part", "wall_s", "cpu_s", "share_of_wall"],
                       f"python -m bench {' '.join(args)} (wall and CPU seconds)"))
    print(f"solver overhead / model time: {solver_w / model_w:.3g} (wall); network s/sample at the run's batch: "
          f"{fl['s_per_sample']}")
    print("whole run / model-evaluation floor: " + f"{summary['above_floor']:.3g}; "
          + "; ".join(f"{k}: {v:.3g}" for k, v in summary.items() if k != "above_floor")
          + f"; load average {os.getloadavg()[0]:.2f}")
    return summary


def test_sweep_breakdown(benchmark, tmp_path):
    r = benchmark.pedantic(_breakdown, args=(tmp_path / "results",), rounds=1, iterations=1)
    parts, total = _parts(r)
    n = int(SIZES[1]) if SIZES else 500
    # A 50,000-sample seed of the default sweep: sampling and metrics scale with the samples, the reference does not.
    per_sample = sum(parts[k][0] for k in ("model", "solver", "noise", "metrics")) / n
    ref = parts["reference"][0]
    _report(benchmark, r, ARGS, {f"reference_share_at_{BIG_SWEEP}": ref / (ref + per_sample * BIG_SWEEP)})


def test_large_cell_breakdown(benchmark, tmp_path):
    r = benchmark.pedantic(_breakdown, args=(tmp_path / "results", LARGE), rounds=1, iterations=1)
    _report(benchmark, r, LARGE)

"""Start-up of the command line (issue 8, "Speed"; target: ``bench run`` to its first cell in under 3 s on a quiet
machine).

Each round runs, in turn, three fresh processes: ``python -c "import torch"`` (the floor every command pays),
``python -m bench list`` (to its exit), and ``python -m bench run --nfe 5 10 20 --seeds 0`` on ``digits`` into a
fresh results folder, stopped by ``probe.py first-cell`` when the first cell starts. Per process: wall seconds
(from the parent's clock before the process starts) and CPU seconds of the process (user + sys; on a loaded machine
CPU time is the better estimate of a quiet machine's wall time, since start-up is single-threaded). Medians of
ROUNDS rounds. One more ``bench run`` under ``python -X importtime`` lists the slowest imports (cumulative, top
level and first-level packages) in ``benchmark.extra_info``.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timers import table

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
TARGET_S = 3.0
RUN = ["run", "--nfe", "5", "10", "20", "--seeds", "0", "--threads", "1", "--quiet"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s to exit or to the probe's first cell, CPU s of the process, stdout)."""
    cpu0, start, w0 = _children_cpu(), time.time(), time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall, cpu = time.perf_counter() - w0, _children_cpu() - cpu0
    assert out.returncode == 0, out.stderr[-3000:]
    if "first-cell" in cmd:
        mark = json.loads(out.stdout.strip().splitlines()[-1])
        wall = mark["first_cell"] - start
    return wall, cpu, out.stdout


def _slowest_imports(stderr: str, n: int = 12) -> list[tuple[str, float]]:
    """The n slowest imports (cumulative ms) among top-level modules and their first-level submodules."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue
        depth = (len(name) - len(name.lstrip())) // 2  # importtime indents nested imports by two spaces per level
        if depth <= 1:
            rows.append((name.strip(), int(cumulative) / 1e3))
    return sorted(rows, key=lambda r: -r[1])[:n]


def _startup(tmp_path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    probe = str(ROOT / "benchmarks" / "probe.py")
    cmds = {"import torch": [sys.executable, "-c", "import torch"],
            "bench list": [sys.executable, "-m", "bench", "list"]}
    times = {k: [] for k in [*cmds, "bench run: first cell"]}
    for i in range(ROUNDS):
        for name, cmd in cmds.items():
            times[name].append(_timed(cmd, env)[:2])
        run = [sys.executable, probe, "first-cell", *RUN, "--results", str(tmp_path / f"r{i}")]
        times["bench run: first cell"].append(_timed(run, env)[:2])
    trace = subprocess.run([sys.executable, "-X", "importtime", probe, "first-cell", *RUN, "--results",
                            str(tmp_path / "importtime")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    return {"median": med, "slowest_imports": _slowest_imports(trace.stderr)}


def test_startup(benchmark, tmp_path):
    r = benchmark.pedantic(_startup, args=(tmp_path,), rounds=1, iterations=1)
    med, torch_wall, torch_cpu = r["median"], *r["median"]["import torch"]
    rows = [{"process": k, "wall_s": w, "cpu_s": c, "wall_minus_torch_s": w - torch_wall,
             "cpu_minus_torch_s": c - torch_cpu} for k, (w, c) in med.items()]
    run_wall, run_cpu = med["bench run: first cell"]
    benchmark.extra_info.update({"rounds": ROUNDS, "median_s": {k: {"wall": w, "cpu": c} for k, (w, c) in med.items()},
                                 "target_s": TARGET_S, "run_cpu_under_target": run_cpu < TARGET_S,
                                 "slowest_imports_ms": r["slowest_imports"]})
    print("\n" + table(rows, ["process", "wall_s", "cpu_s", "wall_minus_torch_s", "cpu_minus_torch_s"],
                       f"start-up, median of {ROUNDS} rounds (bench run: {' '.join(RUN)})"))
    print("slowest imports of bench run (cumulative ms): "
          + ", ".join(f"{name} {ms:.0f}" for name, ms in r["slowest_imports"]))

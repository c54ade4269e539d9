"""Appending a row costs the same however many rows are stored (issue 8, "Speed"; README "Running at scale").

For each size in SIZES (100 and 10,000; also 100,000 with SAMPLERBENCH_BENCH_FULL=1, whose links take about 20 s),
a results folder gets that many stored cells, made quickly: one real part hard-linked (copied where links fail)
under distinct ``part-*.parquet`` names, each with its cell's final marker under ``.cells/`` (what a folder that
size holds after a sweep); then ``ResultsStore(dir).append([row])`` stores a new cell ROUNDS times (a fresh store
object each time, as every run makes one). Reported: median wall and CPU seconds per append at each size, and each
size's ratio to the smallest (flat means about 1). ``benchmark`` times three more appends at each size.
"""
import os
import shutil
import statistics
import time
import uuid

import pytest

from bench.store import CELLS_DIR, PART_PREFIX, RESULTS_FILE, ResultsStore
from timers import table

SIZES = (100, 10_000, 100_000) if os.environ.get("SAMPLERBENCH_BENCH_FULL") == "1" else (100, 10_000)
ROUNDS = 15
COLUMNS = ["stored_parts", "append_wall_s", "append_cpu_s", "wall_vs_smallest", "cpu_vs_smallest", "fill_s"]


@pytest.fixture(scope="module")
def results():
    """{size: row}, printed as one table (with each size's ratio to the smallest) when the module is done."""
    out = {}
    yield out
    rows = [out[k] for k in sorted(out)]
    for r in rows:
        r["wall_vs_smallest"] = r["append_wall_s"] / rows[0]["append_wall_s"]
        r["cpu_vs_smallest"] = r["append_cpu_s"] / rows[0]["append_cpu_s"]
    if rows:
        print("\n" + table(rows, COLUMNS, f"ResultsStore.append of one row, median of {ROUNDS}"))


def _row(cell_id: str) -> dict:
    return {"cell_id": cell_id, "checkpoint": "digits", "sampler": "ddim", "sampler_config": '{"eta": 0.0}',
            "grid": "time_uniform", "nfe": 10, "nfe_counted": 10.0, "seed": 0, "n_samples": 500,
            "state_dtype": "float64", "net_dtype": "native", "batch_size": 1000, "status": "ok",
            "wall_clock_s": 1.0, "s_per_sample": 0.002, "fid": 20.0, "max_abs": 1.0, "threads": 1, "world_size": 1}


def _fill(folder, n: int) -> None:
    """n stored cells: one real part linked under n names, and their final markers."""
    seed = folder.parent / f"seed-{n}"
    ResultsStore(seed).append([_row("seed")])
    (part,) = (seed / RESULTS_FILE).iterdir()
    parts, cells = folder / RESULTS_FILE, folder / CELLS_DIR
    parts.mkdir(parents=True)
    cells.mkdir()
    marker = (seed / CELLS_DIR / "seed").read_bytes()
    for i in range(n):
        target = parts / f"{PART_PREFIX}{i:020d}-bench-0-{i:06d}.parquet"
        try:
            os.link(part, target)
        except OSError:
            shutil.copyfile(part, target)
        (cells / f"c{i:07d}").write_bytes(marker)


@pytest.mark.parametrize("n", SIZES)
def test_append_is_flat(benchmark, tmp_path, results, n):
    folder = tmp_path / f"store-{n}"
    t0 = time.perf_counter()
    _fill(folder, n)
    fill_s = time.perf_counter() - t0

    def append():
        ResultsStore(folder).append([_row(uuid.uuid4().hex)])

    append()  # warm-up (pandas / pyarrow first use)
    wall, cpu = [], []
    for _ in range(ROUNDS):
        w0, c0 = time.perf_counter(), time.process_time()
        append()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    benchmark.pedantic(append, rounds=3, iterations=1)
    results[n] = {"stored_parts": n, "append_wall_s": statistics.median(wall), "append_cpu_s": statistics.median(cpu),
                  "fill_s": fill_s}
    benchmark.extra_info.update(results[n])

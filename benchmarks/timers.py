"""Timing helpers of the benchmarks: interleaved rounds on two clocks, medians, and a printed table.

The reference machine runs other jobs: wall time stretches with their load, the CPU time of this process much less.
So every comparison runs its candidates in turn within each round (drift hits all of them alike), takes the median
over rounds, and states ratios of medians measured in the same run; CPU time (``time.process_time``) is the clock
of the ratios, wall time is reported beside it.
"""
from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, rounds: int, warmup: int = 1) -> dict:
    """{name: {"cpu": median CPU s, "wall": median wall s}} of each function, run once per round in turn."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {k: {"cpu": statistics.median(cpu[k]), "wall": statistics.median(wall[k])} for k in fns}


def table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """A fixed-width text table of ``rows`` (dicts) with ``columns``; floats with 4 significant digits."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    out = [title] if title else []
    out += [line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    return "\n".join(out)

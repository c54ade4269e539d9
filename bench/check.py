"""The regression gate: compare stored cells with a committed baseline; any worse or missing cell fails.

A metric is worse when it moved in its bad direction by more than ``atol + rtol * |baseline|``
(lower is better for errors, distances, FID/KID and NLL; higher for log-likelihood). Timing is not
gated. A baseline cell that is missing from the results, or that was ``ok`` and now is not, fails.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .schema import COLUMNS, KEY_COLUMNS, METRICS, conform
from .store import ResultsStore

DEFAULT_RTOL = 0.02   # 2 %: same seeds give the same numbers, so this only absorbs float noise across machines
DEFAULT_ATOL = 1e-8
GATED_METRICS = tuple(m for m in METRICS if m != "wall_clock_s")
BASELINE_COLUMNS = (*KEY_COLUMNS, "status", *GATED_METRICS)


def write_baseline(results_dir: str | Path, out: str | Path) -> int:
    """Write the cells of a results folder (key, status, gated metrics) as a CSV baseline."""
    df = ResultsStore(results_dir).read()
    if df.empty:
        raise ValueError(f"no results in {results_dir}; run `python -m bench run` first")
    df = df[list(BASELINE_COLUMNS)].sort_values(list(KEY_COLUMNS), na_position="first")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.10g")
    return len(df)


def read_baseline(path: str | Path) -> pd.DataFrame:
    if not Path(path).exists():
        raise ValueError(f"baseline {path} does not exist; write one with `python -m bench baseline --out {path}`")
    df = pd.read_csv(path, dtype={"sampler_config": str})
    missing = [c for c in BASELINE_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"baseline {path} lacks columns {missing}")
    for col in BASELINE_COLUMNS:
        df[col] = df[col].astype(COLUMNS[col])
    return df


def _key(row) -> tuple:
    return tuple(None if pd.isna(row[c]) else row[c] for c in KEY_COLUMNS)


def check_against_baseline(baseline: str | Path, results_dir: str | Path, rtol: float = DEFAULT_RTOL,
                           atol: float = DEFAULT_ATOL) -> tuple[bool, list[str]]:
    """(passed, report lines) for the results in ``results_dir`` against ``baseline``."""
    base = read_baseline(baseline)
    current = {_key(r): r for _, r in conform(ResultsStore(results_dir).read()).iterrows()}
    failures, notes, failed_cells = [], [], set()
    for _, b in base.iterrows():
        key = _key(b)
        name = f"{b['checkpoint']} {b['sampler']} nfe={b['nfe']} seed={b['seed']}"
        if key not in current:
            failed_cells.add(key)
            failures.append(f"MISSING {name}: in the baseline, not in the results")
            continue
        c = current[key]
        if b["status"] == "ok" and c["status"] != "ok":
            failed_cells.add(key)
            failures.append(f"STATUS  {name}: ok -> {c['status']} ({c['error']})")
            continue
        if b["status"] != "ok":
            if c["status"] == "ok":
                notes.append(f"better  {name}: {b['status']} -> ok")
            continue
        for metric in GATED_METRICS:
            bv, cv = b[metric], c[metric]
            if pd.isna(bv):
                continue
            margin = atol + rtol * abs(bv)
            lower_better = METRICS[metric]
            worse = (pd.isna(cv) or not math.isfinite(cv)
                     or (cv > bv + margin if lower_better else cv < bv - margin))
            if worse:
                failed_cells.add(key)
                failures.append(f"WORSE   {name}: {metric} {bv:.6g} -> {cv:.6g} (tolerance {margin:.3g})")
    verdict = (f"FAIL: {len(failed_cells)} of {len(base)} baseline cells got worse or are missing"
               if failures else f"PASS: {len(base)} baseline cells, none worse (rtol={rtol}, atol={atol})")
    return not failures, [*failures, *notes, verdict]

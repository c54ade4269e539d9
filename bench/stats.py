"""Statistics of the report: paired differences over seeds with a t confidence interval (scipy's one-sample t-test
on the per-seed differences) and Holm's step-down correction across the marks of one table (Holm 1979).

A mark (✓) in a report says: this paired difference is nonzero at family-wise error rate ``ALPHA`` over all the
differences of its table, i.e. its Holm-adjusted p-value is below ``ALPHA``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ALPHA = 0.05   # family-wise error rate of a table's marks; the intervals are (1 - ALPHA) two-sided t intervals
MARK = "✓"     # a difference whose Holm-adjusted p-value is < ALPHA


@dataclass(frozen=True)
class Paired:
    """A paired difference over n seeds: mean, standard error, (1 - ALPHA) t interval [lo, hi], two-sided p."""

    mean: float
    se: float
    lo: float
    hi: float
    p: float
    n: int


def paired_difference(diffs: Sequence[float], alpha: float = ALPHA) -> Paired | None:
    """Student's t on per-seed differences (the same x_T on both sides); None for fewer than two.

    Zero spread gives a zero-width interval and p = 0 for a nonzero mean (1 for a zero mean): identical
    computations on every seed are exactly resolved, not undefined.
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return None
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        return Paired(mean, 0.0, mean, mean, 0.0 if mean != 0.0 else 1.0, n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Paired(mean, se, mean - half, mean + half, p, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order: sorted ascending, p_(i) * (m - i) (i from 0), made monotone by a
    running maximum and capped at 1. Rejecting where the adjusted value is < alpha controls the family-wise error
    rate at alpha. NaN inputs stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, p[i] * (m - rank)))
        out[i] = running
    return out.tolist()


def t_halfwidth(values: Sequence[float], alpha: float = ALPHA) -> float:
    """Half-width of the (1 - alpha) t interval of the mean of ``values`` (NaN for fewer than two)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))

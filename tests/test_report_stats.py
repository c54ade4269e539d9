"""The report's statistics against hand-computed values: Holm's correction, a paired t interval, the marks of a
paired table; students' own budgets in a sweep."""
import math

import pandas as pd
import pytest

from bench.grid import own_budgets
from bench.report import paired_table, sampler_labels
from bench.schema import conform
from bench.stats import MARK, holm, paired_difference, t_halfwidth


def test_holm_adjusts_a_small_list_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1 (0.5 * 2), then monotone
    out = holm([0.01, float("nan"), 0.02])  # NaN stays NaN and does not count: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_paired_t_interval_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302653; for 2 degrees of freedom the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2) with t = 2 sqrt(3)
    res = paired_difference([1.0, 2.0, 3.0])
    se = 1 / math.sqrt(3)
    assert res.mean == 2.0 and res.se == pytest.approx(se) and res.n == 3
    assert res.lo == pytest.approx(2 - 4.302653 * se, abs=1e-6) and res.hi == pytest.approx(2 + 4.302653 * se, abs=1e-6)
    t = 2 * math.sqrt(3)
    assert res.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert t_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(4.302653 * se, abs=1e-6)
    assert paired_difference([1.0]) is None
    same = paired_difference([0.5, 0.5, 0.5])  # identical on every seed: exactly resolved, zero width
    assert (same.lo, same.hi, same.p) == (0.5, 0.5, 0.0)


def _rows(sampler, values, nfe=10):
    return [{"cell_id": f"{sampler}-{nfe}-{s}", "checkpoint": "x", "sampler": sampler, "sampler_config": "{}",
             "nfe": nfe, "seed": s, "n_samples": 8, "batch_size": 8, "status": "ok", "fid": v, "threads": 1,
             "world_size": 1} for s, v in enumerate(values)]


def test_marks_are_holm_corrected_across_the_table():
    # two differences with unadjusted p about 0.031 and 0.038 (each < 0.05 alone); Holm over m = 2 makes them
    # 0.062 and max(0.062, 0.038) = 0.062, so neither is marked. A third, clear difference keeps its mark.
    base = [10.0, 20.0, 30.0, 40.0]
    a = [b + d for b, d in zip(base, [1.0, 2.0, 0.4, 1.6])]
    c = [b + d for b, d in zip(base, [1.0, 1.8, 0.4, 1.4])]
    df = conform(pd.DataFrame(_rows("ddim", base) + _rows("a", a) + _rows("c", c)))
    df["label"] = sampler_labels(df)
    pa, pc = (paired_difference([x - b for x, b in zip(v, base)]).p for v in (a, c))
    assert pa < 0.05 and pc < 0.05 and max(holm([pa, pc])) > 0.05
    labels, _, cells, _ = paired_table(df, "fid")
    assert not any(MARK in row[0] for row in cells)
    clear = [b - 5 + 0.01 * k for k, b in enumerate(base)]
    df = conform(pd.DataFrame(_rows("ddim", base) + _rows("a", a) + _rows("c", c) + _rows("clear", clear)))
    df["label"] = sampler_labels(df)
    labels, _, cells, _ = paired_table(df, "fid")
    table = dict(zip(labels, (row[0] for row in cells)))
    assert table["clear"].endswith(MARK) and table["clear"].startswith("-4.98 [")
    assert not table["a"].endswith(MARK)


def test_a_method_that_fits_none_of_the_budgets_also_runs_at_its_own():
    pd_student = lambda n: n in (1, 2, 4, 8)  # noqa: E731
    assert own_budgets([5, 10, 20], pd_student) == [1, 2, 4, 5, 8, 10, 20]
    assert own_budgets([5, 10, 20], lambda n: n == 1) == [1, 5, 10, 20]  # kd
    assert own_budgets([4, 8, 16], pd_student) == [4, 8, 16]  # fits some: the sweep's cells, unchanged
    assert own_budgets([5, 10, 20], lambda n: n % 2 == 0) == [5, 10, 20]  # heun: fits 10 and 20
    assert own_budgets([5, 10, 20], lambda n: False) == [5, 10, 20]  # no student on this checkpoint

"""Student or solver? The best distilled student and the best solver within each NFE budget (paired over seeds,
Holm-corrected across the budgets), and the Pareto front of quality against NFE and against sampling seconds.

Students are the samplers registered by ``samplers.students`` (kd, pd, cd); every other sampler is a solver
(GENIE, a solver with a distilled derivative head, included). Students' training cost is not in the seconds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .schema import METRICS
from .stats import ALPHA, MARK, holm, paired_difference

STUDENT_MODULE = "samplers.students"


def is_student(sampler: str) -> bool:
    """Whether ``sampler`` is a distilled student (registered in ``samplers.students``)."""
    import samplers

    try:
        return samplers.describe(str(sampler)).fn.__module__ == STUDENT_MODULE
    except (ValueError, KeyError):
        return False


def _means(ok: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean metric and seconds over seeds per (label, nfe), with a ``student`` flag."""
    agg = ok.groupby(["label", "nfe"]).agg(value=(metric, "mean"), seconds=("wall_clock_s", "mean"),
                                           sampler=("sampler", "first")).reset_index().dropna(subset=["value"])
    agg["student"] = agg["sampler"].map(is_student)
    return agg


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def student_or_solver(d: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]] | None:
    """Per budget N (the NFE values of the rows): the best student and the best solver at NFE <= N by mean
    ``metric`` over seeds, and student - solver paired over their common seeds with its t interval; the marks are
    Holm-corrected over the table's rows. None without both students and solvers."""
    ok = d[(d["status"] == "ok") & d["nfe"].notna() & d[metric].notna()]
    means = _means(ok, metric)
    if means.empty or not means["student"].any() or means["student"].all():
        return None
    lower = METRICS.get(metric, True)
    head = ["NFE ≤ N", "best student (NFE)", metric, "best solver (NFE)", metric, f"student − solver "
            f"[{100 * (1 - ALPHA):g} % CI]", "answer"]
    rows, tests, pairs = [], [], []
    for n in sorted(int(x) for x in means["nfe"].unique()):
        within = means[means["nfe"] <= n]
        pick = lambda g: g.loc[g["value"].idxmin() if lower else g["value"].idxmax()] if len(g) else None  # noqa
        st, so = pick(within[within["student"]]), pick(within[~within["student"]])
        if st is None or so is None:
            continue
        a = ok[(ok["label"] == st["label"]) & (ok["nfe"] == st["nfe"])].set_index("seed")[metric]
        b = ok[(ok["label"] == so["label"]) & (ok["nfe"] == so["nfe"])].set_index("seed")[metric]
        res = paired_difference([a[s] - b[s] for s in a.index.intersection(b.index)])
        tests.append(res)
        pairs.append((st["label"], st["nfe"], so["label"], so["nfe"]))
        rows.append([str(n), f"{st['label']} ({int(st['nfe'])})", _fmt(st["value"]), f"{so['label']} ({int(so['nfe'])})",
                     _fmt(so["value"])])
    distinct = list(dict.fromkeys(pairs))  # a budget that adds no new best repeats a comparison: one test
    first = {pair: tests[pairs.index(pair)] for pair in distinct}
    adjusted = dict(zip(distinct, holm([t.p if t is not None else math.nan for t in first.values()])))
    for row, res, pair in zip(rows, tests, pairs):
        p = adjusted[pair]
        if res is None:
            row += ["(one seed)", "unresolved"]
            continue
        row.append(f"{res.mean:+.3g} [{res.lo:+.3g}, {res.hi:+.3g}]" + (f" {MARK}" if p < ALPHA else ""))
        better_student = (res.mean < 0) == lower
        row.append(("student" if better_student else "solver") if p < ALPHA else "unresolved")
    return head, rows


NOTE = ("Within each budget N the best student and the best solver are chosen by their mean over seeds on these "
        f"seeds (so the winner's edge is optimistic), then compared paired (same seeds, same x_T); {MARK} and the "
        f"answer: the difference is nonzero at a family-wise error rate of {ALPHA:g} over this table's distinct "
        "comparisons (paired t-test over seeds, Holm); otherwise unresolved. Seconds are sampling seconds per cell; a student's training is not in "
        "them.")


def pareto_front(x: np.ndarray, y: np.ndarray, lower: bool = True) -> np.ndarray:
    """Indices of the points no other point beats in both x (smaller) and y (smaller if ``lower``), sorted by x."""
    y = y if lower else -y
    order = np.lexsort((y, x))
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def plot_pareto(d: pd.DataFrame, metric: str, title: str, path) -> None:
    """Two panels: mean ``metric`` against NFE and against sampling seconds, students and solvers marked apart, the
    Pareto front as a step line with its points named."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = d[(d["status"] == "ok") & d["nfe"].notna() & d[metric].notna()]
    means = _means(ok, metric)
    lower = METRICS.get(metric, True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, xcol, xlabel in ((axes[0], "nfe", "NFE"), (axes[1], "seconds", "sampling seconds per cell")):
        m = means.dropna(subset=[xcol])
        for student, look in ((False, {"marker": "o", "color": "tab:blue", "label": "solver"}),
                              (True, {"marker": "s", "color": "tab:red", "label": "student"})):
            g = m[m["student"] == student]
            ax.scatter(g[xcol].astype(float), g["value"], s=18, alpha=0.7, **look)
        if len(m):
            front = m.iloc[pareto_front(m[xcol].to_numpy(float), m["value"].to_numpy(float), lower)]
            ax.step(front[xcol].astype(float), front["value"], where="post", color="k", lw=1, label="Pareto front")
            for r in front.itertuples():
                ax.annotate(f"{r.label} ({int(r.nfe)})", (float(getattr(r, xcol)), r.value), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        if metric in ("fid", "solver_error_median", "frechet"):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: student or solver? ({metric}, {'lower' if lower else 'higher'} is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

"""The students' tables of reports/students/README.md from the cells of reports/students/run.sh:
PYTHONPATH=. python reports/students/table.py RESULTS > reports/students/tables.md

FID mean ± the 95 % t half-width over seeds; paired differences on the same seed and x_T with their 95 % t-interval
over seeds; solver_error_median (distance to the teacher's ODE solution from the same x_T), mean over seeds; the
training cost of the network behind each student (pretrained.students.training_cost: optimiser steps, teacher NFE,
wall-clock seconds and threads, the digits-v start included).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import scipy.stats

from bench.report import sampler_labels
from bench.store import ResultsStore
from pretrained.students import training_cost

STUDENTS = ("kd", "pd", "cd", "genie")
LEVEL = 0.95

# (A, NFE) vs (B, NFE): the ordering of A and B the papers report (CIFAR-10 FID, lower is better; figures across
# papers come from different models, so only orderings are compared), and where
ORDERINGS = [
    (("cd", 1), ("pd", 1), "<", "Song et al. 2023, CIFAR-10: CD 3.55, PD 8.34 at 1 step"),
    (("cd", 1), ("kd", 1), "<", "Song et al. 2023: CD 3.55; Luhman & Luhman 2021: KD 9.36"),
    (("pd", 1), ("kd", 1), "<", "Salimans & Ho 2022: PD 9.12; KD 9.36"),
    (("cd", 2), ("pd", 2), "<", "Song et al. 2023: CD 2.93, PD 5.58 at 2 steps"),
    (("cd", 2), ("cd", 1), "<", "Song et al. 2023: CD 2.93 at 2 steps, 3.55 at 1"),
    (("pd", 8), ("ddim", 20), "<", "Salimans & Ho 2022: PD 2.57 at 8 steps; DDIM 6.84 at 20"),
    (("pd", 8), ("dpm_solver", 20), "≈", "PD 2.57 at 8 steps; DPM-Solver 2.87 at 20 (Lu et al. 2022)"),
    (("genie", 10), ("dpm_solver", 10), ">", "GENIE 5.97 (Dockhorn et al. 2022); DPM-Solver 4.70 at 10 NFE"),
    (("genie", 20), ("dpm_solver", 20), "?", "DPM-Solver 2.87 at 20 NFE; no GENIE figure at 20 NFE is quoted here"),
    (("genie", 10), ("ddim[grid=time_quadratic]", 10), "<", "GENIE 5.97; DDIM 13.36 at 10 NFE"),
    (("genie", 20), ("ddim[grid=time_quadratic]", 20), "<", "Dockhorn et al. 2022: GENIE below DDIM at each NFE"),
]


def interval(d: pd.Series) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95 % t-interval of the mean of d over seeds."""
    d = d.dropna()
    m = d.mean()
    h = scipy.stats.t.ppf(0.5 + LEVEL / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
    return m, m - h, m + h


def pm(s: pd.Series) -> str:
    m, lo, _ = interval(s)
    return f"{m:.3g} ± {m - lo:.2g}"


def diff(s: pd.Series) -> str:
    m, lo, hi = interval(s)
    return f"{m:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def cost_cells(sampler: str, nfe: int) -> str:
    c = training_cost(sampler, nfe)
    if c is None:
        return "| | | |"
    return f"| {c['optimiser_steps']} | {c['teacher_nfe'] / 1e3:.0f}k | {c['seconds']:.0f} × {c['threads']} |"


def fids(results: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = ResultsStore(results).read()
    df = df[df.checkpoint == "digits"].copy()
    df["label"] = sampler_labels(df).replace("ddim[grid=time_uniform]", "ddim")  # DDIM's default grid
    return df, df[df.status == "ok"]


def main_table(df: pd.DataFrame, ok: pd.DataFrame) -> None:
    students = [s for s in ok.label.unique() if s in STUDENTS]
    solvers = sorted(set(ok.label) - set(students))
    print(f"| NFE | sampler | FID | Δ vs DDIM | Δ vs best solver | solver_error_median | optimiser steps | "
          f"teacher NFE | seconds × threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for nfe in sorted(df.nfe.unique()):
        cell = ok[ok.nfe == nfe].pivot_table(index="seed", columns="label", values="fid")
        err = ok[ok.nfe == nfe].groupby("label").solver_error_median.mean()
        have = [s for s in solvers if s in cell]
        best = cell[have].mean().idxmin() if have else None
        for s in sorted(set(df[df.nfe == nfe].label), key=lambda s: (s not in students, s)):
            if s not in cell:
                row = df[(df.nfe == nfe) & (df.label == s)].iloc[0]
                print(f"| {nfe} | {s} | {row.status}: {row.error} | | | | | | |")
                continue
            d_ddim = diff(cell[s] - cell["ddim"]) if "ddim" in cell and s != "ddim" else ""
            d_best = diff(cell[s] - cell[best]) if best and s != best else ""
            mark = " (best solver)" if s == best else ""
            print(f"| {nfe} | {s}{mark} | {pm(cell[s])} | {d_ddim} | {d_best} | {err[s]:.3g} {cost_cells(s, nfe)}")


def orderings(ok: pd.DataFrame) -> None:
    by = ok.set_index(["label", "nfe", "seed"]).fid.sort_index()
    print("| A | B | papers | FID(A) - FID(B), 95 % CI over seeds | here | agrees |")
    print("|---|---|---|---|---|---|")
    for (a, na), (b, nb), paper, source in ORDERINGS:
        try:
            d = by.loc[(a, na)] - by.loc[(b, nb)]
        except KeyError:
            print(f"| {a} {na} | {b} {nb} | A {paper} B ({source}) | not run | | |")
            continue
        m, lo, hi = interval(d)
        here = "<" if hi < 0 else ">" if lo > 0 else "≈ (not resolved)"
        agrees = ("n/a" if paper == "?" else "yes" if here[0] == paper or (paper == "≈" and here[0] == "≈")
                  else "no")
        print(f"| {a} at {na} | {b} at {nb} | A {paper} B ({source}) | {m:+.3g} [{lo:+.3g}, {hi:+.3g}] "
              f"(n = {d.notna().sum()}) | A {here} B | {agrees} |")


def main(results: str) -> None:
    df, ok = fids(results)
    seeds = sorted(int(s) for s in ok.seed.unique())
    print(f"Seeds {seeds}, {int(ok.n_samples.iloc[0])} samples per cell.\n")
    main_table(df, ok)
    print()
    orderings(ok)


if __name__ == "__main__":
    main(sys.argv[1])

"""The students' table of reports/students/README.md from a results folder: python reports/students/table.py RESULTS.

FID mean ± std over seeds; paired differences (same seed, same x_T) vs DDIM and vs the best training-free solver at
that NFE (lowest mean FID among the solvers run); solver_error_median (distance to the teacher's ODE solution from the
same x_T, the runner's column), mean over seeds.
"""
from __future__ import annotations

import sys

from bench.store import ResultsStore

STUDENTS = ("kd", "pd", "cd")


def pm(s) -> str:
    return f"{s.mean():.3g} ± {s.std(ddof=1):.2g}" if len(s) > 1 else f"{s.mean():.3g}"


def main(results: str) -> None:
    df = ResultsStore(results).read()
    df = df[df.checkpoint == "digits"]
    ok = df[df.status == "ok"]
    solvers = sorted(set(ok.sampler) - set(STUDENTS))
    print("| NFE | sampler | FID | Δ vs DDIM | Δ vs best solver | solver_error_median |")
    print("|---|---|---|---|---|---|")
    for nfe in sorted(df.nfe.unique()):
        cell = ok[ok.nfe == nfe].pivot_table(index="seed", columns="sampler", values="fid")
        err = ok[ok.nfe == nfe].groupby("sampler").solver_error_median.mean()
        best = cell[[s for s in solvers if s in cell]].mean().idxmin() if any(s in cell for s in solvers) else None
        for s in sorted(set(df[df.nfe == nfe].sampler), key=lambda s: (s not in STUDENTS, s)):
            if s not in cell:
                reason = df[(df.nfe == nfe) & (df.sampler == s)].status.iloc[0]
                print(f"| {nfe} | {s} | {reason} | | | |")
                continue
            d_ddim = pm(cell[s] - cell["ddim"]) if "ddim" in cell and s != "ddim" else ""
            d_best = pm(cell[s] - cell[best]) if best and s != best else ""
            mark = " (best solver)" if s == best else ""
            print(f"| {nfe} | {s}{mark} | {pm(cell[s])} | {d_ddim} | {d_best} | {err[s]:.3g} |")


if __name__ == "__main__":
    main(sys.argv[1])

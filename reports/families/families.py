"""Which solver wins on which family: the same samplers on VP, EDM and flow versions of digits and of gmm-16d.

Usage: PYTHONPATH=. python reports/families/families.py RESULTS > reports/families/README.md
(RESULTS: the folder of the sweep printed at the top of the output). Digits: FID (mean ± std over seeds) and the
winner per family and NFE, with the runner-up's paired FID difference (same seeds, same x_T); gmm-16d: median solver
error against the exact ODE solution (the oracle), deterministic samplers only (solver error means nothing for a
stochastic one).
"""
import contextlib
import io
import sys

import numpy as np

import samplers
from bench.report import read_results

DIGITS = ("digits", "digits-edm", "digits-flow")
MIXTURES = ("gmm-16d", "gmm-16d-edm", "gmm-16d-flow")


def _deterministic(name: str) -> bool:
    return not samplers.get(name).stochastic


def _table(df, checkpoints, metric, fmt, keep=lambda name: True):
    df = df[df["checkpoint"].isin(checkpoints) & df["sampler"].map(keep)]
    nfes = sorted(int(n) for n in df["nfe"].unique())
    cols = [(c, n) for c in checkpoints for n in nfes]
    g = df.groupby(["sampler", "checkpoint", "nfe"])[metric]
    mean, std = g.mean(), g.std()
    best = {col: mean.xs(col, level=("checkpoint", "nfe")).idxmin() for col in cols
            if col in set(zip(mean.index.get_level_values(1), mean.index.get_level_values(2)))}
    print("| sampler | " + " | ".join(f"{c} {n}" for c, n in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in sorted(df["sampler"].unique()):
        cells = []
        for c, n in cols:
            if (s, c, n) not in mean.index or np.isnan(mean[(s, c, n)]):
                cells.append("n/a")
                continue
            v = fmt.format(mean[(s, c, n)], 0.0 if np.isnan(std[(s, c, n)]) else std[(s, c, n)])
            cells.append(f"**{v}**" if best.get((c, n)) == s else v)
        print(f"| {s} | " + " | ".join(cells) + " |")
    return mean, best


def _winners(df, checkpoints, metric, best, paired: bool):
    print("| checkpoint | " + " | ".join(f"NFE {n}" for n in sorted({n for _, n in best})) + " |")
    print("|---|" + "---|" * len({n for _, n in best}))
    for c in checkpoints:
        cells = []
        for n in sorted({n for _, n in best}):
            w = best.get((c, n))
            if w is None:
                cells.append("n/a")
                continue
            if not paired:
                cells.append(f"`{w}`")
                continue
            sub = df[(df["checkpoint"] == c) & (df["nfe"] == n)].pivot_table(index="seed", columns="sampler",
                                                                           values=metric)
            means = sub.mean().drop(w).sort_values()
            second = means.index[0]
            d = sub[second] - sub[w]
            cells.append(f"`{w}` (next `{second}` +{d.mean():.1f} ± {d.std():.1f})")
        print(f"| {c} | " + " | ".join(cells) + " |")


def _captured(fn, *args, **kw):
    """fn's printed table as a string, and its return value (the winners come first in the page)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kw)
    return buf.getvalue(), out


def main(results):
    df = read_results(results)
    df = df[df["status"] == "ok"]
    seeds = sorted(int(s) for s in df["seed"].unique())
    n = sorted(int(v) for v in df[df["checkpoint"].isin(DIGITS)]["n_samples"].unique())
    print("# Which solver wins on which family\n")
    print("Reproduce: `python -m bench run --config reports/families/config.toml --results RESULTS && PYTHONPATH=. "
          "python reports/families/families.py RESULTS > reports/families/README.md`.\n")
    print(f"The same samplers (the default sweep's training-free solvers, plus `ipndm`, `dpmpp_2m_sde`, "
          f"`euler_ancestral`) at NFE 5, 10, 20 on `digits` (VP, eps), `digits-edm` (EDM's preconditioned denoiser) "
          f"and `digits-flow` (flow-matching velocity): the same UNet, split, optimiser and stopping rule in each "
          f"family; seeds {seeds}, {n} samples per digits cell, the same x_T (scaled by each family's prior) for "
          f"every sampler. Each sampler runs with its default grid: a grid defined in time (`time_uniform`, "
          f"`time_quadratic`) is a different grid in log-SNR on each family, which is part of what the table "
          f"measures. `n/a`: an NFE the sampler cannot spend (Heun at odd NFE) or a diverged cell.\n")
    fid_table, (_, best_fid) = _captured(_table, df, DIGITS, "fid", "{:.1f} ± {:.1f}")
    print("## Digits: the winner by FID per family and NFE\n")
    print("Lowest mean FID over seeds; in brackets the runner-up and its FID minus the winner's on the same seeds "
          "(mean ± std over seeds).\n")
    _winners(df, DIGITS, "fid", best_fid, paired=True)
    print("\n## Digits: FID (mean ± std over seeds; best per column in bold)\n")
    print(fid_table)
    err_table, (_, best_err) = _captured(_table, df, MIXTURES, "solver_error_median", "{:.2e}", keep=_deterministic)
    print("## gmm-16d: the winner by solver error per family and NFE (deterministic samplers)\n")
    _winners(df, MIXTURES, "solver_error_median", best_err, paired=False)
    print("\n## gmm-16d: median solver error against the exact ODE solution (best per column in bold)\n")
    print(err_table)
    print("## Digits: median solver error against the 1000-NFE Heun reference (deterministic samplers)\n")
    _table(df, DIGITS, "solver_error_median", "{:.3f}", keep=_deterministic)


if __name__ == "__main__":
    main(sys.argv[1])

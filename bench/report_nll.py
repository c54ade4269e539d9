"""Likelihood rows read as convergence: each NLL estimate beside its distance to the converged value of the same
checkpoint and data points (the exact NLL where the density is known, else the tightest adaptive ODE estimate of
the same seed), with what kind of estimate it is. Estimators are never ranked by their lowest value: a fixed-step
ODE estimate is not a bound and can lie below the converged value by any amount.
"""
from __future__ import annotations

import json
import math

import pandas as pd

NLL_PREFIX = "nll:"
ADAPTIVE_ODE = "nll:ode_"  # adaptive ODE estimators (nfe empty) are the converged reference where nothing exact is
BOUND_KIND = {  # what an estimate is, by estimator name
    "vlb": "upper bound (stochastic: VDM's variational bound, a Monte Carlo estimate over t)",
    "ode_adaptive": "converged ODE estimate (not a bound; the reference where no exact value exists)",
    "ode_fixed": "fixed-step ODE estimate: not a bound (its error has either sign)",
}


def estimate_kind(sampler: str, nfe) -> str:
    """"vlb", "ode_adaptive" or "ode_fixed" (keys of BOUND_KIND) for an nll:* row."""
    name = sampler.removeprefix(NLL_PREFIX)
    if name.startswith("vlb"):
        return "vlb"
    return "ode_adaptive" if nfe is None or pd.isna(nfe) else "ode_fixed"


def _rtol(config: str) -> float:
    try:
        return float(json.loads(config).get("rtol", math.inf))
    except (ValueError, TypeError):
        return math.inf


def references(lik: pd.DataFrame) -> pd.DataFrame:
    """Per (checkpoint, seed, nll_n): the converged value ``ref_bpd``, its SE ``ref_se`` and its name ``ref``.

    The exact NLL of the points when the rows carry it (SE 0); else the adaptive ODE row with the smallest rtol
    (ties: the most NFE). Groups with neither are absent.
    """
    ok = lik[(lik["status"] == "ok") & lik["nll_bpd"].notna()]
    out = []
    for (ck, seed, n), g in ok.groupby(["checkpoint", "seed", "nll_n"], dropna=False):
        exact = g["nll_exact_bpd"].dropna()
        if len(exact):
            out.append((ck, seed, n, float(exact.mean()), 0.0, "exact"))
            continue
        ad = g[g["sampler"].str.startswith(ADAPTIVE_ODE) & g["nfe"].isna()]
        if len(ad):
            ad = ad.assign(_rtol=ad["sampler_config"].map(_rtol)).sort_values(["_rtol", "nfe_counted"],
                                                                              ascending=[True, False])
            best = ad.iloc[0]
            rtol = "" if not math.isfinite(best["_rtol"]) else f", rtol {best['_rtol']:g}"
            out.append((ck, seed, n, float(best["nll_bpd"]), float(best["nll_bpd_se"]),
                        f"{best['sampler'].removeprefix(NLL_PREFIX)}{rtol}"))
    return pd.DataFrame(out, columns=["checkpoint", "seed", "nll_n", "ref_bpd", "ref_se", "ref"])


def with_distance(lik: pd.DataFrame) -> pd.DataFrame:
    """The ok nll:* rows with ``ref_bpd``, ``ref_se``, ``ref``, ``delta_bpd`` = nll_bpd - ref_bpd and ``kind``."""
    ok = lik[(lik["status"] == "ok") & lik["nll_bpd"].notna()].copy()
    ref = references(lik)
    ok = ok.merge(ref, on=["checkpoint", "seed", "nll_n"], how="left")
    ok["delta_bpd"] = ok["nll_bpd"] - ok["ref_bpd"]
    ok["kind"] = [estimate_kind(s, n) for s, n in zip(ok["sampler"], ok["nfe"])]
    return ok


def distance(g: pd.DataFrame) -> tuple[float, float, str]:
    """(mean distance, its SE, how the SE was taken) of one estimator's rows at one NFE.

    Over two or more seeds: the standard error of the per-seed distances (the points are the same on every seed,
    so this is the estimator's own noise). On one seed: sqrt(se^2 + ref_se^2), which ignores that both estimates
    share the points (too wide when they are positively correlated).
    """
    d = g["delta_bpd"].dropna()
    if d.empty:
        return math.nan, math.nan, ""
    if len(d) >= 2:
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), "seeds"
    r = g.loc[d.index].iloc[0]
    return float(d.iloc[0]), float(math.hypot(r["nll_bpd_se"], r["ref_se"])), "unpaired"


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _ref_name(rows: pd.DataFrame) -> str:
    """The reference name an adaptive ODE row would have (``references``), to tell the reference row itself."""
    r = rows.iloc[0]
    rtol = _rtol(r["sampler_config"])
    return f"{r['sampler'].removeprefix(NLL_PREFIX)}" + ("" if not math.isfinite(rtol) else f", rtol {rtol:g}")


def convergence_table(lik: pd.DataFrame) -> tuple[list[str], list, list[list[str]], str]:
    """(estimator labels, columns, cells, note) of one checkpoint: "NLL ± SE (Δ ± SE)" per NFE; no bold anywhere.

    ``lik`` carries a ``label`` column. Adaptive estimators get the column "adaptive" (their NFE in the cell).
    """
    rows = with_distance(lik)
    nfes = sorted(int(n) for n in rows["nfe"].dropna().unique())
    cols = nfes + (["adaptive"] if rows["nfe"].isna().any() else [])
    labels = sorted(lik["label"].unique())
    cells = []
    for lab in labels:
        mine, row = rows[rows["label"] == lab], []
        for c in cols:
            sel = mine[mine["nfe"].isna()] if c == "adaptive" else mine[mine["nfe"] == c]
            if sel.empty:
                failed = lik[(lik["label"] == lab) & ((lik["nfe"].isna()) if c == "adaptive" else (lik["nfe"] == c))]
                row.append("" if failed.empty else str(failed["status"].iloc[0]))
                continue
            text = f"{_fmt(sel['nll_bpd'].mean())} ± {_fmt(sel['nll_bpd_se'].mean())}"
            if c == "adaptive":
                text += f" @{sel['nfe_counted'].mean():.0f} NFE"
            d, se, how = distance(sel)
            if (sel["ref"] == _ref_name(sel)).all() and (sel["delta_bpd"] == 0).all():
                text += " (the converged value)"
            elif math.isfinite(d):
                text += f" (Δ {d:+.3g} ± {_fmt(se)}{'†' if how == 'unpaired' else ''})"
            row.append(text)
        cells.append(row)
    ref = rows.dropna(subset=["ref"])
    names = sorted(ref["ref"].unique())
    note = ("NLL (bits/dim) ± its SE over data; Δ = estimate − converged value of the same points and seed "
            f"({', '.join(names) if names else 'none found'}; mean over seeds ± SE over seeds; † one seed: "
            "unpaired SE). Rows are not ranked: a lower NLL is not better here, only closer to Δ = 0 is more "
            "converged. Kinds: " + "; ".join(f"{lab}: {BOUND_KIND[k]}" for lab, k in
                                            sorted({(l, estimate_kind(s, n)) for l, s, n in
                                                    zip(rows["label"], rows["sampler"], rows["nfe"])})) + ".")
    return labels, cols, cells, note


def plot_convergence(lik: pd.DataFrame, title: str, path) -> None:
    """Left: NLL against NFE per estimator (mean ± SE over seeds) with the converged value as a line (band: its SE).
    Right: |Δ| to it against NFE, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = with_distance(lik)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.cm.tab10.colors
    ref = rows.dropna(subset=["ref_bpd"])
    if len(ref):
        r, se = ref["ref_bpd"].mean(), ref["ref_se"].mean()
        ax.axhline(r, color="k", lw=1, label=f"converged: {', '.join(sorted(ref['ref'].unique()))}")
        if se > 0:
            ax.axhspan(r - se, r + se, color="k", alpha=0.1)
    for k, (lab, g) in enumerate(rows.groupby("label")):
        c = colors[k % 10]
        fixed = g[g["nfe"].notna()]
        if len(fixed):
            agg = fixed.groupby("nfe").agg(m=("nll_bpd", "mean"), se=("nll_bpd_se", "mean"),
                                           d=("delta_bpd", lambda s: s.abs().mean()))
            x = agg.index.astype(float)
            ax.errorbar(x, agg["m"], yerr=agg["se"], marker="o", ms=3, capsize=2, color=c,
                        label=f"{lab} ({BOUND_KIND[estimate_kind(lab, 1)].split(' (')[0].split(':')[0]})")
            if agg["d"].notna().any():
                ax2.plot(x, agg["d"], marker="o", ms=3, color=c, label=lab)
        adaptive = g[g["nfe"].isna()]
        if len(adaptive):
            ax.scatter(adaptive["nfe_counted"], adaptive["nll_bpd"], marker="*", s=70, color=c,
                       label=f"{lab} (adaptive)")
            d = adaptive["delta_bpd"].abs()
            if d.notna().any() and (d > 0).any():
                ax2.scatter(adaptive["nfe_counted"], d.where(d > 0), marker="*", s=70, color=c)
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("NFE")
        a.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("NLL (bits/dim)")
    ax.set_title("NLL against NFE (line: converged value)")
    if ax2.has_data():
        ax2.set_yscale("log")
    ax2.set_ylabel("|NLL − converged| (bits/dim)")
    ax2.set_title("distance to the converged value")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def likelihood_rows(nll: pd.DataFrame) -> list[dict]:
    """Cross-checkpoint rows of nll:* rows carrying a ``label``: checkpoint, estimator, NFE, NLL ± SE, exact value,
    distance to the converged value ± SE, that value's name, the estimate's kind, seconds."""
    rows = with_distance(nll)
    out = []
    for (ck, lab), g in rows.groupby(["checkpoint", "label"]):
        for nfe, h in g.groupby(g["nfe"].astype("Float64").fillna(-1)):
            d, se, how = distance(h)
            is_ref = (h["ref"] == _ref_name(h)).all() and (h["delta_bpd"] == 0).all()
            exact = h["nll_exact_bpd"].dropna()
            out.append({"checkpoint": str(ck), "estimator": str(lab).removeprefix(NLL_PREFIX),
                        "nfe": f"{h['nfe_counted'].mean():.0f}" + ("" if nfe >= 0 else " (adaptive)"),
                        "nll": f"{_fmt(h['nll_bpd'].mean())} ± {_fmt(h['nll_bpd_se'].mean())}",
                        "exact": _fmt(exact.mean()) if len(exact) else "",
                        "delta": "0 (the converged value)" if is_ref else "" if not math.isfinite(d) else f"{d:+.3g} ± {_fmt(se)}" + ("†" if how == "unpaired" else ""),
                        "ref": ", ".join(sorted(h["ref"].dropna().unique())),
                        "kind": BOUND_KIND[h["kind"].iloc[0]].split(" (")[0],
                        "seconds": _fmt(h["wall_clock_s"].mean())})
    return out

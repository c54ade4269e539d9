"""Reports: per checkpoint, metric-vs-NFE plots and paper-style tables (Markdown and LaTeX booktabs); guided cells
(a ``guidance`` scale) in their own section: metrics against the guidance scale, per NFE.

Every file is written inside the output folder: a checkpoint's folder name is the checkpoint name when
that is a plain file name, else ``pretrained.safe_name`` of it (checkpoint names come from results files,
which anyone can write), and each path is checked with ``Path.resolve`` (a symlink cannot lead out).
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import METRICS
from .stats import ALPHA, MARK, holm, paired_difference, t_halfwidth
from .store import ResultsStore

LOG_METRICS = {"solver_error_median", "solver_error_mean", "frechet", "fid", "wall_clock_s"}  # KID can be < 0
TABLE_METRICS = ("fid", "fid_inf", "kid", "precision", "recall", "density", "coverage", "solver_error_median",
                 "frechet", "loglik")
PLOT_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage", "solver_error_median", "frechet", "loglik",
                "wall_clock_s")
NLL_PREFIX = "nll:"  # likelihood estimators' rows (bench.grid.NLL_PREFIX): reported in their own table and plot
FID_AT = ("dpm_solver++_2m", 20)  # the likelihood table shows each checkpoint's FID at this sampler and NFE
STATUS_MARK = {"unsupported": "n/a", "diverged": "div.", "error": "err"}
DEFAULT_REPORT_DIR = "reports"  # `bench report` writes to <results>/reports unless --out names another folder
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used as a folder name as it is
GUIDANCE_METRICS = ("fid", "accuracy", "out_of_range")  # guided cells: against the guidance scale
PAIRED_BASELINE = "ddim"  # paired differences are taken against this sampler, seed by seed


def default_out(results_dir: str | Path) -> Path:
    """The default report folder: inside the results, so a report never overwrites the committed reports/."""
    return Path(results_dir) / DEFAULT_REPORT_DIR


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """The rows of a results folder; a missing, empty or non-folder path is a ValueError saying what to run."""
    path = Path(results_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"results {results_dir} is a file, not a results folder (written by `python -m bench run "
                         f"--results DIR`)")
    df = ResultsStore(path).read() if path.exists() else pd.DataFrame()
    if df.empty:
        raise ValueError(f"no results in {results_dir}; run `python -m bench run --results {results_dir}` first")
    return df


def checkpoint_folder(name) -> str:
    """The report folder name of a checkpoint: the name itself when plain (reports/digits), else its safe name."""
    name = "<NA>" if pd.isna(name) else str(name)
    if PLAIN_NAME.fullmatch(name):
        return name
    from pretrained import safe_name  # imports torch: only for names that need it

    return safe_name(name)


def _inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves (symlinks followed) to a place inside ``root``."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"report path {path} resolves to {path.resolve()}, outside the report folder {root}; "
                         "remove the link or choose another --out")
    return path


def sampler_labels(df: pd.DataFrame) -> pd.Series:
    """The sampler name, plus the options that differ where one name appears with several configs."""
    labels = df["sampler"].astype(str).copy()
    for name, group in df.groupby("sampler"):
        configs = group["sampler_config"].unique()
        if len(configs) < 2:
            continue
        parsed = {c: json.loads(c) for c in configs}
        varying = sorted(k for k in set().union(*parsed.values()) if len({json.dumps(p.get(k)) for p in parsed.values()}) > 1)
        for c in configs:
            tag = ",".join(f"{k}={parsed[c].get(k)}" for k in varying)
            labels[(df["sampler"] == name) & (df["sampler_config"] == c)] = f"{name}[{tag}]"
    return labels


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def metric_table(df: pd.DataFrame, metric: str, *, guided: bool = False) -> tuple[list[str], list, list[list[str]], dict]:
    """(row labels, NFE columns, cell texts, bold positions) of one metric; mean ± half-width of its (1 - ALPHA) t
    interval over seeds (one seed: the mean alone).

    ``guided``: a column per (NFE, guidance scale), headed "NFE n, s=g".
    """
    fixed = df[df["nfe"].notna()]
    if guided:
        pairs = sorted({(int(n), float(g)) for n, g in zip(fixed["nfe"], fixed["guidance"])})
        nfes = [f"NFE {n}, s={g:g}" for n, g in pairs]
        masks = [(fixed["nfe"] == n) & (fixed["guidance"] == g) for n, g in pairs]
    else:
        nfes = sorted(int(n) for n in fixed["nfe"].unique())
        masks = [fixed["nfe"] == n for n in nfes]
    labels = sorted(fixed["label"].unique())
    lower_better = METRICS.get(metric, True)
    cells, means = [], np.full((len(labels), len(nfes)), np.nan)
    for i, lab in enumerate(labels):
        row = []
        for j, mask in enumerate(masks):
            sel = fixed[(fixed["label"] == lab) & mask]
            ok = sel[sel["status"] == "ok"][metric].dropna()
            if len(ok):
                means[i, j] = ok.mean()
                partial = f" ({len(ok)}/{len(sel)} ok)" if len(ok) < len(sel) else ""
                row.append(_fmt(ok.mean()) + (f" ± {_fmt(t_halfwidth(ok))}" if len(ok) > 1 else "") + partial)
            elif len(sel):
                row.append(STATUS_MARK.get(sel["status"].iloc[0], str(sel["status"].iloc[0])))
            else:
                row.append("")
        cells.append(row)
    bold = {}
    for j in range(len(nfes)):
        col = means[:, j]
        if np.isfinite(col).any():
            bold[j] = int(np.nanargmin(col) if lower_better else np.nanargmax(col))
    return labels, nfes, cells, bold


def paired_table(df: pd.DataFrame, metric: str, baseline: str = PAIRED_BASELINE):
    """Per sampler and NFE: mean over seeds of (metric - baseline's metric on the same seed and x_T) with its
    (1 - ALPHA) t interval.

    Returns None without the baseline or with fewer than two seeds. A difference is marked (``stats.MARK``) when its
    Holm-adjusted p-value (paired t-test over seeds; Holm over every difference of this table) is below ALPHA.
    """
    ok = df[(df["status"] == "ok") & df["nfe"].notna()]
    base = ok[ok["label"] == baseline].set_index(["nfe", "seed"])[metric]
    if base.empty or ok["seed"].nunique() < 2:
        return None
    nfes = sorted(int(n) for n in ok["nfe"].unique())
    labels = sorted(l for l in ok["label"].unique() if l != baseline)
    tests, means = {}, np.full((len(labels), len(nfes)), np.nan)
    for i, lab in enumerate(labels):
        for j, nfe in enumerate(nfes):
            mine = ok[(ok["label"] == lab) & (ok["nfe"] == nfe)].set_index("seed")[metric]
            res = paired_difference([mine[s] - base[(nfe, s)] for s in mine.index if (nfe, s) in base.index])
            if res is not None:
                tests[(i, j)] = res
                means[i, j] = res.mean
    adjusted = dict(zip(tests, holm([t.p for t in tests.values()])))
    cells = [["" if (i, j) not in tests else paired_text(tests[(i, j)], adjusted[(i, j)])
              for j in range(len(nfes))] for i in range(len(labels))]
    bold = {j: int(np.nanargmin(means[:, j]) if METRICS.get(metric, True) else np.nanargmax(means[:, j]))
            for j in range(len(nfes)) if np.isfinite(means[:, j]).any()}
    return labels, nfes, cells, bold


def paired_text(res, adjusted_p: float) -> str:
    """"mean [lo, hi]" of a paired difference, with the mark when its Holm-adjusted p-value is below ALPHA."""
    return f"{res.mean:+.3g} [{res.lo:+.3g}, {res.hi:+.3g}]" + (f" {MARK}" if adjusted_p < ALPHA else "")


MARK_NOTE = (f"Mean over seeds of the paired difference (same seed, same x_T) [{100 * (1 - ALPHA):g} % t interval over "
             f"seeds]; {MARK} = the difference is nonzero at a family-wise error rate of {ALPHA:g} over all the "
             "differences of this table (paired t-test over seeds, Holm-corrected).")


def sample_grid(df: pd.DataFrame, store: ResultsStore, path: Path, per_cell: int = 16, guided: bool = False) -> bool:
    """A PNG of kept samples (seed = the smallest), rows samplers, columns NFE (``guided``: NFE and guidance scale);
    image checkpoints only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["nfe"].notna() & (df["seed"] == df["seed"].min())]
    column = (lambda r: (int(r.nfe), float(r.guidance))) if guided else (lambda r: int(r.nfe))
    labels, nfes = sorted(ok["label"].unique()), sorted({column(r) for r in ok.itertuples()})
    tiles = {}
    for r in ok.itertuples():
        x = store.load_samples(r.cell_id)
        if x is not None and x.ndim == 4:
            k = int(np.sqrt(min(per_cell, len(x))))
            x = x[: k * k, 0]  # first channel
            h, w = x.shape[1:]
            tiles[(r.label, column(r))] = x.reshape(k, k, h, w).transpose(0, 2, 1, 3).reshape(k * h, k * w)
    if not tiles:
        return False
    fig, axes = plt.subplots(len(labels), len(nfes), figsize=(1.6 * len(nfes) + 2.5, 1.6 * len(labels)),
                             squeeze=False)
    for i, lab in enumerate(labels):
        for j, nfe in enumerate(nfes):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (lab, nfe) in tiles:
                ax.imshow(np.clip(tiles[(lab, nfe)], -1, 1), cmap="gray", vmin=-1, vmax=1)
            if i == 0:
                ax.set_title(f"NFE {nfe[0]}, s={nfe[1]:g}" if guided else f"NFE {nfe}", fontsize=9)
            if j == 0:
                ax.set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _column(n) -> str:
    """A table column: "NFE n" for an NFE, a given text as it is."""
    return n if isinstance(n, str) else f"NFE {n}"


def to_markdown(labels, nfes, cells, bold, metric) -> str:
    head = "| sampler | " + " | ".join(_column(n) for n in nfes) + " |"
    lines = [head, "|" + "---|" * (len(nfes) + 1)]
    for i, lab in enumerate(labels):
        texts = [f"**{c}**" if bold.get(j) == i else c for j, c in enumerate(cells[i])]
        lines.append(f"| {lab} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def to_latex(labels, nfes, cells, bold, metric) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("[", "{[}").replace("]", "{]}")
    lines = [r"\begin{tabular}{l" + "r" * len(nfes) + "}", r"\toprule",
             "Sampler & " + " & ".join(esc(_column(n)) for n in nfes) + r" \\", r"\midrule"]
    for i, lab in enumerate(labels):
        texts = [rf"\textbf{{{esc(c)}}}" if bold.get(j) == i else esc(c) for j, c in enumerate(cells[i])]
        lines.append(esc(lab) + " & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_metrics(df: pd.DataFrame, metrics: list[str], title: str, path: Path):
    """One panel per metric against NFE, one line per sampler (mean over seeds, error bars = std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.9 * nrow), squeeze=False)
    ok = df[df["status"] == "ok"]
    colors, styles = plt.cm.tab20.colors, ("-", "--", ":")
    for ax, metric in zip(axes.flat, metrics):
        for k, (lab, g) in enumerate(ok.groupby("label")):
            look = {"color": colors[k % 20], "linestyle": styles[k // 20 % 3]}
            fixed = g[g["nfe"].notna()]
            if len(fixed):
                agg = fixed.groupby("nfe")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
                ax.errorbar(agg.index.astype(float), agg["mean"], yerr=agg["std"].fillna(0), marker="o", ms=3,
                            capsize=2, label=lab, **look)
            adaptive = g[g["nfe"].isna()]
            if len(adaptive):
                ax.scatter(adaptive["nfe_counted"], adaptive[metric], marker="*", s=60, label=f"{lab} (adaptive)",
                           color=look["color"])
        ax.set_xscale("log")
        nfes = sorted(float(n) for n in df["nfe"].dropna().unique())
        ax.set_xticks(nfes, [f"{n:g}" for n in nfes])
        ax.minorticks_off()
        if metric in LOG_METRICS:
            ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(metric)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_guidance(df: pd.DataFrame, metrics: list[str], title: str, path: Path):
    """Panels: a row per NFE, a column per metric, against the guidance scale; a line per sampler (mean over seeds,
    error bars = std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["nfe"].notna()]
    nfes = sorted(int(n) for n in ok["nfe"].unique())
    scales = sorted(float(g) for g in df["guidance"].unique())
    fig, axes = plt.subplots(len(nfes), len(metrics), figsize=(5.0 * len(metrics), 3.7 * len(nfes)), squeeze=False)
    colors, styles = plt.cm.tab10.colors, ("-", "--", ":")
    for i, nfe in enumerate(nfes):
        for ax, metric in zip(axes[i], metrics):
            for k, (lab, g) in enumerate(ok[ok["nfe"] == nfe].groupby("label")):
                agg = g.groupby("guidance")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
                ax.errorbar(agg.index.astype(float), agg["mean"], yerr=agg["std"].fillna(0), marker="o", ms=3,
                            capsize=2, label=lab, color=colors[k % 10], linestyle=styles[k // 10 % 3])
            if min(scales) > 0:
                ax.set_xscale("log", base=2)
            ax.set_xticks(scales, [f"{g:g}" for g in scales])
            ax.minorticks_off()
            if metric in LOG_METRICS:
                ax.set_yscale("log")
            ax.set_xlabel("guidance scale s")
            ax.set_title(f"{metric}, NFE {nfe}")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def guidance_summary(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per sampler, NFE and guidance scale: mean and std over seeds of each metric, seeds ok of all."""
    ok = df[(df["status"] == "ok") & df["nfe"].notna()]
    agg = ok.groupby(["label", "nfe", "guidance"])[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{stat}" for m, stat in agg.columns]
    n_ok = ok.groupby(["label", "nfe", "guidance"]).size().rename("seeds_ok")
    n_all = df[df["nfe"].notna()].groupby(["label", "nfe", "guidance"]).size().rename("seeds")
    out = pd.concat([agg, n_ok, n_all], axis=1).reset_index().rename(columns={"label": "sampler"})
    return out.assign(seeds_ok=out["seeds_ok"].fillna(0).astype(int))


def _guidance_section(guided: pd.DataFrame, title: str, out_dir: Path, folder: Path,
                      store: ResultsStore) -> tuple[list[Path], str]:
    """Guided cells: plot, CSV summary and tables of GUIDANCE_METRICS against the guidance scale."""
    ok = guided[guided["status"] == "ok"]
    present = [m for m in GUIDANCE_METRICS if ok[m].notna().any()]
    text = ["## Guided sampling: metrics against the classifier-free guidance scale s\n\n"
            f"{len(guided)} guided cells. accuracy: the classifier's label = the requested label (higher is better); "
            "out_of_range: share of samples with a pixel beyond the data range by more than the checkpoint's tolerance "
            "(digits: one level, 2/16), before clipping; FID against the "
            f"class-balanced reference. Tables: mean over seeds ± the half-width of its {100 * (1 - ALPHA):g} % t "
            "interval; "
            "plot and guidance.csv: mean and std over seeds.\n"]
    files = []
    if not present:
        return files, "\n".join(text)
    path = _inside(out_dir, folder / "guidance.png")
    plot_guidance(guided, present, f"{title}: guided sampling", path)
    files.append(path)
    text.append("![guidance](guidance.png)\n")
    path = _inside(out_dir, folder / "guidance.csv")
    guidance_summary(guided, present).to_csv(path, index=False, float_format="%.6g")
    files.append(path)
    for metric in present:
        table = metric_table(guided, metric, guided=True)
        for suffix, fmt in ((".md", to_markdown), (".tex", to_latex)):
            path = _inside(out_dir, folder / f"guidance_{metric}{suffix}")
            path.write_text(fmt(*table, metric))
            files.append(path)
        text.append(f"### {metric} ({'lower' if METRICS[metric] else 'higher'} is better)\n\n"
                    + to_markdown(*table, metric))
    path = _inside(out_dir, folder / "guidance_samples.png")
    if sample_grid(guided, store, path, guided=True):
        files.append(path)
        text.append("### Samples (first seed; rows samplers, columns NFE and scale; shown clipped to [-1, 1])\n\n"
                    "![samples](guidance_samples.png)\n")
    return files, "\n".join(text)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write plots and tables for every checkpoint in the results; returns the files written.

    Args:
        results_dir: a results folder written by ``bench run``.
        out_dir: the report folder (default: ``default_out(results_dir)``); one subfolder per checkpoint,
            named by ``checkpoint_folder``. Nothing is written outside it, and nothing at all unless every file
            of the report could be made (they are made in ``staging_folder`` first).
    """
    from .preflight import check_output_folder

    df = read_results(results_dir)
    store = ResultsStore(results_dir)
    out_dir = Path(default_out(results_dir) if out_dir is None else out_dir)
    check_output_folder(out_dir, "report --out")
    seen = {}  # every folder is checked before anything is written
    for ck in df["checkpoint"].unique():
        name = checkpoint_folder(ck)
        if name.casefold() in seen:
            raise ValueError(f"checkpoints {seen[name.casefold()]!r} and {ck!r} would share the report folder "
                             f"{name!r} (file systems that ignore case included); rename one")
        seen[name.casefold()] = ck
        _inside(out_dir, out_dir / name)
    stage = staging_folder(out_dir)
    try:
        staged = _render(df, store, stage)
        return _publish(stage, out_dir, staged)
    except OSError as exc:
        from .store import StoreWriteError
        raise StoreWriteError(exc.errno or errno.EIO, f"cannot write the report to {out_dir} ({exc.strerror or exc}); "
                              f"nothing of it was written") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def staging_folder(out_dir: Path) -> Path:
    """A hidden folder of this process on the same file system as ``out_dir`` (in it, or in its nearest existing
    ancestor): a report is rendered there whole, then moved into ``out_dir``, so a failure leaves nothing behind."""
    from .atomic import HOST
    from .preflight import existing_ancestor

    return existing_ancestor(out_dir) / f".report.{HOST}.{os.getpid()}.staging"


def _publish(stage: Path, out_dir: Path, staged: list[Path]) -> list[Path]:
    """Move every staged file to its place under ``out_dir`` (each destination checked first); the files written."""
    dests = [_inside(out_dir, out_dir / p.relative_to(stage)) for p in staged]
    for src, dest in zip(staged, dests):
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    return dests


def _render(df: pd.DataFrame, store: ResultsStore, out_dir: Path) -> list[Path]:
    """Every file of the report under ``out_dir`` (a staging folder); the files written."""
    from .config import saved_configs

    written = []
    made_by = [f"Made by `python -m bench run --config {path}` (kept in the results folder as "
               f"`configs/{copy}`).\n" for path, copy in saved_configs(store.dir)]
    for ck, d_all in df.groupby("checkpoint", dropna=False):
        d_all = d_all.assign(label=sampler_labels(d_all))
        is_nll = d_all["sampler"].str.startswith(NLL_PREFIX).fillna(False).astype(bool)
        is_guided = d_all["guidance"].notna()
        d, lik, guided = d_all[~is_nll & ~is_guided], d_all[is_nll], d_all[is_guided]
        ok = d[d["status"] == "ok"]
        present = [m for m in PLOT_METRICS if ok[m].notna().any()]
        tabled = [m for m in TABLE_METRICS if m in ok and ok[m].notna().any()]
        folder = _inside(out_dir, out_dir / checkpoint_folder(ck))
        folder.mkdir(parents=True, exist_ok=True)
        sampled = d_all[~is_nll]
        parts = [f"# {ck}\n", f"{len(sampled)} cells, seeds {sorted(d_all['seed'].unique().tolist())}, "
                 f"{int(sampled['n_samples'].iloc[0]) if len(sampled) else 0} samples per cell. Tables: mean over "
                 f"seeds ± the half-width of its {100 * (1 - ALPHA):g} % t interval over seeds; best mean per column in bold "
                 "(sampler metrics only, never likelihoods); n/a = NFE not supported, div. = diverged, err = error. Plots: "
                 "mean ± std over seeds.\n"] + made_by
        if present:
            parts.append("![metrics](metrics.png)\n")
            plot_metrics(d, present, str(ck), _inside(out_dir, folder / "metrics.png"))
            written.append(folder / "metrics.png")
        for metric in tabled:
            table = metric_table(d, metric)
            for suffix, fmt in ((".md", to_markdown), (".tex", to_latex)):
                path = _inside(out_dir, folder / f"{metric}{suffix}")
                path.write_text(fmt(*table, metric))
                written.append(path)
            parts.append(f"## {metric} ({'lower' if METRICS[metric] else 'higher'} is better)\n\n" + to_markdown(*table, metric))
        primary = next((m for m in ("fid", "solver_error_median") if m in tabled), None)
        paired = paired_table(d, primary) if primary else None
        if paired is not None:
            _inside(out_dir, folder / f"{primary}_paired.md").write_text(to_markdown(*paired, primary))
            written.append(folder / f"{primary}_paired.md")
            parts.append(f"## {primary}: paired difference to {PAIRED_BASELINE} (same seed, same x_T)\n\n"
                         f"{MARK_NOTE}\n\n" + to_markdown(*paired, primary))
        if primary:
            written += _student_section(d, primary, str(ck), out_dir, folder, parts)
        if sample_grid(d, store, _inside(out_dir, folder / "samples.png")):
            written.append(folder / "samples.png")
            parts.append("## Samples (first seed; rows samplers, columns NFE)\n\n![samples](samples.png)\n")
        if len(lik):
            folder_files, text = _likelihood_section(lik, str(ck), out_dir, folder)
            written += folder_files
            parts.append(text)
        if len(guided):
            folder_files, text = _guidance_section(guided, str(ck), out_dir, folder, store)
            written += folder_files
            parts.append(text)
        bad = d_all[d_all["status"] != "ok"]
        if len(bad):
            parts.append("## Cells that did not finish ok\n\n| sampler | NFE | guidance | seed | status | reason |\n"
                         "|---|---|---|---|---|---|\n"
                         + "".join(f"| {r.label} | {r.nfe} | {'' if pd.isna(r.guidance) else f'{r.guidance:g}'} | "
                                   f"{r.seed} | {r.status} | {str(r.error)[:120]} |\n" for r in bad.itertuples()))
        _inside(out_dir, folder / "README.md").write_text("\n".join(parts))
        written.append(folder / "README.md")
    nll = df[df["sampler"].str.startswith(NLL_PREFIX).fillna(False).astype(bool) & (df["status"] == "ok")]
    if len(nll):
        for suffix, fmt in ((".md", _rows_markdown), (".tex", _rows_latex)):
            path = _inside(out_dir, out_dir / f"likelihood{suffix}")
            path.write_text(fmt(*likelihood_table(df)))
            written.append(path)
    return written


def _student_section(d: pd.DataFrame, metric: str, title: str, out_dir: Path, folder: Path, parts: list) -> list:
    """"Student or solver?" (``bench.report_pareto``): the best of each within every NFE budget, and the Pareto
    plot; nothing without both students and solvers."""
    from .report_pareto import NOTE, plot_pareto, student_or_solver

    table = student_or_solver(d, metric)
    if table is None:
        return []
    md = _rows_markdown(*table)
    path = _inside(out_dir, folder / "student_or_solver.md")
    path.write_text(md)
    plot = _inside(out_dir, folder / "pareto.png")
    plot_pareto(d, metric, title, plot)
    parts.append(f"## Student or solver? Best at NFE ≤ N by {metric}\n\n{NOTE}\n\n{md}\n![pareto](pareto.png)\n")
    return [path, plot]


def _likelihood_section(lik: pd.DataFrame, title: str, out_dir: Path, folder: Path) -> tuple[list[Path], str]:
    """One checkpoint's likelihood estimators as convergence (``bench.report_nll``): NLL against NFE with the
    converged value, and a table of estimates with their distance to it; never ranked."""
    from .report_nll import convergence_table, plot_convergence

    files, text = [], ["## nll_bpd: held-out NLL in bits/dim, as convergence to the converged value\n"]
    ok = lik[lik["status"] == "ok"]
    if ok["nll_bpd"].notna().any():
        path = _inside(out_dir, folder / "nll.png")
        plot_convergence(lik, f"{title}: likelihood", path)
        files.append(path)
        text.append("![nll](nll.png)\n")
        labels, cols, cells, note = convergence_table(lik)
        table = (labels, cols, cells, {})  # no bold: estimators are not ranked by their value
        for suffix, fmt in ((".md", to_markdown), (".tex", to_latex)):
            path = _inside(out_dir, folder / f"nll_bpd{suffix}")
            path.write_text(fmt(*table, "nll_bpd"))
            files.append(path)
        text.append(note + "\n\n" + to_markdown(*table, "nll_bpd"))
    return files, "\n".join(text)


def likelihood_table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Rows checkpoint x estimator (x NFE): NLL bits/dim (mean over seeds ± SE over data), the exact value, the
    distance to the converged value (``bench.report_nll``) ± SE, that value, the kind of estimate (bound or not),
    seconds, FID.

    The FID column is the checkpoint's FID at FID_AT (same seeds), so likelihood and sample quality sit side by side.
    """
    from .report_nll import likelihood_rows

    head = ["checkpoint", "estimator", "NFE", "NLL (bits/dim)", "exact", "Δ to converged", "converged value", "kind",
            "seconds", f"FID ({FID_AT[0]}, {FID_AT[1]})"]
    ok = df[df["status"] == "ok"]
    nll = ok[ok["sampler"].str.startswith(NLL_PREFIX).fillna(False).astype(bool)].assign(
        label=lambda d: sampler_labels(d))
    rows = []
    for r in likelihood_rows(nll):
        fid = ok[(ok["checkpoint"] == r["checkpoint"]) & (ok["sampler"] == FID_AT[0]) & (ok["nfe"] == FID_AT[1])]["fid"]
        fid = fid.dropna()
        rows.append([r["checkpoint"], r["estimator"], r["nfe"], r["nll"], r["exact"], r["delta"], r["ref"], r["kind"],
                     r["seconds"], _fmt(fid.mean()) if len(fid) else ""])
    return head, rows


def _rows_markdown(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _rows_latex(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$")
    return "\n".join([r"\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", r"\toprule",
                      " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
                     + [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
                     + [r"\bottomrule", r"\end{tabular}"]) + "\n"

"""Tables of the digits sweep: FID paired with DDIM (same seeds, same x_T), solver error and wall-clock per sample.

Usage: PYTHONPATH=. python reports/genie/paired.py RESULTS > reports/genie/digits_paired.md
(RESULTS: the folder of `python -m bench run --checkpoint digits ... --results RESULTS`).
"""
import json
import sys

import samplers

from bench.report import read_results

BASE = "ddim[grid=time_quadratic]"  # the same grid as genie's default: the first-order method GENIE extends
METRICS = (("fid", "{:.1f} ± {:.1f}"), ("paired", "{:+.1f} ± {:.1f}"), ("solver_error_median", "{:.3f} ± {:.3f}"))


def label(row) -> str:
    """The sampler with the options that differ from its registered defaults, e.g. genie[afs=True]."""
    spec = samplers.describe(row["sampler"])
    defaults = {**spec.defaults, **spec.fixed}
    changed = {k: v for k, v in json.loads(row["sampler_config"]).items() if defaults.get(k) != v}
    return row["sampler"] + (f"[{', '.join(f'{k}={v}' for k, v in sorted(changed.items()))}]" if changed else "")


def main(results):
    df = read_results(results)
    df = df[(df["status"] == "ok") & (df["checkpoint"] == "digits")].copy()
    df["run"] = df.apply(label, axis=1)
    base_name = BASE
    nfes = sorted(df["nfe"].unique())
    base = df[df["run"] == base_name].set_index(["nfe", "seed"])["fid"]
    print(f"Seeds {sorted(int(s) for s in df['seed'].unique())}, {int(df['n_samples'].iloc[0])} samples per cell; "
          f"mean ± std over seeds. paired: FID minus the FID of {base_name} on the same seed (same x_T), mean ± std "
          "of the differences.\n")
    for metric, fmt in METRICS:
        print(f"## {metric}\n")
        print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
        print("|---|" + "---|" * len(nfes))
        for run in sorted(df["run"].unique()):
            cells = []
            for n in nfes:
                sub = df[(df["run"] == run) & (df["nfe"] == n)]
                if sub.empty:
                    cells.append("n/a")
                    continue
                if metric == "paired":
                    v = sub.apply(lambda r: r["fid"] - base.get((n, r["seed"]), float("nan")), axis=1)
                else:
                    v = sub[metric]
                cells.append(fmt.format(v.mean(), v.std()))
            print(f"| {run} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])

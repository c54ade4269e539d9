"""FID's small-sample bias on the shipped digits reference (300 images), measured; and what the new feature metrics
cost per cell.

    OMP_NUM_THREADS=1 python reports/fid_bias/measure_bias.py [--results DIR] [--out reports/fid_bias/bias.md]

bias.md was made with RUN (below) into results/fid-bias, then --results results/fid-bias --out reports/fid_bias/bias.md.

1. The floor: FID of real held-out digits (300 images the classifier and the UNet never saw) against the reference,
   at subset sizes N (20 random subsets each), and FID-infinity of the same images with the harness's estimator
   (``bench.metrics.fid_bias``), with its spread over 20 subset seeds.
2. With --results DIR (a digits run): per sampler and NFE, FID and FID-infinity over the seeds, so a table can say
   which differences are larger than the bias.
3. Seconds per cell that PRDC and FID-infinity add to a 500-sample digits cell (--rgb-cost: and on Inception-sized
   features).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pretrained
from bench.metrics import fid as fidmod
from bench.metrics import fid_bias
from pretrained.data import digits_split

RUN = ("python -m bench run --checkpoint digits --sampler ddim dpm_solver++_3m --nfe 5 10 20 --seeds 0 1 2 "
       "--n-samples 500 --threads 1 --results results/fid-bias")
SIZES = (50, 100, 150, 200, 250, 300)
DRAWS = 20


def floor_table(ck, cache) -> tuple[list[str], dict]:
    ref = fidmod.reference_state(ck, cache_dir=cache)
    stats = fidmod._statistics(ref)
    x = digits_split("holdout")[0]
    acc = fidmod.FidAccumulator(ck)
    acc.update(x, range(len(x)))
    f = acc.state()["kid_features"]
    g = torch.Generator().manual_seed(1)
    lines = ["| held-out images N | FID against the 300 reference images (mean +- sd over 20 subsets) |", "|---|---|"]
    for n in SIZES:
        v = fid_bias.frechet_distances(f, [torch.randperm(len(f), generator=g)[:n] for _ in range(DRAWS)],
                                       stats["mu"], stats["sigma"])
        lines.append(f"| {n} | {np.mean(v):.1f} +- {np.std(v):.1f} |" if n < len(f) else f"| {n} | {v[0]:.1f} |")
    row = fid_bias.fid_infinity(f, stats["mu"], stats["sigma"])
    spread = [fid_bias.fid_infinity(f, stats["mu"], stats["sigma"], seed=s)["fid_inf"] for s in range(DRAWS)]
    lines += ["", f"FID-infinity of the 300 held-out images (the row's estimator, subset seed 0): "
              f"{row['fid_inf']:.1f}, slope {row['fid_inf_slope']:.0f}; over {DRAWS} subset seeds "
              f"{np.mean(spread):.1f} +- {np.std(spread):.1f}. The line puts real images at N = 500 (the default "
              f"job's sample count, more than the 300 unseen images there are) at FID "
              f"{row['fid_inf'] + row['fid_inf_slope'] / 500:.1f}."]
    return lines, row


def results_table(results) -> list[str]:
    from bench.store import ResultsStore
    df = ResultsStore(results).read()
    df = df[(df["status"] == "ok") & df["fid"].notna()]
    lines = ["| sampler | NFE | seeds | n | FID | FID_inf | FID - FID_inf | precision | recall | density | coverage |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (sampler, nfe), g in df.groupby(["sampler", "nfe"], sort=True):
        ms = lambda c: f"{g[c].mean():.2f} +- {g[c].std(ddof=1):.2f}" if len(g) > 1 else f"{g[c].mean():.2f}"
        lines.append(f"| {sampler} | {nfe} | {len(g)} | {int(g['n_samples'].iloc[0])} | {ms('fid')} | "
                     f"{ms('fid_inf')} | {(g['fid'] - g['fid_inf']).mean():.1f} | {ms('precision')} | "
                     f"{ms('recall')} | {ms('density')} | {ms('coverage')} |")
    return lines


def cost(ck, cache) -> str:
    """Median seconds of fid_kid_from_state on 500 samples with and without the PRDC / FID-infinity step."""
    x = digits_split("holdout")[0]
    x = torch.cat([x, x[:200] + 0.05 * torch.randn(200, *x.shape[1:], generator=torch.Generator().manual_seed(0))])
    acc = fidmod.FidAccumulator(ck)
    acc.update(x, range(len(x)))
    state = acc.state()
    fidmod.fid_kid_from_state(state, ck, cache_dir=cache)  # warm-up, reference cached

    def median_time(fn, reps=7):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))
    full = median_time(lambda: fidmod.fid_kid_from_state(state, ck, cache_dir=cache))
    stats = fidmod._statistics(fidmod.reference_state(ck, cache_dir=cache))
    ref = fidmod.reference_state(ck, cache_dir=cache)["kid_features"]
    extra = median_time(lambda: fidmod._feature_metrics(state["kid_features"], ref, stats["mu"], stats["sigma"],
                                                        "cpu"))
    return (f"Per 500-sample digits cell, one thread: FID, KID, PRDC and FID-infinity from the kept features take "
            f"{full:.2f} s, of which PRDC and FID-infinity {extra:.2f} s (median of 7).")


def rgb_cost() -> str:
    """Seconds of PRDC and FID-infinity on Inception-sized features: 10,000 synthetic 2048-d ones each side."""
    from bench.metrics.prdc import prdc
    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(10_000, 2048, generator=g), torch.randn(10_000, 2048, generator=g)
    t = time.perf_counter()
    fid_bias.fid_infinity(fake, np.zeros(2048), np.eye(2048))
    t_inf = time.perf_counter() - t
    t = time.perf_counter()
    prdc(fake, real)
    return (f"10,000 synthetic 2048-d features against 10,000, one thread: PRDC {time.perf_counter() - t:.0f} s, "
            f"FID-infinity {t_inf:.0f} s.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", help="a digits results folder to tabulate FID and FID_inf from")
    ap.add_argument("--out", help="write the markdown here as well")
    ap.add_argument("--cache", default="results/cache", help="reference statistics cache")
    ap.add_argument("--rgb-cost", action="store_true", help="also time them on Inception-sized features (minutes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = pretrained.load("digits")
    lines, _ = floor_table(ck, args.cache)
    text = ["# FID's small-sample bias on the digits reference", "",
            "Command: `OMP_NUM_THREADS=1 python reports/fid_bias/measure_bias.py"
            + (f" --results {args.results}" if args.results else "") + (" --rgb-cost" if args.rgb_cost else "") + "`",
            "", "## The floor: real against real", "",
            *lines, ""]
    if args.results:
        text += ["## Model samples", "", f"Cells of `{RUN}` (when --results is that folder); mean +- sd over seeds.",
                 "", *results_table(args.results), ""]
    text += ["## Cost", "", cost(ck, args.cache), *([rgb_cost()] if args.rgb_cost else []), ""]
    out = "\n".join(text)
    print(out)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(out)


if __name__ == "__main__":
    main()

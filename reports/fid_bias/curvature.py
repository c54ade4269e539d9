"""Where FID-infinity's straight line in 1/N holds: isotropic Gaussian features N(0, I_d) against the exact N(0, I_d)
(true FD 0, the worst case: every direction carries the same covariance noise), subsets from k d to the pool size.

    OMP_NUM_THREADS=1 python reports/fid_bias/curvature.py

Prints, per pool size and start k, the intercept and the pool's FID (means over 3 seeds); the intercept's distance
from 0 relative to that FID is the bias the line leaves. Measured (d = 256): start at d -25..-40 %, 2 d -7..-10 %,
4 d -3 %; hence ``fid_bias`` starts at 2 d.
"""
import numpy as np
import torch

from bench.metrics import fid_bias

D = 256


def main():
    torch.set_num_threads(1)
    print("| pool | start | intercept | FID of the pool | intercept / FID |\n|---|---|---|---|---|")
    for pool in (1250, 2560, 5000):
        for k in (1, 2, 4):
            sizes = np.unique(np.linspace(k * D, pool, fid_bias.FID_INF_POINTS).round().astype(int))
            if 2 * k * D > pool:
                continue
            vals = []
            for seed in range(3):
                f = torch.randn(pool, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                g = torch.Generator().manual_seed(0)
                v = fid_bias.frechet_distances(f, [torch.randperm(pool, generator=g)[:n] for n in sizes],
                                               np.zeros(D), np.eye(D))
                vals.append((fid_bias.intercept_in_inverse_n(sizes, v)[0], v[-1]))
            a, full = np.mean(vals, 0)
            print(f"| {pool} | {k} d | {a:.3f} | {full:.3f} | {a / full:+.0%} |")


if __name__ == "__main__":
    main()

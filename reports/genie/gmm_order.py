"""GENIE with the exact derivative on gmm-2d / gmm-16d: error to the exact ODE solution, measured order, AFS's cost.

Usage: PYTHONPATH=. python reports/genie/gmm_order.py > reports/genie/gmm_order.md   (about 2 minutes on one CPU thread)
"""
import math

import torch

import pretrained
import samplers

N_POINTS = 64
NFES = (5, 10, 20, 40, 80, 160)
RUNS = [("ddim", {"grid": "time_quadratic"}, 0), ("genie", {}, 0), ("genie", {"afs": True}, 0),
        ("genie", {"afs": True}, 1), ("genie", {"denoise": True}, 0), ("genie", {"grid": "time_uniform"}, 0),
        ("genie", {"grid": "logSNR"}, 0)]


def mean_error(ck, x_T, ref, name, nfe, **options):
    return (samplers.get(name, **options).sample(ck.model, x_T, nfe) - ref).flatten(1).norm(dim=1).mean().item()


def main():
    torch.set_num_threads(1)
    print(f"Mean L2 error to the exact ODE solution (dopri8, tol 1e-13) at t_end = {samplers.T_END}, "
          f"{N_POINTS} points (initial_noise seed 0), time_quadratic grid unless a row says; order = log2 of successive error ratios.\n")
    for name in ("gmm-2d", "gmm-16d"):
        ck = pretrained.load(name)
        x_T = samplers.initial_noise(0, range(N_POINTS), ck.data_shape)
        ref = ck.reference_solution(x_T, samplers.T_END)
        print(f"## {name}\n")
        print("| sampler | options | NFE spent | " + " | ".join(f"N={n}" for n in NFES) + " | orders |")
        print("|---|---|---|" + "---|" * len(NFES) + "---|")
        for sampler, options, saved in RUNS:
            nfes = [n - saved for n in NFES]
            errs = [mean_error(ck, x_T, ref, sampler, n, **options) for n in nfes]
            orders = ", ".join(f"{math.log2(a / b):.2f}" for a, b in zip(errs, errs[1:]))
            opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
            spent = "N - 1 (genie's N steps)" if saved else "N"
            print(f"| {sampler} | {opts} | {spent} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {orders} |")
        print()
    print("Rows spending N run N steps (DDIM, GENIE), N + 1 steps (AFS: the first step is free) or N - 1 steps and "
          "a denoising evaluation; the AFS row spending N - 1 runs GENIE's N steps with the first one analytic.")


if __name__ == "__main__":
    main()

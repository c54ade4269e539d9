"""The digits-genie head against the teacher's derivative along the ODE on held-out points, by time bin.

d eps / d gamma at x_t = alpha_t x_0 + sigma_t z with x_0 from the "holdout" split (never trained on, and not the
recipe's held-out pool: another seed): the head (one UNet pass), the exact JVP, and a central finite difference of
the teacher along the ODE (step 1e-3 gamma). Relative error |a - b| / |b| per point, mean and median per bin.

Usage: PYTHONPATH=. python reports/genie/head_error.py > reports/genie/head_error.md
"""
import statistics
import time

import torch

import pretrained
import samplers
from pretrained.data import digits_split
from pretrained.digits import load_unet
from samplers.genie import eps_derivative

SEED = 2024
PER_BIN = 128
BINS = [(0.001, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.0)]
FD_REL = 1e-3
TIMING_BATCH, TIMING_REPS = 500, 20


def fd_along_ode(net, sch, x, t, eps, rel=FD_REL):
    """Central difference of eps along the ODE: xbar(gamma +- dg) = xbar +- dg eps (O(dg^2) off the ODE each side)."""
    gamma = sch.rho(t.double())
    dg = rel * gamma
    a = sch.alpha(t.double())[:, None, None, None]

    def at(sign):
        t2 = sch.inverse_rho(gamma + sign * dg)
        xbar = x.double() / a + sign * dg[:, None, None, None] * eps.double()
        return net((xbar * sch.alpha(t2)[:, None, None, None]).float(), t2.float()).double()

    return ((at(1) - at(-1)) / (2 * dg[:, None, None, None])).float()


def rel(a, b):
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def main():
    torch.set_num_threads(1)
    head_model = pretrained.load("digits").model.head("genie")
    net, _ = load_unet()
    sch = head_model.schedule
    x0 = digits_split("holdout")[0]
    g = torch.Generator().manual_seed(SEED)
    print(f"{PER_BIN} held-out points per bin (holdout split, seed {SEED}); relative error |a - b| / |b|, "
          "mean / median.\n")
    print("| t bin | head vs finite difference | head vs exact JVP | JVP vs finite difference |")
    print("|---|---|---|---|")
    all_head = []
    for lo, hi in BINS:
        x = x0[torch.randint(len(x0), (PER_BIN,), generator=g)]
        t = lo + (hi - lo) * torch.rand(PER_BIN, generator=g, dtype=torch.float64)
        xt = (sch.alpha(t)[:, None, None, None] * x + sch.sigma(t)[:, None, None, None]
              * torch.randn(x.shape, generator=g, dtype=torch.float64)).float()
        with torch.no_grad():
            eps, k = head_model.eps_and_derivative(xt, t.float())
            _, jvp = eps_derivative(net, sch, xt, t.float(), eps)
            fd = fd_along_ode(net, sch, xt, t.float(), eps)
        cols = [rel(k, fd), rel(k, jvp), rel(jvp, fd)]
        all_head.append(cols[0])
        print(f"| [{lo}, {hi}) | " + " | ".join(f"{c.mean():.3f} / {c.median():.3f}" for c in cols) + " |")
    h = torch.cat(all_head)
    print(f"| all | {h.mean():.3f} / {h.median():.3f} | | |")

    # The head's cost: one evaluation with and without it, batch TIMING_BATCH, median of TIMING_REPS (1 thread).
    x = torch.randn(TIMING_BATCH, 1, 8, 8, generator=g, dtype=torch.float64)
    times = {}
    calls = (("eps", lambda: head_model.eps(x, 0.5)), ("eps + head", lambda: head_model.eps_and_derivative(x, 0.5)))
    for what, call in calls:
        call()
        runs = []
        for _ in range(TIMING_REPS):
            t0 = time.perf_counter()
            call()
            runs.append(time.perf_counter() - t0)
        times[what] = statistics.median(runs)
    # A whole sample at NFE 10, DDIM and GENIE interleaved on the same x_T (same grid).
    ck = pretrained.load("digits")
    x_T = torch.randn(TIMING_BATCH, 1, 8, 8, generator=g, dtype=torch.float64)
    runs = {"ddim": [], "genie": []}
    for _ in range(5):
        for name in runs:
            t0 = time.perf_counter()
            samplers.get(name, grid="time_quadratic").sample(ck.model, x_T, 10)
            runs[name].append(time.perf_counter() - t0)
    d, gn = (statistics.median(runs[k]) for k in ("ddim", "genie"))
    print(f"\nA sample of {TIMING_BATCH} at NFE 10 (median of 5, interleaved): ddim {d:.2f} s, genie {gn:.2f} s "
          f"({gn / d:.2f}x).")
    print(f"\nOne evaluation of {TIMING_BATCH} samples (median of {TIMING_REPS}, 1 thread): UNet "
          f"{1e3 * times['eps']:.1f} ms, UNet + head {1e3 * times['eps + head']:.1f} ms "
          f"({times['eps + head'] / times['eps']:.2f}x).")


if __name__ == "__main__":
    main()

"""How accurate the solver-error reference is, and what it costs: the choice behind ``pretrained.reference`` (issue 25).

For each checkpoint, solves the PF-ODE from the first N x_T of seed 0 with each candidate (fixed-step solvers of the
sampler registry at several NFE) and compares with a tight solve (Heun, 2000 steps on the Karras grid: 4000 NFE),
printing the mean and max L2 error per sample, the error as a share of the smallest solver error the default table
reports (``--smallest``; `digits`, DPM-Solver family / UniPC at NFE 20: 0.0238, reports/digits/solver_error_median.md)
and the seconds (one thread, batch N). The chosen reference is the cheapest candidate within a few percent.

    python benchmarks/reference_accuracy.py --checkpoint digits digits-edm digits-flow
"""
from __future__ import annotations

import argparse
import time

import torch

import pretrained
import samplers
from pretrained import reference
from samplers.grids import end_time

CANDIDATES = ("heun:600", "heun:800", "heun:1000", "dpm_solver++_3m:300", "dpm_solver++_3m:400",
              "dpm_solver++_3m:800", "unipc_bh1_3:400")
TIGHT = "heun:4000"


def solve(model, x_T, t_end, spec: str) -> tuple[torch.Tensor, float]:
    method, nfe = spec.split(":")
    start = time.perf_counter()
    out = samplers.get(method, grid="karras", t_end=t_end).sample(model, x_T, int(nfe))
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", default=["digits"])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--smallest", type=float, default=0.0238, help="the default table's smallest solver error")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), metavar="SOLVER:NFE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    chosen = f"{reference.REFERENCE_SOLVER}:{reference.REFERENCE_NFE}"
    print(f"reference in use: {chosen} on the {reference.REFERENCE_GRID} grid; tight solve: {TIGHT} (karras)")
    print(f"{'checkpoint':<12} {'candidate':<22} {'mean L2':>9} {'max L2':>9} {'% smallest':>10} {'seconds':>8}")
    for name in args.checkpoint:
        ck = pretrained.load(name)
        t_end = end_time(ck.model.schedule, None)
        x_T = samplers.initial_noise(0, range(args.samples), ck.data_shape, std=ck.model.schedule.prior_std)
        tight, _ = solve(ck.model, x_T.double(), t_end, TIGHT)
        for spec in args.candidates:
            out, seconds = solve(ck.model, x_T.double(), t_end, spec)
            err = (out - tight).flatten(1).norm(dim=1)
            mark = "  <- in use" if spec == chosen else ""
            print(f"{name:<12} {spec:<22} {float(err.mean()):9.3g} {float(err.max()):9.3g} "
                  f"{100 * float(err.mean()) / args.smallest:9.2f}% {seconds:8.2f}{mark}", flush=True)


if __name__ == "__main__":
    main()

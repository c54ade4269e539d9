"""The command line: ``python -m bench run | list | report | check | baseline``."""
from __future__ import annotations

import argparse
import sys
import textwrap

DEFAULT_CHECKPOINT = "digits"
DEFAULT_NFE = (5, 10, 20)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"


def _cmd_run(args) -> int:
    from . import dist
    from .grid import make_cells, resolve_samplers
    from .runner import run_sweep
    import pretrained
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for ck in args.checkpoint:
        pretrained.entry(ck)  # unknown names raise before anything runs
    sampler_objs = resolve_samplers(args.sampler)
    cells = [c for ck in args.checkpoint for c in make_cells(
        [ck], sampler_objs, args.nfe, args.seeds, args.n_samples or pretrained.entry(ck).default_n_samples)]
    counts = run_sweep(cells, args.results, batch_size=args.batch_size, progress=not args.quiet)
    if not dist.is_main():
        return 0
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{len(cells)} cells ({summary}); results in {args.results}/results.parquet")
    print(f"next: python -m bench report --results {args.results}")
    return 0


def _cmd_list(args) -> int:
    import pretrained
    import samplers
    from samplers import grids

    print("samplers (* = in the default sweep):")
    default = set(samplers.available(default_sweep_only=True))
    for name in samplers.available():
        spec = samplers.describe(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in {**spec.defaults, **spec.fixed}.items())
        print(f"  {'*' if name in default else ' '} {name:28s} {spec.description}")
        print(textwrap.indent(textwrap.fill(opts, 90), " " * 34))
    print("time grids:")
    for name in grids.available():
        print(f"    {name}")
    print("checkpoints:")
    for name in pretrained.available():
        e = pretrained.entry(name)
        print(f"    {name:12s} shape={e.data_shape} schedule={e.schedule} prediction={e.prediction} "
              f"n_samples={e.default_n_samples}: {e.description}")
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    written = write_report(args.results, args.out)
    for path in written:
        print(path)
    return 0


def _cmd_check(args) -> int:
    from .check import check_against_baseline

    ok, lines = check_against_baseline(args.baseline, args.results, rtol=args.rtol, atol=args.atol)
    print("\n".join(lines))
    return 0 if ok else 1


def _cmd_baseline(args) -> int:
    from .check import write_baseline

    n = write_baseline(args.results, args.out)
    print(f"wrote {n} cells to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .check import DEFAULT_ATOL, DEFAULT_RTOL
    from .runner import DEFAULT_BATCH

    p = argparse.ArgumentParser(prog="python -m bench", description="samplerbench: benchmark diffusion samplers")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="sweep checkpoint x sampler x NFE x seed; rows go to RESULTS/results.parquet")
    r.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE), help="NFE budgets (default: 5 10 20)")
    r.add_argument("--checkpoint", nargs="+", default=[DEFAULT_CHECKPOINT],
                   help=f"checkpoints (default: {DEFAULT_CHECKPOINT}); see `bench list`")
    r.add_argument("--sampler", nargs="+", default=None, metavar="SPEC",
                   help="NAME[,key=value...], NAME may be a glob such as 'diffusers:*' (default: the default sweep)")
    r.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                   help="seeds (default: %(default)s); paired across samplers")
    r.add_argument("--n-samples", type=int, default=None,
                   help="samples per cell (default: the checkpoint's, see `bench list`)")
    r.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="samples per model call (default: %(default)s)")
    r.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    sub.add_parser("list", help="samplers, time grids and checkpoints").set_defaults(func=_cmd_list)

    rep = sub.add_parser("report", help="plots and paper-style tables from a results folder")
    rep.add_argument("--results", default=DEFAULT_RESULTS)
    rep.add_argument("--out", default=DEFAULT_REPORTS)
    rep.set_defaults(func=_cmd_report)

    c = sub.add_parser("check", help="fail (exit 1) if any baseline cell got worse or is missing")
    c.add_argument("--baseline", required=True, help="baseline CSV written by `bench baseline`")
    c.add_argument("--results", default=DEFAULT_RESULTS)
    c.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance (default: %(default)s)")
    c.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="absolute tolerance (default: %(default)s)")
    c.set_defaults(func=_cmd_check)

    b = sub.add_parser("baseline", help="write the ok cells of a results folder as a baseline CSV")
    b.add_argument("--results", default=DEFAULT_RESULTS)
    b.add_argument("--out", required=True)
    b.set_defaults(func=_cmd_baseline)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: a clear message, nothing written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130

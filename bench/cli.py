"""The command line: ``python -m bench run | list | report | check | baseline``."""
from __future__ import annotations

import argparse
import sys
import textwrap

DEFAULT_CHECKPOINT = "digits"
DEFAULT_NFE = (5, 10, 20)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_RESULTS = "results"


MAX_SEED = 2**63 - 1  # seeds are stored as int64


def _validate_run_args(args) -> None:
    """Scalar arguments of `run`, checked before anything is loaded or written."""
    from samplers.registry import validate_nfe

    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: must be >= 1 (or 0 for torch's choice)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.n_samples is not None and args.n_samples < 1:
        raise ValueError(f"--n-samples {args.n_samples}: must be >= 1")
    if args.nll_samples < 1:
        raise ValueError(f"--nll-samples {args.nll_samples}: must be >= 1")
    for seed in args.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"--seeds {seed}: seeds must be in 0..2**63-1")
    for nfe in args.nfe:
        validate_nfe(nfe, allow_large=args.allow_large_nfe)
    if args.guidance is not None:
        from samplers.model import check_guidance
        for g in args.guidance:
            try:
                check_guidance(g)
            except ValueError as exc:
                raise ValueError(f"--guidance {g:g}: {exc}") from None


def _check_guidance_checkpoints(checkpoints: dict, guidance) -> None:
    """--guidance needs conditional checkpoints: an unconditional one stops the run before any cell."""
    if guidance is None:
        return
    uncond = [name for name, ck in checkpoints.items() if ck.model.condition is None]
    if uncond:
        raise ValueError(f"--guidance: checkpoint {uncond[0]!r} is unconditional (no class labels to guide with); "
                         f"guidance needs a conditional checkpoint such as 'digits-cond'")


def _load_checkpoints(names, device) -> dict:
    """Every checkpoint of the sweep, loaded once on its device: a bad name or folder stops before any cell."""
    import pretrained

    out = {}
    for name in dict.fromkeys(names):
        pretrained.entry(name)  # unknown names: the registry's message
        try:
            out[name] = pretrained.load(name, device=device)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a folder that cannot be read is the user's input
            raise ValueError(f"checkpoint {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    return out


def _cmd_run(args) -> int:
    import torch

    from . import dist
    from .devices import resolve_device
    from .grid import make_cells, parse_shard, resolve_samplers, shard_cells
    from .runner import RunOptions, run_sweep
    from .store import ResultsStore

    _validate_run_args(args)
    shard = parse_shard(args.shard)
    device = resolve_device(args.device)
    sampler_objs = resolve_samplers(args.sampler)
    checkpoints = _load_checkpoints(args.checkpoint, device)
    _check_guidance_checkpoints(checkpoints, args.guidance)
    cells = shard_cells([c for name in checkpoints for c in make_cells(
        [name], sampler_objs, args.nfe, args.seeds, args.n_samples or _default_n(name), state_dtype=args.state_dtype, net_dtype=args.net_dtype,
        n_likelihood=args.nll_samples, guidance=args.guidance)], shard)
    ResultsStore(args.results).prepare()  # the last check (writable folder); it creates the folder
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_from_env(device)
    counts = run_sweep(cells, args.results, options=RunOptions(device=device, batch_size=args.batch_size,
                                                               compile=args.compile),
                       progress=not args.quiet)
    if not dist.is_main():
        return 0
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{len(cells)} cells ({summary}); results in {args.results}/results.parquet")
    if counts.get("taken"):
        print(f"{counts['taken']} cells were being computed by another run on {args.results}; run again to "
              f"pick up any it leaves unfinished")
    print(f"next: python -m bench report --results {args.results}")
    return 0


def _default_n(name: str) -> int:
    import pretrained
    return pretrained.entry(name).default_n_samples


def _cmd_compact(args) -> int:
    from .store import ResultsStore

    store = ResultsStore(args.results)
    if not store.path.exists():
        raise ValueError(f"no results in {args.results}; nothing to compact")
    df = store.read()
    store.rewrite(df)
    print(f"{len(df)} rows in one part: {store.path}")
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
        if opts:
            print(textwrap.indent(textwrap.fill(opts, 90), " " * 34))
    from samplers import likelihood

    from .grid import DEFAULT_ESTIMATORS, NLL_PREFIX

    print("likelihood estimators (--sampler nll:NAME; * = in the default sweep):")
    for name in likelihood.available_estimators():
        est = likelihood.get_estimator(name)
        opts = ", ".join(f"{k}={v!r}" for k, v in est.options.items())
        print(f"  {'*' if name in DEFAULT_ESTIMATORS else ' '} {NLL_PREFIX + name:28s} {est.spec.description}")
        print(textwrap.indent(textwrap.fill(opts, 90), " " * 34))
    print("time grids:")
    for name in grids.available():
        print(f"    {name}")
    print("checkpoints:")
    for name in pretrained.available():
        e = pretrained.entry(name)
        print(f"    {name:12s} shape={e.data_shape} schedule={e.schedule} prediction={e.prediction} "
              f"n_samples={e.default_n_samples}: {e.description}")
        heads = pretrained.registry.heads_of(name)
        if heads:
            print(f"    {'':12s} heads (students, derivative heads): {', '.join(heads)}")
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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .check import DEFAULT_ATOL, DEFAULT_RTOL
    from .grid import DEFAULT_NLL_SAMPLES, DEFAULT_STATE_DTYPE, NET_DTYPES, STATE_DTYPES
    from .runner import DEFAULT_BATCH
    from samplers.registry import MAX_NFE

    p = _Parser(prog="python -m bench", description="samplerbench: benchmark diffusion samplers")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="sweep checkpoint x sampler x NFE x seed; rows go to RESULTS/results.parquet")
    r.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE), help="NFE budgets (default: 5 10 20)")
    r.add_argument("--checkpoint", nargs="+", default=[DEFAULT_CHECKPOINT],
                   help=f"checkpoints (default: {DEFAULT_CHECKPOINT}); see `bench list`")
    r.add_argument("--sampler", nargs="+", default=None, metavar="SPEC",
                   help="NAME[,key=value...], NAME may be a glob such as 'diffusers:*' (default: the default sweep)")
    r.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                   help="seeds (default: %(default)s); paired across samplers")
    r.add_argument("--guidance", type=float, nargs="+", default=None, metavar="SCALE",
                   help="classifier-free guidance scales, e.g. 1 2 4 8 (a conditional checkpoint such as digits-cond; "
                        "0: unconditional, 1: conditional; default: unguided sampling)")
    r.add_argument("--n-samples", type=int, default=None,
                   help="samples per cell (default: the checkpoint's, see `bench list`)")
    r.add_argument("--nll-samples", type=int, default=DEFAULT_NLL_SAMPLES,
                   help="held-out data points per likelihood (nll:*) cell (default: %(default)s)")
    r.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="samples per model call (default: %(default)s)")
    r.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available; under "
                   "torchrun, cuda means cuda:LOCAL_RANK)")
    r.add_argument("--state-dtype", choices=STATE_DTYPES, default=DEFAULT_STATE_DTYPE,
                   help="dtype of the solver state between steps (default: %(default)s on every device)")
    r.add_argument("--net-dtype", choices=NET_DTYPES, default="native",
                   help="network precision: its own weights' dtype, or autocast to bfloat16 / float16 (default: native)")
    r.add_argument("--compile", action="store_true", help="wrap the network in torch.compile")
    r.add_argument("--shard", default=None, metavar="I/N",
                   help="take cells I, I+N, ... of the sweep (a job-array index); N jobs may share --results")
    r.add_argument("--allow-large-nfe", action="store_true", help=f"allow NFE above {MAX_NFE}")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    sub.add_parser("list", help="samplers, time grids and checkpoints").set_defaults(func=_cmd_list)

    cp = sub.add_parser("compact", help="merge a results folder's parts into one (run when no one reads or writes it)")
    cp.add_argument("--results", default=DEFAULT_RESULTS)
    cp.set_defaults(func=_cmd_compact)

    rep = sub.add_parser("report", help="plots and paper-style tables from a results folder")
    rep.add_argument("--results", default=DEFAULT_RESULTS)
    rep.add_argument("--out", default=None, help="report folder (default: RESULTS/reports; the committed examples: "
                     "--out reports)")
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
    from .store import StoreWriteError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: a clear message, nothing written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreWriteError as exc:  # disk full, permissions changed mid-run: stored rows are intact
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130

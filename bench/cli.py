"""The command line: ``python -m bench run | list | report | check | baseline``."""
from __future__ import annotations

import argparse
import sys
import textwrap

from . import INTERRUPTED
from .preflight import captured_third_party, one_line

DEFAULT_CHECKPOINT = "digits"
DEFAULT_NFE = (5, 10, 20)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_RESULTS = "results"


def _cmd_run(args) -> int:
    import torch

    from . import dist
    from .preflight import plan_run
    from .runner import RunOptions, run_sweep

    from .tune import resolve_tuned_specs

    args.sampler = resolve_tuned_specs(args.sampler, args.results)  # tuned:NAME -> its preset, read and validated
    plan = plan_run(args)  # every check; nothing written yet
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_from_env(plan.device)  # the rendezvous is bounded (dist.RENDEZVOUS_TIMEOUT_S); still nothing written
    if args.config and dist.is_main():
        from .config import save_config_copy
        save_config_copy(args.results, args.config)  # `bench report` names the config that made the results
    counts = run_sweep(plan.cells, args.results, options=RunOptions(device=plan.device, batch_size=args.batch_size,
                                                                    compile=args.compile,
                                                                    reference_samples=args.reference_samples),
                       progress=not args.quiet)
    if not dist.is_main():
        return 0
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{len(plan.cells)} cells ({summary}); results in {args.results}/results.parquet")
    if counts.get("taken"):
        print(f"{counts['taken']} cells were being computed by another run on {args.results}; run again to "
              f"pick up any it leaves unfinished")
    print(f"next: python -m bench report --results {args.results}")
    return 0


def _cmd_tune(args) -> int:
    from .tune import command

    return command(args)


def _cmd_compact(args) -> int:
    from .store import ResultsStore

    store = ResultsStore(args.results)
    if not store.path.exists():
        raise ValueError(f"no results in {args.results}; nothing to compact")
    if args.drop_damaged:
        store.check_entries()
        moved = store.drop_damaged()
        print(f"moved {len(moved)} damaged parts to {store.dir / 'damaged'}" + "".join(f"\n  {p.name}" for p in moved))
    store.check()  # every part readable, every entry of the right type and writable: nothing half done
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
    print("    hub:<folder or hub id>   a diffusers-format model; its scheduler config says the family (VP, flow, EDM)")
    print("    py:<module>:<factory>    your Python factory(device) -> DiffusionModel or (model, real data)")
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

    from .preflight import MAX_BATCH, MAX_NLL_SAMPLES, MAX_OPTION_INT, MAX_SAMPLES

    p = _Parser(prog="python -m bench", description="samplerbench: benchmark diffusion samplers")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show third-party warnings and log messages (diffusers, accelerate), held back otherwise")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", parents=[common], help="sweep checkpoint x sampler x NFE x seed; rows go to RESULTS/results.parquet")
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
    r.add_argument("--fid-ref", default=None, metavar="PATH",
                   help="FID reference set for every checkpoint: a folder of images, an .npz of uint8 images or an "
                        ".npz of statistics (mu, sigma; EDM's fid.py ref, clean-fid); never unpickled")
    r.add_argument("--fid-extractor", default="auto", choices=("auto", "digits-classifier", "inception-v3-compat",
                                                                "dinov2-vit-s-14", "dinov2-vit-b-14", "dinov2-vit-l-14",
                                                                "dinov2-vit-g-14"),
                   help="feature extractor for --fid-ref (default: auto, the digits classifier for 1x8x8 grayscale, "
                        "Inception otherwise; statistics: by their dimension; DINOv2: local files, see the README)")
    r.add_argument("--n-samples", type=int, default=None,
                   help="samples per cell (default: the checkpoint's, see `bench list`)")
    r.add_argument("--nll-samples", type=int, default=DEFAULT_NLL_SAMPLES,
                   help="held-out data points per likelihood (nll:*) cell (default: %(default)s)")
    r.add_argument("--reference-samples", type=int, default=None, metavar="N",
                   help="solver error on the first N samples of each cell (default: 128 where the reference ODE "
                        "solution is solved, every sample where it is exact)")
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
    r.add_argument("--allow-large", action="store_true",
                   help=f"allow sizes above their caps: --n-samples {MAX_SAMPLES:,}, --nll-samples {MAX_NLL_SAMPLES:,}, "
                        f"--batch-size {MAX_BATCH:,}, integer sampler options {MAX_OPTION_INT:,}, hub UNet configs")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--config", default=None, metavar="FILE.toml",
                   help="the sweep's options from a TOML file (keys: these options' names with underscores, e.g. nfe, "
                        "checkpoint, sampler, seeds, n_samples); see the README's Report section")
    r.set_defaults(func=_cmd_run)
    p.run_parser = r  # --config checks its keys against run's options

    from . import tune

    t = sub.add_parser("tune", parents=[common], help="search a solver family's options and a fitted time schedule "
                       "per NFE by solver error; confirm on held-out seeds; write presets (--sampler tuned:NAME)")
    t.add_argument("--checkpoint", default="gmm-16d", help="one checkpoint (default: %(default)s)")
    t.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE), help="NFE budgets (default: 5 10 20)")
    t.add_argument("--sampler", nargs="+", default=None, metavar="SPEC",
                   help=f"families to tune, as run's specs (default: {' '.join(tune.DEFAULT_SAMPLERS)})")
    t.add_argument("--budget", default=str(tune.DEFAULT_BUDGET),
                   help="trial cells per sampler and NFE (screen + fitted schedules), or a time for the whole search "
                        "with a unit s/m/h, e.g. 30m (default: %(default)s cells)")
    t.add_argument("--transfer", nargs="+", default=None, metavar="PRESET",
                   help="no search: run these presets (PATH.json, or NAME/glob in RESULTS/presets/) and their defaults "
                        "on --checkpoint, on the held-out seeds --seed/--val-seeds draw")
    t.add_argument("--seed", type=int, default=0, help="search seed: draws the tuning and held-out seeds")
    t.add_argument("--tune-samples", type=int, default=64, help="samples of the tuning seed (default: %(default)s)")
    t.add_argument("--val-seeds", type=int, default=8, help="held-out seeds (default: %(default)s)")
    t.add_argument("--val-samples", type=int, default=32, help="samples per held-out seed (default: %(default)s)")
    t.add_argument("--candidates", type=int, default=tune.DEFAULT_CANDIDATES,
                   help="times in the fitted schedule's candidate grid (default: %(default)s)")
    t.add_argument("--top", type=int, default=tune.DEFAULT_TOP,
                   help="screened configurations that get fitted schedules (default: %(default)s)")
    t.add_argument("--results", default="results/tune", help="results folder: trials, presets/ (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--device", default=None)
    t.add_argument("--allow-large-nfe", action="store_true")
    t.add_argument("--allow-large", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_tune)

    sub.add_parser("list", parents=[common], help="samplers, time grids and checkpoints").set_defaults(func=_cmd_list)

    cp = sub.add_parser("compact", parents=[common], help="merge a results folder's parts into one (run when no one reads or writes it)")
    cp.add_argument("--results", default=DEFAULT_RESULTS)
    cp.add_argument("--drop-damaged", action="store_true",
                    help="first move parts that cannot be read to RESULTS/damaged/ (their cells are recomputed by the "
                         "next run)")
    cp.set_defaults(func=_cmd_compact)

    rep = sub.add_parser("report", parents=[common], help="plots and paper-style tables from a results folder")
    rep.add_argument("--results", default=DEFAULT_RESULTS)
    rep.add_argument("--out", default=None, help="report folder (default: RESULTS/reports; the committed examples: "
                     "--out reports)")
    rep.set_defaults(func=_cmd_report)

    c = sub.add_parser("check", parents=[common], help="fail (exit 1) if any baseline cell got worse or is missing")
    c.add_argument("--baseline", required=True, help="baseline CSV written by `bench baseline`")
    c.add_argument("--results", default=DEFAULT_RESULTS)
    c.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance (default: %(default)s)")
    c.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="absolute tolerance (default: %(default)s)")
    c.set_defaults(func=_cmd_check)

    b = sub.add_parser("baseline", parents=[common], help="write the ok cells of a results folder as a baseline CSV")
    b.add_argument("--results", default=DEFAULT_RESULTS)
    b.add_argument("--out", required=True)
    b.set_defaults(func=_cmd_baseline)
    return p


def main(argv=None) -> int:
    """Exit codes: 0 done, 1 a check failed or the results folder could not be written mid-run, 2 bad input
    (one line on stderr, nothing written), 130 interrupted."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        with captured_third_party(verbose=args.verbose):
            if getattr(args, "config", None):
                from .preflight import apply_run_config
                apply_run_config(args, parser.run_parser, sys.argv[1:] if argv is None else list(argv))
            return args.func(args)
    except KeyboardInterrupt:  # at start-up too: nothing is written before the pre-flight ends
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except ValueError as exc:  # bad input: a clear message, nothing written
        print(f"error: {one_line(exc, limit=None)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions changed mid-run: the stored rows are intact
        from .store import StoreWriteError
        if not isinstance(exc, StoreWriteError):
            raise
        print(f"error: {one_line(exc, limit=None)}", file=sys.stderr)
        return 1

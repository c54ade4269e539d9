"""The validation path: everything a command is given (arguments, environment, checkpoints, files and folders) is
checked here before anything is computed or written; a refusal is one ``ValueError`` line (exit code 2).

``plan_run`` is the whole pre-flight of ``bench run``, in this order: the distributed environment, scalar
arguments and their size caps, methods (names, options, option sizes, options that cannot change a result),
checkpoints (loaded with third-party output captured, then one network call on one sample), each method dry-run
on each checkpoint up to its first network evaluation (so checks that depend on the checkpoint's data, such as
``t_eps`` against its schedule or ``--nll-samples`` against its held-out set, run with the method's own code), and
the results folder with its own entries. A new surface (a checkpoint source, a reference set, ``tune``) joins the
path by building its methods and checkpoints through ``resolve_methods`` and ``load_checkpoints`` and its cells
through ``plan_run``, and by checking output paths with ``check_output_folder``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# Caps on every size a user gives; ``--allow-large`` lifts them (NFE has its own cap and --allow-large-nfe).
MAX_SAMPLES = 10_000_000      # --n-samples: 50,000-sample FID cells fit 200 times over
MAX_NLL_SAMPLES = 100_000     # --nll-samples
MAX_BATCH = 100_000           # --batch-size
MAX_SEEDS = 10_000            # distinct --seeds (cells multiply by it)
MAX_OPTION_INT = 10_000       # an integer option of a sampler or estimator (n_probes, n_dequant, diffusers steps_offset)
MAX_THREADS = 4096            # --threads
ALLOW_LARGE = "--allow-large"
MESSAGE_MAX_CHARS = 600       # a third-party message folded into our one line is cut here
THIRD_PARTY_LOGGERS = ("diffusers", "accelerate", "transformers", "huggingface_hub", "torch.distributed")
# Options that cannot change a method's result under another option's value (checked: equal outputs); giving them
# is refused, so equal computations never get two cell ids. (Knowledge of the methods: the registries could own it.)
INERT_OPTIONS = {
    ("divergence", "exact"): ("n_probes", "probe"),                # likelihood: no probes without Hutchinson
    ("thresholding", "none"): ("threshold_ratio", "threshold_max"),  # DPM-Solver++
    ("method", "singlestep"): ("lower_order_final",),              # DPM-Solver: it acts on multistep only
    ("method", "singlestep_fixed"): ("lower_order_final",),
}


def one_line(text, limit: int | None = MESSAGE_MAX_CHARS) -> str:
    """``text`` on one line: its lines joined, cut at ``limit`` characters (None: not cut). An exception reads
    "Type: message", a ValueError (a refusal, ours or a library's) its message alone."""
    if isinstance(text, BaseException):
        text = str(text) if isinstance(text, ValueError) else f"{type(text).__name__}: {text}"
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 4].rstrip() + " ..."


def check_size(flag: str, value: int, cap: int, allow_large: bool) -> None:
    """ValueError if ``value`` exceeds ``cap`` and the user did not pass --allow-large."""
    if value > cap and not allow_large:
        sep = "" if flag.endswith("=") else " "
        raise ValueError(f"{flag}{sep}{value} exceeds the cap of {cap:,}; pass {ALLOW_LARGE} to run it")


# -- the distributed environment --------------------------------------------------------------------------------
DIST_INT_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
TORCHRUN_HINT = "start with `torchrun --nproc_per_node N -m bench run ...`, or unset it for one process"


def check_environment(env=None) -> int:
    """The world size the environment describes; ValueError naming the variable when it is not a usable one.

    WORLD_SIZE > 1 needs RANK in 0..WORLD_SIZE-1 and MASTER_ADDR / MASTER_PORT (torchrun sets them all).
    """
    env = os.environ if env is None else env
    values = {}
    for var in DIST_INT_VARS:
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if not raw.strip().isdigit():
            raise ValueError(f"environment variable {var}={raw!r} is not a non-negative integer; {TORCHRUN_HINT}")
        values[var] = int(raw)
    world = values.get("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be >= 1; {TORCHRUN_HINT}")
    if world == 1:
        if values.get("RANK", 0) != 0:
            raise ValueError(f"environment variable RANK={values['RANK']} without WORLD_SIZE > 1; {TORCHRUN_HINT}")
        return 1
    if "RANK" not in values:
        raise ValueError(f"environment variable WORLD_SIZE={world} is set but RANK is not; {TORCHRUN_HINT}")
    if values["RANK"] >= world:
        raise ValueError(f"environment variable RANK={values['RANK']} must be < WORLD_SIZE={world}; {TORCHRUN_HINT}")
    if values.get("LOCAL_RANK", 0) >= values.get("LOCAL_WORLD_SIZE", world):
        raise ValueError(f"environment variable LOCAL_RANK={values['LOCAL_RANK']} must be < LOCAL_WORLD_SIZE="
                         f"{values.get('LOCAL_WORLD_SIZE', world)}; {TORCHRUN_HINT}")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(var):
            raise ValueError(f"environment variable WORLD_SIZE={world} is set but {var} is not; {TORCHRUN_HINT}")
    port = env["MASTER_PORT"]
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"environment variable MASTER_PORT={port!r} is not a port number in 1..65535")
    return world


# -- third-party output ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def captured_third_party(verbose: bool = False):
    """Hold back Python warnings and the log records of diffusers, accelerate and friends while the block runs.

    With ``verbose`` nothing is held back (they print as their libraries print them); otherwise they are dropped, so
    a refusal stays one line. Errors are not touched: they reach ``main`` and become one line there.
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        from diffusers.utils import logging as dlog  # diffusers' own verbosity switch (its handler writes to stderr)
        dlevel = dlog.get_verbosity()
        dlog.set_verbosity_error()
    except Exception:  # noqa: BLE001 -- diffusers is optional here
        dlog = None
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if dlog is not None:
            dlog.set_verbosity(dlevel)


@contextlib.contextmanager
def captured_native_stderr():
    """Hold back what native code (torch's c10d logging, with its C++ stack frames) writes to file descriptor 2."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


# -- folders -----------------------------------------------------------------------------------------------------
def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (absolute)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_writable(folder: Path) -> str | None:
    """None if a file can be created in the existing ``folder`` (created and removed), else the reason."""
    from .atomic import HOST

    probe = folder / f".probe.{HOST}.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_output_folder(path, what: str) -> None:
    """ValueError unless ``path`` is a folder, or can become one, that this process can write; writes nothing else.

    ``what`` names the flag in the message ("report --out").
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder (it is created if missing)")
    anc = existing_ancestor(path)
    if not anc.is_dir():
        raise ValueError(f"{what} {path} is not writable ({anc} is a file)")
    reason = probe_writable(anc)
    if reason:
        raise ValueError(f"{what} {path} is not writable ({anc}: {reason}); choose another folder")


def check_output_file(path, what: str) -> None:
    """ValueError unless ``path`` can be written as a file (its folder existing or creatable, and writable)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name such as {path / 'baseline.csv'}")
    check_output_folder(path.parent, f"{what} {path}: its folder")


# -- budgets ------------------------------------------------------------------------------------------------------
BUDGET_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}  # a time budget: a number with one of these units
BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")
BUDGET_HELP = "a number of trial cells (e.g. 200) or a time with a unit s, m or h (e.g. 90s, 30m, 1.5h)"


def parse_budget(text, min_cells: int = 2) -> tuple[int | None, float | None]:
    """``--budget``: (cells, None) for a whole number, (None, seconds) for a time (``30m``); ValueError otherwise."""
    m = BUDGET_RE.match(str(text))
    if m is None:
        raise ValueError(f"--budget {text!r} is not a budget; allowed: {BUDGET_HELP}")
    number, unit = m.groups()
    if not unit:
        if "." in number or int(number) < min_cells:
            raise ValueError(f"--budget {text!r}: a cell budget must be a whole number >= {min_cells}; allowed: "
                             f"{BUDGET_HELP}")
        return int(number), None
    seconds = float(number) * BUDGET_UNITS[unit]
    if not 0 < seconds < math.inf:
        raise ValueError(f"--budget {text!r}: a time budget must be positive; allowed: {BUDGET_HELP}")
    return None, seconds


# -- run ----------------------------------------------------------------------------------------------------------
def apply_run_config(args, run_parser, argv) -> None:
    """``run --config FILE``: set ``args`` from the TOML file (``bench.config``); ValueError for a file that cannot be
    read, an unknown key (naming the allowed ones), a value its flag would not take, or an option given twice."""
    from .config import apply_config, given_options, read_toml

    apply_config(args, read_toml(args.config), run_parser, given_options(run_parser, argv), f"--config {args.config}")


MAX_SEED = 2**63 - 1  # seeds are stored as int64
RUN_SIZES = {"--batch-size": MAX_BATCH, "--n-samples": MAX_SAMPLES, "--nll-samples": MAX_NLL_SAMPLES,
             "--reference-samples": MAX_SAMPLES}  # each >= 1


def check_run_args(args) -> None:
    """Scalar arguments of `run` and their caps, checked before anything is loaded or written."""
    from samplers.registry import validate_nfe

    big = args.allow_large
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: must be >= 1 (or 0 for torch's choice)")
    check_size("--threads", args.threads, MAX_THREADS, big)
    for flag, cap in RUN_SIZES.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:  # the checkpoint's default
            continue
        if value < 1:
            raise ValueError(f"{flag} {value}: must be >= 1")
        check_size(flag, value, cap, big)
    for seed in args.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"--seeds {seed}: seeds must be in 0..2**63-1")
    check_size("--seeds (distinct values)", len(set(args.seeds)), MAX_SEEDS, big)
    for nfe in args.nfe:
        validate_nfe(nfe, allow_large=args.allow_large_nfe)
    if args.guidance is not None:
        from samplers.model import check_guidance
        for g in args.guidance:
            try:
                check_guidance(g)
            except ValueError as exc:
                raise ValueError(f"--guidance {g:g}: {exc}") from None


def check_method_options(method, user_options: dict, allow_large: bool) -> None:
    """A method's options: integers within MAX_OPTION_INT, and no option that cannot change its result."""
    for key, value in method.options.items():
        if isinstance(value, int) and not isinstance(value, bool):
            check_size(f"--sampler {method.name}: option {key}=", value, MAX_OPTION_INT, allow_large)
    for (key, value), inert in INERT_OPTIONS.items():
        if method.options.get(key) == value:
            given = [k for k in inert if k in user_options]
            if given:
                raise ValueError(f"--sampler {method.name}: {', '.join(given)} cannot change the result with "
                                 f"{key}={value!r} (they would only split equal cells); drop them")


def resolve_methods(specs, allow_large: bool) -> list:
    """The sweep's methods (``bench.grid.resolve_samplers``), each with its options checked by ``check_method_options``."""
    from .grid import parse_sampler_spec, resolve_samplers

    methods = resolve_samplers(specs)
    given = {}
    for spec in specs or ():
        for name, options in parse_sampler_spec(spec):
            given.setdefault(name, {}).update(options)
    for m in methods:
        check_method_options(m, given.get(m.name, {}), allow_large)
    return methods


def load_checkpoints(names, device, *, allow_large: bool = False) -> dict:
    """Every checkpoint of the sweep, loaded once on its device, and its network called once on one sample.

    A bad name, folder or network stops before any cell; a third-party failure becomes one line naming the checkpoint.
    """
    import pretrained
    from pretrained import hub

    out = {}
    for name in dict.fromkeys(names):
        pretrained.entry(name)  # unknown names: the registry's message
        try:
            with hub.allow_large(allow_large):
                ck = pretrained.load(name, device=device)
            _smoke(ck, device)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a folder or network that does not work is the user's input
            raise ValueError(f"checkpoint {name!r} cannot be used: {one_line(exc)}") from exc
        out[name] = ck
    return out


def _smoke(ck, device) -> None:
    """One network evaluation on one sample of the checkpoint's data shape, at t = T/2 (conditional: guided, s = 1)."""
    import torch

    from samplers import initial_noise

    model = ck.model
    x = initial_noise(0, [0], ck.data_shape, device=device)
    t = torch.tensor(model.schedule.T / 2, dtype=torch.float64, device=device)
    view = model if model.condition is None else model.guided(model.condition.draw(0, [0]), 1.0)
    try:
        with torch.no_grad():
            view.eps(x, t)
    except Exception as exc:  # noqa: BLE001 -- the network itself is the user's input
        raise ValueError(f"checkpoint {ck.name!r}: its network fails on one sample of its data shape "
                         f"{tuple(ck.data_shape)} ({one_line(exc, 300)})") from None


class _Reached(Exception):
    """The dry-run got to the network: every check before it passed."""


def _stop(*_, **__):
    raise _Reached


def dry_run(ck, method, nfes, n_likelihood: int, state_dtype: str, device) -> None:
    """Run ``method`` on checkpoint ``ck`` with its network replaced by a stop: a ValueError raised before the first
    network evaluation (a check of the method's own code against this checkpoint) becomes the pre-flight's refusal.

    An ``Unsupported`` outcome (an NFE, a missing head) is left to the cell's row.
    """
    from samplers import SampleNoise, Unsupported, initial_noise

    from .grid import DTYPES, LikelihoodMethod

    dtype = DTYPES[state_dtype]
    nfe = next((n for n in ([None] if method.adaptive else nfes) if _supports(method, n)), "none")
    if nfe == "none":
        return
    try:
        if isinstance(method, LikelihoodMethod):
            if ck.likelihood_data is None:
                return
            model = ck.grad_model or ck.model
            method.check_model(model, nfe)  # a family the estimator is not written for: an unsupported row
            x = ck.likelihood_data(n_likelihood)[:1].to(device, dtype)  # the held-out set's own size check
            method.estimator.estimate(model.replace(fn=_stop), x, nfe, seed=0, indices=[0], levels=ck.data_levels)
        else:
            method.check_model(ck.model, nfe)
            x_T = initial_noise(0, [0], ck.data_shape, device=device, dtype=dtype, std=ck.model.schedule.prior_std)
            noise = SampleNoise(0, [0], ck.data_shape, device=device, dtype=dtype) if method.stochastic else None
            method.sample(ck.model.replace(fn=_stop), x_T, nfe, noise=noise)
    except (_Reached, Unsupported):
        return
    except ValueError as exc:
        raise ValueError(f"{method.name} on checkpoint {ck.name!r}: {one_line(exc)}") from None
    except Exception:  # noqa: BLE001 -- anything else is the cell's to report, as before
        return


def _supports(method, nfe, model=None) -> bool:
    """Whether ``method`` can spend ``nfe`` (on ``model``, when given: a student needs its head and budget)."""
    from samplers import Unsupported
    try:
        method.check_nfe(nfe)
        if model is not None:
            method.check_model(model, nfe)
    except Unsupported:
        return False
    return True


@dataclass
class RunPlan:
    """What `run` computes, after the whole pre-flight passed."""

    cells: list
    checkpoints: dict
    device: object


def plan_run(args) -> RunPlan:
    """The pre-flight of `run` (see the module docstring); every refusal is a ValueError, nothing is written."""
    from .devices import resolve_device
    from .grid import make_cells, own_budgets, parse_shard, shard_cells
    from .store import ResultsStore

    check_environment()
    check_run_args(args)
    shard = parse_shard(args.shard)
    device = resolve_device(args.device)
    methods = resolve_methods(args.sampler, args.allow_large)
    checkpoints = load_checkpoints(args.checkpoint, device, allow_large=args.allow_large)
    if args.guidance is not None:
        uncond = [name for name, ck in checkpoints.items() if ck.model.condition is None]
        if uncond:
            raise ValueError(f"--guidance: checkpoint {uncond[0]!r} is unconditional (no class labels to guide "
                             f"with); guidance needs a conditional checkpoint such as 'digits-cond'")
    for ck in checkpoints.values():
        for m in methods:
            dry_run(ck, m, sorted(set(args.nfe)), args.nll_samples, args.state_dtype, device)
    fid_ref = check_fid_reference(getattr(args, "fid_ref", None), getattr(args, "fid_extractor", "auto"), checkpoints)
    cells = shard_cells([c for name in checkpoints for c in make_cells(
        [name], methods, args.nfe, args.seeds, args.n_samples or _default_n(name), state_dtype=args.state_dtype,
        net_dtype=args.net_dtype, n_likelihood=args.nll_samples, guidance=args.guidance, fid_ref=fid_ref,
        budgets=lambda m, ck=checkpoints[name]: own_budgets(args.nfe, lambda n: _supports(m, n, ck.model)))], shard)
    ResultsStore(args.results).check()
    return RunPlan(cells, checkpoints, device)


def check_fid_reference(path, extractor: str, checkpoints: dict):
    """``--fid-ref``: the reference set read once (images streamed), validated and named by its content hash
    (``bench.metrics.reference_sets``), and every checkpoint's samples comparable with it; None without one."""
    if path is None:
        if extractor not in (None, "auto"):
            raise ValueError(f"--fid-extractor {extractor}: needs --fid-ref (the extractor of a checkpoint's own "
                             f"reference follows its data)")
        return None
    from .metrics.features import DINOV2_DIMS, INCEPTION, INCEPTION_ENV, dinov2_sources
    from .metrics.reference_sets import check_checkpoint, open_reference

    ref = open_reference(path, extractor or "auto")
    for ck in checkpoints.values():
        check_checkpoint(ref, ck)
    weights = os.environ.get(INCEPTION_ENV)
    if ref.extractor == INCEPTION and weights and not Path(weights).is_file():
        raise ValueError(f"--fid-ref {path}: read with {INCEPTION}, whose weights {INCEPTION_ENV}={weights} do not "
                         f"exist")
    if ref.extractor in DINOV2_DIMS:
        try:
            dinov2_sources(ref.extractor)  # a pinned sha256, the local repository and weights (hashed when loaded)
        except FileNotFoundError as e:
            raise ValueError(f"--fid-ref {path}: {e}") from None
    return ref


def _default_n(name: str) -> int:
    import pretrained
    return pretrained.entry(name).default_n_samples

"""The grid of cells: checkpoint x method (+ options) x NFE x guidance scale x seed, each with a stable id.

A method is a sampler of the registry, or a likelihood estimator (``samplers.likelihood``) named
``nll:<estimator>``; an estimator's cell estimates the NLL of the checkpoint's held-out data.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

import samplers
from samplers import likelihood
from samplers.model import check_guidance
from samplers.registry import Sampler

# --state-dtype / --net-dtype values; "native" computes the network in its own weights' dtype.
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_DTYPES = ("float64", "float32")
NET_DTYPES = ("native", "bfloat16", "float16")
DEFAULT_STATE_DTYPE = "float64"  # on every device: state arithmetic is cheap next to the network
NLL_PREFIX = "nll:"
# the adaptive reference, an NLL-vs-NFE curve of the PF-ODE, and VDM's bound against its number of time samples
DEFAULT_ESTIMATORS = ("ode_dopri5", "ode_heun", "vlb_continuous")
DEFAULT_NLL_SAMPLES = 50  # held-out data points per likelihood cell (dopri5 on digits: ~290 NFE with a backward pass each)


class LikelihoodMethod:
    """A likelihood estimator as a method of the sweep: ``nll:<estimator>`` in the results."""

    stochastic = False

    def __init__(self, estimator: likelihood.Estimator):
        self.estimator, self.name = estimator, NLL_PREFIX + estimator.name
        self.options, self.adaptive = estimator.options, estimator.adaptive

    def check_nfe(self, nfe) -> None:
        self.estimator.check_nfe(nfe)

    def check_model(self, model, nfe=None) -> None:
        self.estimator.check_model(model)  # Unsupported for a schedule family the estimator is not written for

    def config_json(self) -> str:
        return self.estimator.config_json()

    def __repr__(self):
        return f"LikelihoodMethod({self.name}, {self.config_json()})"


def available_methods() -> list[str]:
    """Every sampler and every likelihood estimator (``nll:<name>``)."""
    return samplers.available() + [NLL_PREFIX + n for n in likelihood.available_estimators()]


def get_method(name: str, **options):
    """A Sampler, or a LikelihoodMethod for ``nll:<estimator>``; ValueError naming what is allowed."""
    if name.startswith(NLL_PREFIX):
        est = name[len(NLL_PREFIX):]
        if est not in likelihood.available_estimators():
            raise ValueError(f"unknown likelihood estimator {name!r}; allowed: "
                             f"{[NLL_PREFIX + n for n in likelihood.available_estimators()]}")
        return LikelihoodMethod(likelihood.get_estimator(est, **options))
    return samplers.get(name, **options)


def parse_sampler_spec(spec: str) -> list[tuple[str, dict]]:
    """'NAME[,key=value...]' -> [(name, options)]; NAME may be a glob ('diffusers:*', 'dpm_solver*').

    Values are read as Python literals (1, 0.5, True, 'x') and otherwise kept as strings.
    """
    name, *pairs = [p.strip() for p in spec.split(",")]
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"sampler option {pair!r} in {spec!r} is not key=value")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    names = sorted(fnmatch.filter(available_methods(), name)) if any(c in name for c in "*?[") else [name]
    if not names:
        raise ValueError(f"no sampler matches {name!r}; allowed: {available_methods()}")
    return [(n, options) for n in names]


def resolve_samplers(specs: Sequence[str] | None) -> list:
    """Methods (samplers and likelihood estimators) for CLI specs; None means the default sweep.

    One algorithm with one configuration runs once: where a base name and a preset give the same
    function and options (``dpm_solver`` and ``dpm_solver_fast``), the preset's name is kept.
    """
    if not specs:
        return ([samplers.get(n) for n in samplers.available(default_sweep_only=True)]
                + [get_method(NLL_PREFIX + n) for n in DEFAULT_ESTIMATORS])
    out: dict[tuple, object] = {}
    for spec in specs:
        for name, options in parse_sampler_spec(spec):
            s = get_method(name, **options)
            if isinstance(s, LikelihoodMethod):
                out.setdefault((s.name, canonical_config(s.config_json())), s)
                continue
            key = (s.spec.fn, canonical_config(s.config_json()))
            if key not in out or (out[key].spec.base is None and s.spec.base is not None):
                out[key] = s
    return list(out.values())


def canonical_number(value):
    """A number as the cell key holds it: -0.0 is 0.0 (equal computations, equal ids); anything else unchanged."""
    return 0.0 if isinstance(value, float) and value == 0.0 else value


def canonical_config(config_json: str) -> str:
    """A method's options JSON with its numbers normalised (``canonical_number``), keys sorted."""
    config = json.loads(config_json)
    return json.dumps({k: canonical_number(v) for k, v in config.items()}, sort_keys=True)


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; ``nfe`` is None for adaptive samplers (they choose their own).

    ``state_dtype`` (solver state) and ``net_dtype`` (network precision) change the numbers, so they are
    part of the cell's identity; so is ``guidance``, the classifier-free guidance scale of a conditional
    checkpoint's cell (None: unconditional sampling, and a cell id as before guidance existed), and ``fid_ref``, a
    user's FID reference set (``bench.metrics.reference_sets.ReferenceSet``, named by its content hash; None: the
    checkpoint's own reference, and the cell id as before).
    """

    checkpoint: str
    sampler: Sampler | LikelihoodMethod
    nfe: int | None
    seed: int
    n_samples: int
    state_dtype: str = DEFAULT_STATE_DTYPE
    net_dtype: str = "native"
    guidance: float | None = None
    fid_ref: object = None

    @property
    def key(self) -> dict:
        key = {"checkpoint": self.checkpoint, "sampler": self.sampler.name,
               "sampler_config": canonical_config(self.sampler.config_json()), "nfe": self.nfe, "seed": self.seed,
               "n_samples": self.n_samples, "state_dtype": self.state_dtype, "net_dtype": self.net_dtype,
               "guidance": canonical_number(self.guidance)}
        if self.fid_ref is not None:
            key["fid_ref"] = self.fid_ref.key
        return key

    @property
    def cell_id(self) -> str:
        key = self.key
        if key["guidance"] is None:  # unguided cells keep the ids they had before the guidance axis
            del key["guidance"]
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def own_budgets(nfes: Iterable[int], supports: Callable[[int], bool]) -> list[int]:
    """The NFE budgets a method runs at: the sweep's ``nfes``, and, when it can spend none of them (a distilled
    student trained for 1, 2, 4, 8 in a sweep of 5, 10, 20), also every budget from 1 to the sweep's largest that
    ``supports`` (the method's NFE check on this checkpoint) accepts. The sweep's own budgets keep their rows (an
    ``unsupported`` row says why), so the cells of a method that fits the sweep never change.
    """
    nfes = sorted(set(nfes))
    if not nfes or any(supports(n) for n in nfes):
        return nfes
    return sorted(set(nfes) | {n for n in range(1, nfes[-1]) if supports(n)})


def make_cells(checkpoints: Iterable[str], sampler_objs: Iterable, nfes: Iterable[int],
               seeds: Iterable[int], n_samples: int, *, state_dtype: str = DEFAULT_STATE_DTYPE,
               net_dtype: str = "native", n_likelihood: int = DEFAULT_NLL_SAMPLES,
               guidance: Iterable[float] | None = None, fid_ref=None,
               budgets: Callable[[object], list[int]] | None = None) -> list[Cell]:
    """The sweep in run order: grouped by checkpoint and seed so x_T and references are shared.

    A sampler's cell draws ``n_samples`` samples, once per classifier-free ``guidance`` scale if given (None:
    unconditional); a likelihood estimator's cell evaluates the first ``n_likelihood`` held-out data points
    (unguided: it is the likelihood of the checkpoint's unconditional model). ``fid_ref``: the sampler cells' FID
    reference set (None: each checkpoint's own). ``budgets(method)``: the NFE budgets of one method (default: the
    sweep's ``nfes``; ``bench.preflight.plan_run`` passes ``own_budgets`` against each checkpoint).
    """
    nfes, sampler_objs = sorted(set(nfes)), list(sampler_objs)
    for n in nfes:
        if n < 1:
            raise ValueError(f"--nfe values must be >= 1, got {n}")
    if n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {n_samples}")
    if n_likelihood < 1:
        raise ValueError(f"--nll-samples must be >= 1, got {n_likelihood}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state dtype {state_dtype!r} is not allowed; allowed: {list(STATE_DTYPES)}")
    if net_dtype not in NET_DTYPES:
        raise ValueError(f"network dtype {net_dtype!r} is not allowed; allowed: {list(NET_DTYPES)}")
    scales = [None] if guidance is None else sorted({canonical_number(check_guidance(g)) for g in guidance})
    if not scales:
        raise ValueError("--guidance needs at least one scale; allowed: numbers >= 0")
    cells = []
    for ck in checkpoints:
        for seed in dict.fromkeys(int(s) for s in seeds):
            for s in sampler_objs:
                n = n_likelihood if isinstance(s, LikelihoodMethod) else n_samples
                for nfe in ([None] if s.adaptive else nfes if budgets is None else budgets(s)):
                    for g in [None] if isinstance(s, LikelihoodMethod) else scales:
                        ref = None if isinstance(s, LikelihoodMethod) else fid_ref
                        cells.append(Cell(ck, s, nfe, seed, int(n), state_dtype, net_dtype, g, ref))
    return cells


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'i/N' (0 <= i < N) -> (i, N): this job takes cells i, i + N, ... of the sweep."""
    if spec is None:
        return None
    try:
        i, n = (int(p) for p in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r} is not i/N with integers, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec!r}: need 0 <= i < N, e.g. 0/4 .. 3/4")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    return cells if shard is None else cells[shard[0]::shard[1]]

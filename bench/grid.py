"""The grid of cells: checkpoint x sampler (+ options) x NFE x seed, each with a stable id."""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import samplers
from samplers.registry import Sampler


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
    names = sorted(fnmatch.filter(samplers.available(), name)) if any(c in name for c in "*?[") else [name]
    if not names:
        raise ValueError(f"no sampler matches {name!r}; allowed: {samplers.available()}")
    return [(n, options) for n in names]


def resolve_samplers(specs: Sequence[str] | None) -> list[Sampler]:
    """Sampler objects for CLI specs; None means the registry's default sweep.

    One algorithm with one configuration runs once: where a base name and a preset give the same
    function and options (``dpm_solver`` and ``dpm_solver_fast``), the preset's name is kept.
    """
    if not specs:
        return [samplers.get(n) for n in samplers.available(default_sweep_only=True)]
    out: dict[tuple, Sampler] = {}
    for spec in specs:
        for name, options in parse_sampler_spec(spec):
            s = samplers.get(name, **options)
            key = (s.spec.fn, s.config_json())
            if key not in out or (out[key].spec.base is None and s.spec.base is not None):
                out[key] = s
    return list(out.values())


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; ``nfe`` is None for adaptive samplers (they choose their own)."""

    checkpoint: str
    sampler: Sampler
    nfe: int | None
    seed: int
    n_samples: int

    @property
    def key(self) -> dict:
        return {"checkpoint": self.checkpoint, "sampler": self.sampler.name,
                "sampler_config": self.sampler.config_json(), "nfe": self.nfe, "seed": self.seed,
                "n_samples": self.n_samples}

    @property
    def cell_id(self) -> str:
        return hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]


def make_cells(checkpoints: Iterable[str], sampler_objs: Iterable[Sampler], nfes: Iterable[int],
               seeds: Iterable[int], n_samples: int) -> list[Cell]:
    """The sweep in run order: grouped by checkpoint and seed so x_T and references are shared."""
    nfes, sampler_objs = sorted(set(nfes)), list(sampler_objs)
    for n in nfes:
        if n < 1:
            raise ValueError(f"--nfe values must be >= 1, got {n}")
    if n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {n_samples}")
    cells = []
    for ck in checkpoints:
        for seed in seeds:
            for s in sampler_objs:
                for nfe in ([None] if s.adaptive else nfes):
                    cells.append(Cell(ck, s, nfe, int(seed), int(n_samples)))
    return cells

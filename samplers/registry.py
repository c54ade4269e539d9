"""The sampler registry: every sampler behind one interface, ``get(name, **options).sample(model, x_T, nfe)``.

A sampler is a pure function ``fn(model, x_T, nfe, *, noise, **options) -> x_0`` plus a frozen set
of options (STYLE principle 7). Names are validated when registered (duplicates raise); options are
validated when a sampler is built (unknown names or values raise ``ValueError`` naming the allowed
ones); an NFE budget a sampler cannot spend exactly raises ``UnsupportedNFE``, never a silent change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from . import grids


class UnsupportedNFE(ValueError):
    """The sampler cannot spend exactly this NFE budget with these options."""


def _any_nfe(nfe: int, **options) -> None:
    if nfe < 1:
        raise UnsupportedNFE(f"NFE must be >= 1, got {nfe}")


@dataclass(frozen=True)
class SamplerSpec:
    """What ``register`` records: the function, its default options and the values each may take."""

    name: str
    fn: Callable
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple]
    check_nfe: Callable[..., None]
    stochastic: bool | Callable[..., bool]
    description: str
    in_default_sweep: bool
    adaptive: bool = False
    base: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, SamplerSpec] = {}
_LAZY: dict[str, Callable[[], None]] = {}  # name -> registers it on first use (heavy optional imports)


def register(name: str, *, defaults: Mapping[str, Any], choices: Mapping[str, tuple] | None = None,
             check_nfe: Callable[..., None] = _any_nfe, stochastic: bool | Callable[..., bool] = False, description: str = "",
             in_default_sweep: bool = True, adaptive: bool = False):
    """Decorator registering ``fn(model, x_T, nfe, *, noise, **options)`` under ``name``.

    ``defaults`` lists every option with its default value; ``choices`` restricts an option to a
    tuple of values (an option "grid" is restricted to the grid registry unless given). Other
    options must match the type of their default. ``stochastic`` is a bool or a function of the
    options (e.g. DDIM draws noise only when eta > 0). An ``adaptive`` sampler chooses its own
    steps from tolerances: it is called with ``nfe=None`` and its NFE is what the count says.
    """
    def deco(fn):
        ch = dict(choices or {})
        if "grid" in defaults and "grid" not in ch:
            ch["grid"] = tuple(grids.available())
        _add(SamplerSpec(name, fn, MappingProxyType(dict(defaults)), MappingProxyType(ch), check_nfe,
                         stochastic, description or (fn.__doc__ or name).strip().splitlines()[0], in_default_sweep,
                         adaptive))
        return fn
    return deco


def register_lazy(name: str, load: Callable[[], None]) -> None:
    """List ``name`` now; ``load()`` must register it, and runs when the name is first looked up."""
    if name in _REGISTRY or name in _LAZY:
        raise ValueError(f"sampler {name!r} is already registered")
    _LAZY[name] = load


def register_preset(name: str, base: str, *, description: str = "", in_default_sweep: bool = True, **fixed):
    """Register ``name`` as ``base`` with some options fixed (e.g. DPM-Solver++(2M) = method, order)."""
    spec = _spec(base)
    _validate(spec, fixed)
    _add(SamplerSpec(name, spec.fn, spec.defaults, spec.choices, spec.check_nfe, spec.stochastic,
                     description or spec.description, in_default_sweep, spec.adaptive, base=base,
                     fixed=MappingProxyType(dict(fixed))))


def _add(spec: SamplerSpec):
    if not spec.name or any(c.isspace() for c in spec.name):
        raise ValueError(f"invalid sampler name {spec.name!r}")
    if spec.name in _REGISTRY or spec.name in _LAZY:
        raise ValueError(f"sampler {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def _spec(name: str) -> SamplerSpec:
    if name not in _REGISTRY and name in _LAZY:
        _LAZY.pop(name)()
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; allowed: {available()}")
    return _REGISTRY[name]


def _validate(spec: SamplerSpec, options: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in options.items():
        if key not in spec.defaults:
            raise ValueError(f"sampler {spec.name!r} has no option {key!r}; allowed: {sorted(spec.defaults)}")
        if key in spec.choices:
            if value not in spec.choices[key]:
                raise ValueError(f"sampler {spec.name!r}: {key}={value!r} is not allowed; allowed: {list(spec.choices[key])}")
        else:
            value = _coerce(spec.name, key, value, spec.defaults[key])
        out[key] = value
    return out


def _coerce(sampler: str, key: str, value, default):
    """Check ``value`` against the type of the option's default (ints are accepted for floats)."""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok, value = is_num, float(value) if is_num else value
    elif isinstance(default, int):
        ok = is_num and float(value).is_integer()
        value = int(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"sampler {sampler!r}: option {key}={value!r} must be of type {type(default).__name__}")
    return value


class Sampler:
    """A registered sampling rule with frozen options; ``sample`` is a pure function of its inputs."""

    def __init__(self, spec: SamplerSpec, options: Mapping[str, Any]):
        self.spec = spec
        self.name = spec.name
        user = _validate(spec, options)
        clash = {k for k in user if k in spec.fixed and user[k] != spec.fixed[k]}
        if clash:
            raise ValueError(f"sampler {spec.name!r} fixes {sorted(clash)}; use {spec.base!r} to change them")
        self.options = MappingProxyType({**spec.defaults, **spec.fixed, **user})

    @property
    def stochastic(self) -> bool:
        st = self.spec.stochastic
        return bool(st(**self.options) if callable(st) else st)

    @property
    def adaptive(self) -> bool:
        return self.spec.adaptive

    def check_nfe(self, nfe: int | None) -> None:
        """Raise ``UnsupportedNFE`` if this sampler cannot spend exactly ``nfe`` evaluations."""
        if self.adaptive:
            if nfe is not None:
                raise UnsupportedNFE(f"{self.name!r} is adaptive: it picks its own NFE from atol/rtol; pass nfe=None")
            return
        if nfe is None or int(nfe) != nfe:
            raise UnsupportedNFE(f"NFE must be an integer, got {nfe!r}")
        self.spec.check_nfe(int(nfe), **self.options)

    def sample(self, model, x_T: torch.Tensor, nfe: int | None, *, noise=None) -> torch.Tensor:
        """Integrate from x_T (at t = T) to t_end spending the NFE budget; returns x at t_end (float64)."""
        self.check_nfe(nfe)
        if self.stochastic and noise is None:
            raise ValueError(f"sampler {self.name!r} is stochastic: pass noise=SampleNoise(...)")
        return self.spec.fn(model, x_T.to(torch.float64), None if nfe is None else int(nfe), noise=noise,
                            **self.options)

    def config_json(self) -> str:
        """Every option, sorted: the sampler's identity in a results row."""
        return json.dumps(dict(self.options), sort_keys=True)

    def __repr__(self):
        return f"Sampler({self.name}, {self.config_json()})"


def get(name: str, **options) -> Sampler:
    """The sampler registered as ``name`` with ``options`` overriding its defaults."""
    return Sampler(_spec(name), options)


def available(default_sweep_only: bool = False) -> list[str]:
    lazy = [] if default_sweep_only else list(_LAZY)  # lazy names are never in the default sweep
    return sorted([n for n, s in _REGISTRY.items() if s.in_default_sweep or not default_sweep_only] + lazy)


def describe(name: str) -> SamplerSpec:
    return _spec(name)

"""The sampler registry: every sampler behind one interface, ``get(name, **options).sample(model, x_T, nfe)``.

A sampler is a pure function ``fn(model, x_T, nfe, *, noise, **options) -> x_0`` plus a frozen set
of options (STYLE principle 7). Names are validated when registered (duplicates raise); options are
validated when a sampler is built (unknown names, wrong types, values outside their choices or range
raise ``ValueError`` naming the allowed ones), never halfway through a sweep; an NFE budget a sampler
cannot spend exactly raises ``UnsupportedNFE``, never a silent change; a budget above ``MAX_NFE`` is a
user error (``validate_nfe``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from . import grids
from .state import check_state

MAX_NFE = 1000  # larger budgets are refused unless asked for (``validate_nfe(..., allow_large=True)``)
CLOSED = ("both", "left", "right", "neither")


def validate_nfe(nfe, allow_large: bool = False) -> None:
    """ValueError unless ``nfe`` is an integer in [1, MAX_NFE] (above MAX_NFE only with ``allow_large``)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise ValueError(f"NFE must be an integer, got {nfe!r}")
    if nfe < 1:
        raise ValueError(f"NFE must be >= 1, got {nfe}")
    if nfe > MAX_NFE and not allow_large:
        raise ValueError(f"NFE {nfe} exceeds the cap of {MAX_NFE}; pass --allow-large-nfe to run it")


@dataclass(frozen=True)
class Interval:
    """The values a numeric option may take: from lo to hi (None: unbounded), ends ``closed`` as pandas.Interval."""

    lo: float | None = None
    hi: float | None = None
    closed: str = "both"

    def __post_init__(self):
        if self.closed not in CLOSED:
            raise ValueError(f"Interval closed={self.closed!r}; allowed: {list(CLOSED)}")

    def __contains__(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            return False
        lo_ok = self.lo is None or (v >= self.lo if self.closed in ("both", "left") else v > self.lo)
        hi_ok = self.hi is None or (v <= self.hi if self.closed in ("both", "right") else v < self.hi)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        left = "[" if self.lo is not None and self.closed in ("both", "left") else "("
        right = "]" if self.hi is not None and self.closed in ("both", "right") else ")"
        return f"{left}{'-inf' if self.lo is None else self.lo}, {'inf' if self.hi is None else self.hi}{right}"


# t_end is a positive number or None (the model's own end) when a sampler is built (the model's T is not known
# then: VP 1, EDM sigma_max); ``Sampler.check_model`` checks it against the model's schedule before a cell runs.
T_END_RANGE = Interval(0.0, None, "neither")


class Unsupported(ValueError):
    """The sampler cannot run this cell (an NFE budget, a network the checkpoint lacks): an ``unsupported`` row."""


class UnsupportedNFE(Unsupported):
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
    bounds: Mapping[str, Interval]
    validate: Callable[..., None] | None
    check_nfe: Callable[..., None]
    stochastic: bool | Callable[..., bool]
    description: str
    in_default_sweep: bool
    adaptive: bool = False
    base: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    requires: Callable[..., None] | None = None


_REGISTRY: dict[str, SamplerSpec] = {}
_LAZY: dict[str, Callable[[], None]] = {}  # name -> registers it on first use (heavy optional imports)


def register(name: str, *, defaults: Mapping[str, Any], choices: Mapping[str, tuple] | None = None,
             bounds: Mapping[str, Interval] | None = None, validate: Callable[..., None] | None = None,
             check_nfe: Callable[..., None] = _any_nfe, stochastic: bool | Callable[..., bool] = False, description: str = "",
             in_default_sweep: bool = True, adaptive: bool = False, requires: Callable[..., None] | None = None,
             ending: Callable[..., torch.Tensor] | None = None):
    """Decorator registering ``fn(model, x_T, nfe, *, noise, **options)`` under ``name``.

    ``defaults`` lists every option with its default value; ``choices`` restricts an option to a
    tuple of values (an option "grid" is restricted to the grid registry unless given). Other
    options must match the type of their default; floats must be finite. Every numeric option
    without choices needs an ``Interval`` in ``bounds`` (an option "t_end" gets ``T_END_RANGE`` unless
    given). ``validate(**options)``, if given, checks the options together and raises ValueError. All
    of this runs when a sampler is built. ``stochastic`` is a bool or a function of the
    options (e.g. DDIM draws noise only when eta > 0). A fixed-step sampler with ``t_end`` and no ending of its own
    also gets the option ``denoise_to_zero`` (``ENDING``): its last NFE becomes x0(x, t_end). An ``adaptive`` sampler
    chooses its own
    steps from tolerances: it is called with ``nfe=None`` and its NFE is what the count says.
    ``requires(model, nfe, **options)``, if given, raises ``Unsupported`` where the model lacks what the sampler
    needs (a distilled student, a student trained for this NFE, a derivative head). ``ending(model, x, t_end,
    **options)``, if given, replaces ``model.x0`` as the final denoising step.
    """
    def deco(fn):
        ch, bd = dict(choices or {}), dict(bounds or {})
        run, check, opts = fn, check_nfe, dict(defaults)
        if _takes_ending(opts, adaptive):
            run, check, opts[ENDING] = _with_ending(fn, ending), _check_with_ending(check_nfe), False
        if "grid" in defaults and "grid" not in ch:
            ch["grid"] = tuple(grids.available())
        if "t_end" in defaults and "t_end" not in bd:
            bd["t_end"] = T_END_RANGE
        unknown = sorted((set(ch) | set(bd)) - set(opts))
        unbounded = sorted(k for k, v in opts.items() if _is_number(v) and k not in ch and k not in bd)
        if unknown or unbounded:
            raise ValueError(f"sampler {name!r}: choices/bounds for unknown options {unknown}; "
                             f"numeric options without choices or bounds: {unbounded}")
        spec = SamplerSpec(name, run, MappingProxyType(opts), MappingProxyType(ch), MappingProxyType(bd),
                           validate, check, stochastic,
                           description or (fn.__doc__ or name).strip().splitlines()[0], in_default_sweep, adaptive,
                           requires=requires)
        _validate(spec, opts)  # the defaults themselves must be allowed
        _add(spec)
        return fn
    return deco


ENDING = "denoise_to_zero"  # DPM-Solver's final denoising step: the last NFE is x0(x, t_end) (k-diffusion: sigma -> 0)


def _takes_ending(defaults: Mapping[str, Any], adaptive: bool) -> bool:
    """Every fixed-step sampler with a ``t_end`` gets the ending, unless it has its own (GENIE's ``denoise``, lms'
    ``to_zero``)."""
    return "t_end" in defaults and not {ENDING, "denoise", "to_zero"} & set(defaults) and not adaptive


def _with_ending(fn: Callable, ending: Callable[..., torch.Tensor] | None = None) -> Callable:
    """``fn`` with the option ``denoise_to_zero``: nfe - 1 evaluations of ``fn``, then x0(x, t_end), one NFE.

    ``ending(model, x, t_end, **options)``, if given, is the sampler's own x0 (DPM-Solver++ thresholds it).
    """
    def run(model, x, nfe, *, noise, denoise_to_zero, **options):
        if not denoise_to_zero:
            return fn(model, x, nfe, noise=noise, **options)
        x = fn(model, x, nfe - 1, noise=noise, **options)
        t_end = grids.end_time(model.schedule, options.get("t_end"))
        return model.x0(x, t_end) if ending is None else ending(model, x, t_end, **options)
    run.__doc__ = fn.__doc__
    return run


def _check_with_ending(check: Callable[..., None]) -> Callable[..., None]:
    def run(nfe: int, *, denoise_to_zero: bool, **options) -> None:
        if denoise_to_zero and nfe < 2:
            raise UnsupportedNFE(f"denoise_to_zero spends the last NFE on x0(x, t_end) after at least one step: "
                                 f"NFE >= 2, got {nfe}")
        check(nfe - int(denoise_to_zero), **options)
    return run


def register_lazy(name: str, load: Callable[[], None]) -> None:
    """List ``name`` now; ``load()`` must register it, and runs when the name is first looked up."""
    if name in _REGISTRY or name in _LAZY:
        raise ValueError(f"sampler {name!r} is already registered")
    _LAZY[name] = load


def register_preset(name: str, base: str, *, description: str = "", in_default_sweep: bool = True, **fixed):
    """Register ``name`` as ``base`` with some options fixed (e.g. DPM-Solver++(2M) = method, order)."""
    spec = _spec(base)
    _validate(spec, fixed)
    _add(SamplerSpec(name, spec.fn, spec.defaults, spec.choices, spec.bounds, spec.validate, spec.check_nfe,
                     spec.stochastic,
                     description or spec.description, in_default_sweep, spec.adaptive, base=base,
                     fixed=MappingProxyType(dict(fixed)), requires=spec.requires))


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
        if value is None and spec.defaults[key] is None:
            out[key] = None  # an optional number left to the model (t_end: the schedule's own end)
            continue
        value = _coerce(spec.name, key, value, spec.defaults[key])
        if key in spec.choices:
            if value not in spec.choices[key] and not _explicit_grid(spec, key, value):
                raise ValueError(f"sampler {spec.name!r}: {key}={value!r} is not allowed; allowed: {list(spec.choices[key])}")
        elif key in spec.bounds:
            if value not in spec.bounds[key]:  # NaN and inf are in no Interval
                raise ValueError(f"sampler {spec.name!r}: {key}={value!r} is out of range; allowed: {spec.bounds[key]}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"sampler {spec.name!r}: {key}={value!r} is not allowed; allowed: finite numbers")
        out[key] = value
    return out


def _explicit_grid(spec: SamplerSpec, key: str, value) -> bool:
    """An explicit-times grid (``grids.register_times``: a fitted schedule) is allowed where every named grid is."""
    return (key == "grid" and isinstance(value, str) and grids.explicit_times(value) is not None
            and set(grids.available()) <= set(spec.choices[key]))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(sampler: str, key: str, value, default):
    """Check ``value`` against the type of the option's default (ints are accepted for floats)."""
    is_num = _is_number(value)
    if default is None:  # an optional number (None: the model decides)
        if not is_num:
            raise ValueError(f"sampler {sampler!r}: option {key}={value!r} must be a number or None")
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = is_num
        try:
            value = float(value) if is_num else value
        except OverflowError:  # an int beyond float's range: inf, which no bound allows
            value = math.inf if value > 0 else -math.inf
    elif isinstance(default, int):
        ok = isinstance(value, int) and is_num or (isinstance(value, float) and value.is_integer())
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
        if spec.validate is not None:
            spec.validate(**self.options)

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

    def check_model(self, model, nfe: int | None) -> None:
        """Raise ``Unsupported`` if ``model`` lacks a network this sampler needs at ``nfe`` (see ``register``), or if
        the ``t_end`` option lies outside the model's time range."""
        if "t_end" in self.options:
            try:
                grids.end_time(model.schedule, self.options["t_end"])
            except ValueError as e:
                raise Unsupported(f"{self.name}: {e}") from None
        if self.spec.requires is not None:
            self.spec.requires(model, nfe, **self.options)

    def sample(self, model, x_T: torch.Tensor, nfe: int | None, *, noise=None) -> torch.Tensor:
        """Integrate from x_T (at t = T) to t_end spending the NFE budget; returns x at t_end.

        The solver state has x_T's dtype (float64 or float32) and device; so does the result. ``noise``
        (a ``SampleNoise`` with x_T's sample indices) is drawn where x_T is.
        """
        self.check_nfe(nfe)
        self.check_model(model, nfe)
        check_state(x_T, self.name)
        if self.stochastic and noise is None:
            raise ValueError(f"sampler {self.name!r} is stochastic: pass noise=SampleNoise(...)")
        if noise is not None:
            noise = noise.like(x_T)
        return self.spec.fn(model, x_T, None if nfe is None else int(nfe), noise=noise, **self.options)

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

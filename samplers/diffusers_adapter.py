"""diffusers schedulers as samplers: a 1000-step discrete view of the model's schedule (DPM-Solver's convention).

Discrete step n (0-based) sits at continuous t_n = (n + 1) / 1000 with alphas_cumprod_n = alpha(t_n)^2,
so betas_n = 1 - acp_n / acp_{n-1} (acp_{-1} = 1); a scheduler timestep k (possibly fractional) is
evaluated at t = (k + 1) / 1000. Each name ``diffusers:<ClassName>`` takes the class's own config options
(its defaults are the class's defaults), except those the model's schedule fixes; they are checked when the
sampler is built (ranges, the values diffusers implements, and the scheduler built and its timesteps set once).
diffusers is imported only when such a sampler is first used (its import takes seconds).

Devices: the solver state stays on x_T's device in x_T's dtype between steps (diffusers casts to float32 inside
some steps); the scheduler's own tables stay on the CPU in float64, and their 0-d entries scale device tensors.
diffusers looks its step index up with ``.item()`` on its (CPU) timesteps: host work per step, not ours to change.
"""
from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from unittest import mock

import torch

from .registry import Interval, Unsupported, UnsupportedNFE, register, register_lazy
from .schedules import VPSchedule
from .schedules import VPDiscrete

N_TRAIN = 1000
MAX_STEPS = N_TRAIN  # num_inference_steps searched for an exact NFE budget
DETERMINISTIC = ("DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                 "DEISMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                 "HeunDiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler")
STOCHASTIC = ("DDPMScheduler", "EulerAncestralDiscreteScheduler")
# Fixed by the model's schedule (or incompatible with a VP epsilon model): never user options.
ADAPTER_KEYS = frozenset({"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                          "prediction_type", "rescale_betas_zero_snr", "use_flow_sigmas", "flow_shift",
                          "use_dynamic_shifting", "time_shift_type", "shift_terminal", "sigma_min", "sigma_max"})
_PROBE = VPDiscrete.linear()  # any schedule: it fixes the step count search only
# diffusers itself switches lower_order_final on whenever final_sigmas_type="zero": make that the default.
DEFAULT_OVERRIDES = {"DPMSolverSinglestepScheduler": {"lower_order_final": True}}
SNAP_RTOL = 1e-5  # a float32 sigma within this of a float64 one is that one
PROBE_STEPS = 10  # when a sampler is built, set_timesteps must succeed for one of 1 .. PROBE_STEPS steps
# Numeric options: the range each is meaningful in (diffusers checks none of them). An unlisted one (a newer diffusers)
# must be finite; tests list the installed version's options.
OPTION_BOUNDS = {"steps_offset": Interval(0, N_TRAIN - 1), "dynamic_thresholding_ratio": Interval(0.0, 1.0, "right"),
                 "sample_max_value": Interval(0.0, None, "neither"),
                 "clip_sample_range": Interval(0.0, None, "neither")}
# solver_order: diffusers' multistep DPM-Solver and DEIS run any order > 3 as order 3; UniPC takes any order.
SOLVER_ORDER = {"DPMSolverMultistepScheduler": Interval(1, 3), "DPMSolverSinglestepScheduler": Interval(1, 3),
                "DEISMultistepScheduler": Interval(1, 3), "UniPCMultistepScheduler": Interval(1, None)}
# String options: the values diffusers implements for this adapter; other values raise only in step(), or are
# remapped silently (DEIS algorithm_type "dpmsolver" -> "deis"), or ignored (timestep_type "continuous" acts on
# v-prediction only; variance_type "learned*" needs a variance output the adapter's eps model has not).
OPTION_CHOICES = {"timestep_spacing": ("linspace", "leading", "trailing"), "final_sigmas_type": ("zero", "sigma_min"),
                  "interpolation_type": ("linear", "log_linear"), "timestep_type": ("discrete",),
                  "variance_type": ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")}
CLASS_CHOICES = {
    "DPMSolverMultistepScheduler": {"algorithm_type": ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"),
                                    "solver_type": ("midpoint", "heun")},
    "DPMSolverSinglestepScheduler": {"algorithm_type": ("dpmsolver", "dpmsolver++", "sde-dpmsolver++"),
                                     "solver_type": ("midpoint", "heun")},
    "DEISMultistepScheduler": {"algorithm_type": ("deis",), "solver_type": ("logrho",)},
    "UniPCMultistepScheduler": {"solver_type": ("bh1", "bh2")},
}
_TABLES = ("betas", "alphas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t", "final_alpha_cumprod")


def _class(cls_name: str):
    import diffusers.schedulers
    return getattr(diffusers.schedulers, cls_name)


@lru_cache(maxsize=None)
def default_options(cls_name: str) -> dict:
    """The class's default config, less adapter-fixed keys and anything not a finite JSON scalar."""
    config = _class(cls_name)().config
    ok = lambda v: isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))
    out = {k: v for k, v in config.items() if not k.startswith("_") and k not in ADAPTER_KEYS and ok(v)}
    return {**out, **DEFAULT_OVERRIDES.get(cls_name, {})}


def _alphas_cumprod(schedule) -> torch.Tensor:
    """acp_n = alpha(t_n)^2 at t_n = (n + 1) / N (float64)."""
    t = torch.arange(1, N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    return torch.exp(2.0 * schedule.log_alpha(t))


def _t(k) -> float:
    """Scheduler timestep k -> continuous time (k + 1) / N."""
    return (float(k) + 1.0) / N_TRAIN


def _build(cls_name: str, schedule, options: dict):
    """The scheduler with betas from ``schedule``; its tables replaced by float64 ones (diffusers keeps float32)."""
    acp = _alphas_cumprod(schedule)
    betas = 1.0 - acp / torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    try:
        sch = _class(cls_name)(**options, num_train_timesteps=N_TRAIN, trained_betas=betas.numpy(),
                               prediction_type="epsilon")
    except (ValueError, NotImplementedError, TypeError) as e:
        raise ValueError(f"diffusers:{cls_name}: {e}") from e
    a_t = acp.sqrt()
    tables = {"betas": betas, "alphas": 1.0 - betas, "alphas_cumprod": acp, "alpha_t": a_t,
              "sigma_t": (1.0 - acp).sqrt(), "lambda_t": a_t.log() - 0.5 * torch.log1p(-acp),
              "final_alpha_cumprod": torch.tensor(1.0 if sch.config.get("set_alpha_to_one") else float(acp[0]),
                                                  dtype=torch.float64)}
    for name in _TABLES:
        if hasattr(sch, name):
            setattr(sch, name, tables[name])
    return sch


@contextmanager
def _quiet():
    """Silence diffusers' warnings about config changes while probing (a changed config is rejected)."""
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _set_timesteps(sch, steps: int, schedule) -> None:
    """set_timesteps(steps), then float64 sigmas: ValueError if diffusers fails or changes the config to allow it."""
    before = dict(sch.config)
    try:
        with _quiet():
            sch.set_timesteps(steps)
    except (ValueError, NotImplementedError, ZeroDivisionError, IndexError) as e:
        raise ValueError(f"{type(sch).__name__}.set_timesteps({steps}): {e}") from e
    after = dict(sch.config)
    changed = {k for k, v in before.items() if isinstance(v, (bool, int, float, str)) and after.get(k) != v}
    if changed:  # e.g. DPMSolverSinglestep turns lower_order_final on for odd steps
        raise ValueError(f"{type(sch).__name__} would change {sorted(changed)} to run {steps} steps")
    sig = getattr(sch, "sigmas", None)
    if sig is not None:
        # sigma = rho(t) at the times the model is called at; a trailing non-zero sigma (sigma_min, or a repeat
        # of the last one) is snapped to the float64 value it rounds.
        rho = schedule.rho((sch.timesteps.to(torch.float64) + 1.0) / N_TRAIN)
        snaps = torch.stack([rho[-1], schedule.rho(torch.tensor(1.0 / N_TRAIN, dtype=torch.float64))])
        tail = [next((c for c in snaps if abs(float(v) / float(c) - 1.0) < SNAP_RTOL), v) if v > 0 else v
                for v in sig[len(rho):].to(torch.float64)]
        sch.sigmas = torch.cat([rho, torch.stack(tail)]) if tail else rho


@lru_cache(maxsize=256)
def _steps_for(cls_name: str, frozen: tuple, nfe: int) -> int:
    """The num_inference_steps whose loop makes exactly nfe model calls; UnsupportedNFE if none.

    The count depends on the options only, never on the betas, so a fixed DDPM schedule serves as probe.
    """
    options, spent, error = dict(frozen), set(), None
    for steps in range(1, min(nfe, MAX_STEPS) + 3):  # every scheduler here spends >= steps calls
        sch = _build(cls_name, _PROBE, options)
        try:
            _set_timesteps(sch, steps, _PROBE)
        except ValueError as e:
            error = e
            continue
        if len(sch.timesteps) == nfe:
            return steps
        spent.add(len(sch.timesteps))
    if not spent:
        raise ValueError(f"diffusers:{cls_name} with {options}: {error}")
    near = [max([n for n in spent if n < nfe], default=None), min([n for n in spent if n > nfe], default=None)]
    raise UnsupportedNFE(f"diffusers:{cls_name} with {options} cannot spend exactly {nfe} model calls; "
                         f"nearest supported NFE: {[n for n in near if n is not None]}")


def _is_ve(sch) -> bool:
    """Sigma-space schedulers (Euler, Heun, LMS, ...) keep x / alpha and have init_noise_sigma != 1."""
    return float(sch.init_noise_sigma) != 1.0


def _noise_patch(sch, noise):
    """Feed the scheduler's randn_tensor from ``noise`` (per-sample streams): diffusers draws only from generators."""
    if noise is None:
        return nullcontext()
    def draw(shape, *args, dtype=None, **kwargs):
        z = noise.randn()
        if tuple(z.shape) != tuple(shape):
            raise ValueError(f"noise draws {tuple(z.shape)}, the scheduler needs {tuple(shape)}")
        return z.to(dtype or z.dtype)

    return mock.patch.object(sys.modules[type(sch).__module__], "randn_tensor", draw)


def _sample(model, x, nfe, *, noise, cls_name, stochastic, **options):
    """Run diffusers' own loop (scale_model_input, model, step) with exactly nfe model calls; returns x's dtype."""
    vp = model.schedule
    steps = _steps_for(cls_name, tuple(sorted(options.items())), nfe)
    sch = _build(cls_name, vp, options)
    _set_timesteps(sch, steps, vp)
    ve = _is_ve(sch)
    # x_T is taken to be at the scheduler's first timestep (below T for 'leading' spacing); VE state = x / alpha.
    sample = x * (sch.sigmas[0] ** 2 + 1.0).sqrt() if ve else x
    with _noise_patch(sch, noise if stochastic(**options) else None):
        for k in sch.timesteps:
            eps = model.eps(sch.scale_model_input(sample, k), _t(k))
            sample = sch.step(eps, k, sample).prev_sample
    # Back to x at the final noise level (sigma_last = 0 means t = 0, x = x0).
    out = sample / (sch.sigmas[-1] ** 2 + 1.0).sqrt() if ve else sample
    return out.to(x.dtype)


def _stochastic(cls_name: str):
    if cls_name in STOCHASTIC:
        return lambda **_: True
    return lambda algorithm_type="", **_: str(algorithm_type).startswith("sde")


def _check(cls_name: str):
    def check_nfe(nfe, **options):
        if nfe < 1:
            raise UnsupportedNFE(f"NFE must be >= 1, got {nfe}")
        _steps_for(cls_name, tuple(sorted(options.items())), nfe)
    return check_nfe


def _validator(cls_name: str):
    """validate(**options): the scheduler builds with them, keeps them, and sets its timesteps for some step count."""
    def validate(**options):
        sch = _build(cls_name, _PROBE, options)
        changed = {k: sch.config.get(k) for k, v in options.items() if sch.config.get(k) != v}
        if changed:
            raise ValueError(f"diffusers:{cls_name} would run with {changed} instead of "
                             f"{ {k: options[k] for k in changed} }")
        error = None
        for steps in range(1, PROBE_STEPS + 1):
            try:
                _set_timesteps(_build(cls_name, _PROBE, options), steps, _PROBE)
                return
            except ValueError as e:
                error = e
        raise ValueError(f"diffusers:{cls_name} with {options}: {error}")
    return validate


def _limits(cls_name: str, defaults: dict) -> tuple[dict, dict]:
    """(choices, bounds) of the class's options: the tables above; any other number must be finite."""
    choices = {k: v for k, v in {**OPTION_CHOICES, **CLASS_CHOICES.get(cls_name, {})}.items() if k in defaults}
    numbers = [k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    bounds = {**OPTION_BOUNDS, "solver_order": SOLVER_ORDER.get(cls_name, Interval())}
    return choices, {k: bounds.get(k, Interval()) for k in numbers if k not in choices}


def _requires_vp(model, nfe, **_) -> None:
    """The adapter hands diffusers a DDPM view (betas) of the schedule: VP only."""
    if not isinstance(model.schedule, VPSchedule):
        raise Unsupported(f"the diffusers adapter views a schedule as DDPM betas (variance preserving); "
                          f"{model.name!r} has the {model.schedule.family} schedule {model.schedule!r}")


def _loader(cls_name: str):
    def load():
        stochastic = _stochastic(cls_name)

        def fn(model, x, nfe, *, noise, **options):
            return _sample(model, x, nfe, noise=noise, cls_name=cls_name, stochastic=stochastic, **options)

        defaults = default_options(cls_name)
        choices, bounds = _limits(cls_name, defaults)
        register(f"diffusers:{cls_name}", defaults=defaults, choices=choices, bounds=bounds,
                 validate=_validator(cls_name), check_nfe=_check(cls_name), stochastic=stochastic,
                 in_default_sweep=False, requires=_requires_vp,
                 description=f"diffusers {cls_name} over a 1000-step discrete view of the model's schedule")(fn)
    return load


for _name in DETERMINISTIC + STOCHASTIC:
    register_lazy(f"diffusers:{_name}", _loader(_name))

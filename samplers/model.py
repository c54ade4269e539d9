"""The model boundary: any network f(x, t) with its prediction type becomes eps / x0 / score at continuous t.

Prediction types are normalised here and nowhere else (STYLE principle 2). Every call of the wrapped
network is counted, so NFE is measured, never inferred from a step count (principle 4). Every call also
checks the network's output (a floating tensor of x's shape on x's device) from metadata alone: no host sync.
A conditional network f(x, t, c) is guided here too (classifier-free guidance, ``DiffusionModel.guided``), so
samplers never see conditions.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import math

import torch

from .noise import sample_labels
from .schedules import NoiseSchedule, VPDiscrete, VPSchedule

PREDICTIONS = ("eps", "x0", "v", "score", "edm", "velocity")
TIME_INPUTS = ("continuous", "discrete")
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class ClassLabels:
    """The condition of a class-conditional network: one label in 0..num_classes-1 per sample.

    The network is called ``fn(x, t_in, labels)``; label ``num_classes`` is the null (unconditional) class of
    classifier-free guidance, and ``fn(x, t_in)`` (no labels) means the null class for every sample. Another kind
    of condition (a text embedding) would give the same three methods: ``draw``, ``check``, ``null``.
    """

    def __init__(self, num_classes: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes

    def draw(self, seed: int, indices) -> torch.Tensor:
        """The labels of these sample indices: a function of (seed, index) only (``noise.sample_labels``)."""
        return sample_labels(seed, indices, self.num_classes)

    def check(self, labels, name: str = "model") -> torch.Tensor:
        """``labels`` as an int64 tensor of shape (B,); ValueError naming the allowed classes otherwise."""
        y = torch.as_tensor(labels)
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name}: labels must be integers of shape (batch,), got {tuple(y.shape)} {y.dtype}")
        bad = (y < 0) | (y >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(f"{name}: unknown class {int(y[bad][0])}; allowed: 0..{self.num_classes - 1}")
        return y.long()

    def null(self, batch: int, device) -> torch.Tensor:
        """The null condition of ``batch`` samples (the unconditional branch)."""
        return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)

    def __repr__(self):
        return f"ClassLabels({self.num_classes})"


def check_guidance(scale) -> float:
    """A classifier-free guidance scale as a float; ValueError unless it is a finite number >= 0."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"guidance scale {scale!r} is not a number; allowed: [0, inf)") from None
    if isinstance(scale, bool) or not math.isfinite(s) or s < 0:
        raise ValueError(f"guidance scale {scale!r} is out of range; allowed: [0, inf) (0: unconditional, "
                         f"1: conditional, > 1: guided)")
    return s


def same_device(a: torch.device, b: torch.device) -> bool:
    """a is b, where a device without an index ("cuda") stands for any index of its type."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), skipping the call where it would return x itself (a few microseconds per step)."""
    return x if x.dtype == dtype else x.to(dtype)


def alpha_sigma(schedule: NoiseSchedule, ts: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) at each time of a host grid (float64) as a model call there with a ``dtype`` state has them.

    A solver moves them to the state with its other tables and passes entry i as ``alpha_sigma`` to ``eps`` / ``x0``
    at ts[i]: converting between prediction types then computes no schedule values per call.
    """
    rows = [torch.stack([schedule.alpha(t), schedule.sigma(t)])  # t as the state holds it, one by one as a call does
            for t in ts.to(dtype).to(torch.float64).unbind()]
    a, s = torch.stack(rows).unbind(1)
    return a, s


def precision(device: torch.device, autocast_dtype: torch.dtype | None):
    """The context a network call runs in: autocast to ``autocast_dtype``, or full float32.

    cuDNN convolutions default to TF32 (a 10-bit mantissa: the digits UNet's eps moved by up to 9e-4 on an H200);
    "native" precision must mean the weights' own dtype, so TF32 is off during the call and restored after it.
    """
    if autocast_dtype is not None:
        return torch.autocast(device.type, autocast_dtype)
    if device.type != "cuda":
        return nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False)


class DiffusionModel:
    """A network ``fn(x, t_in) -> prediction`` seen through its schedule and prediction type.

    Args:
        fn: the network; called with x in ``net_dtype`` of shape (B, *data_shape) and a time
            tensor of shape (B,) in the network's own convention (see ``time_input``), both on
            ``device``; it must return a floating tensor of x's shape on x's device.
        schedule: the noise schedule the network was trained with (VP, EDM or flow matching).
        prediction: what ``fn`` predicts: "eps", "x0", "v" (alpha eps - sigma x0), "score", "edm" (EDM's F with
            its preconditioning: called as F(c_in x, c_noise), x0 = c_skip x + c_out F; needs an EDM schedule) or
            "velocity" (d x_t / d t = alpha' x0 + sigma' eps: a flow-matching network's v = eps - x0).
        time_input: "continuous" passes t in [0, T]; "discrete" passes (t - 1/N) N of a
            ``VPDiscrete`` schedule (DPM-Solver's map of continuous to discrete time).
        data_shape: the shape of one sample, e.g. (2,) or (1, 8, 8).
        net_dtype: dtype the network computes in; inputs are cast to it and outputs cast back.
        name: how errors and results name the network.
        device: where x must be (the network's device); "cuda" without an index accepts any GPU.
        autocast_dtype: None, or torch.bfloat16 / torch.float16 to call the network under
            ``torch.autocast`` (mixed precision); the output is cast back to x's dtype.
        heads: {name: DiffusionModel}: further networks of the same checkpoint and schedule (distilled students,
            GENIE's derivative head); ``head(name)`` gives a view whose calls count on this model's NFE.
        derivative_fn: ``(x_in, t_in) -> (out, d out / d gamma)`` from one network pass, gamma = sigma / alpha
            (GENIE's derivative along the PF-ODE); only for prediction "eps". See ``eps_and_derivative``.
        condition: None, or the condition a conditional network takes (``ClassLabels``): then ``fn(x_in, t_in)``
            is its unconditional output and ``guided(labels, scale)`` its classifier-free guided view.

    ``nfe`` counts evaluations of the model as the papers count them (one guided evaluation is one);
    ``network_passes`` counts the samples' passes through the network (two per guided evaluation).
    """

    def __init__(self, fn: Callable, schedule: NoiseSchedule, prediction: str = "eps", *,
                 time_input: str = "continuous", data_shape: tuple = (), net_dtype=torch.float32,
                 name: str = "model", device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                 heads: Mapping[str, "DiffusionModel"] | None = None, derivative_fn: Callable | None = None,
                 condition: ClassLabels | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; allowed: {list(PREDICTIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; allowed: {list(TIME_INPUTS)}")
        if time_input == "discrete" and not isinstance(schedule, VPDiscrete):
            raise ValueError("time_input='discrete' needs a VPDiscrete schedule")
        if prediction == "edm" and not hasattr(schedule, "precondition"):
            raise ValueError(f"{name}: prediction 'edm' needs a schedule with EDM's preconditioning (samplers.EDM), "
                             f"got {schedule!r}")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"{name}: autocast_dtype {autocast_dtype} is not supported; allowed: "
                             f"{[None, *AUTOCAST_DTYPES]}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{name}: {device!r} is not a torch device ({e})") from None
        self.fn, self.schedule, self.prediction = fn, schedule, prediction
        self.time_input, self.data_shape, self.net_dtype, self.name = time_input, tuple(data_shape), net_dtype, name
        if derivative_fn is not None and prediction != "eps":
            raise ValueError(f"{name}: derivative_fn needs an eps-prediction network, not {prediction!r}")
        for key, head in (heads or {}).items():
            if not isinstance(head, DiffusionModel) or head.schedule is not schedule and repr(head.schedule) != repr(schedule):
                raise ValueError(f"{name}: head {key!r} must be a DiffusionModel on the same schedule")
        self.device, self.autocast_dtype = device, autocast_dtype
        self.heads = MappingProxyType(dict(heads or {}))
        self.derivative_fn = derivative_fn
        self.condition = condition
        self._vp = isinstance(schedule, VPSchedule)  # v = alpha eps - sigma x0 inverts without a norm on VP
        self._count = [0]  # shared with the views ``head`` and ``guided`` return, so their calls count here
        self._passes = [0]  # network passes per sample, shared alike
        self._passes_per_call = 1  # 2 in a guided view whose calls batch both branches

    @property
    def nfe(self) -> int:
        """Network evaluations made through this boundary and its heads' views."""
        return self._count[0]

    @nfe.setter
    def nfe(self, value: int) -> None:
        self._count[0] = value

    @property
    def network_passes(self) -> int:
        """Passes of each sample through the network: ``nfe``, plus one per guided evaluation of two branches."""
        return self._passes[0]

    # -- conditioning: classifier-free guidance (Ho & Salimans 2022) -------------------------
    def guided(self, condition, scale: float) -> "DiffusionModel":
        """This model for one batch with a condition per sample, guided: eps_u + scale (eps_c - eps_u).

        Classifier-free guidance (Ho & Salimans 2022) on the network's output, which for every prediction type
        is the same guidance of eps (the conversion is affine in the output). Scale 1 is the conditional network
        and scale 0 the unconditional one, each one pass; any other scale evaluates both branches in ONE call of
        the network (conditional and null condition concatenated along the batch). Each call counts one NFE on
        this model's counter and 1 or 2 ``network_passes``. ``condition`` must hold one entry per sample of the
        batch the view is called with. The view has no heads (they are unconditional networks).
        Raises samplers.Unsupported for an unconditional model, ValueError for an unknown class or scale < 0.
        """
        if self.condition is None:
            from .registry import Unsupported  # the registry imports this module
            raise Unsupported(f"network {self.name!r} is unconditional: it takes no condition and no guidance "
                              "scale (a conditional checkpoint, e.g. 'digits-cond', does)")
        scale = check_guidance(scale)
        cond = self.condition.check(condition, self.name).to(self.device)
        null = self.condition.null(len(cond), self.device)
        fn, name, batch = self.fn, self.name, len(cond)

        def fits(x):
            if x.shape[0] != batch:
                raise ValueError(f"{name}: guided view made for {batch} samples, called with {x.shape[0]}")

        if scale == 1.0:
            def guided_fn(x, t):
                fits(x)
                return fn(x, t, cond)
        elif scale == 0.0:
            def guided_fn(x, t):
                fits(x)
                return fn(x, t, null)
        else:
            both = torch.cat([cond, null])

            def guided_fn(x, t):
                fits(x)
                out = fn(torch.cat([x, x]), torch.cat([t, t]), both)
                if not isinstance(out, torch.Tensor) or out.shape[:1] != (2 * batch,):
                    return out  # __call__ names the wrong output
                c, u = out.chunk(2)
                return u + scale * (c - u)

        view = self.replace(fn=guided_fn, heads={}, derivative_fn=None, condition=None)
        view._count, view._passes = self._count, self._passes
        view._passes_per_call = 1 if scale in (0.0, 1.0) else 2
        return view

    # -- heads: further networks of the checkpoint, counted here ----------------------------
    def head_names(self) -> list[str]:
        return sorted(self.heads)

    def has_head(self, name: str) -> bool:
        return name in self.heads

    def head(self, name: str) -> "DiffusionModel":
        """The head ``name`` as a boundary whose evaluations count on this model's NFE; Unsupported if absent."""
        if name not in self.heads:
            from .registry import Unsupported  # the registry imports this module
            raise Unsupported(f"checkpoint {self.name!r} has no {name!r} network; it has: "
                              f"{self.head_names() or 'none'}")
        view = self.heads[name].replace(autocast_dtype=self.autocast_dtype, device=self.device)
        view._count, view._passes = self._count, self._passes
        return view

    def eps_and_derivative(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps(x_t, t), d eps / d gamma along the PF-ODE) from one network pass; counts one NFE."""
        if self.derivative_fn is None:
            from .registry import Unsupported
            raise Unsupported(f"network {self.name!r} has no derivative along the ODE (a GENIE head)")
        return self(x, t, fn=self.derivative_fn)

    def replace(self, **changes) -> "DiffusionModel":
        """A new boundary with some constructor arguments changed (e.g. ``autocast_dtype``); NFE counted from 0."""
        fields = dict(fn=self.fn, schedule=self.schedule, prediction=self.prediction, time_input=self.time_input,
                      data_shape=self.data_shape, net_dtype=self.net_dtype, name=self.name, device=self.device,
                      autocast_dtype=self.autocast_dtype, heads=self.heads, derivative_fn=self.derivative_fn,
                      condition=self.condition)
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"DiffusionModel has no argument {unknown}; allowed: {sorted(fields)}")
        fields.update(changes)
        return DiffusionModel(fields.pop("fn"), fields.pop("schedule"), fields.pop("prediction"), **fields)

    # -- the one place the network is called ------------------------------------------------
    def __call__(self, x: torch.Tensor, t, *, fn: Callable | None = None):
        """Raw network output at continuous time t (scalar, 0-d or shape (B,) tensor); counts one NFE.

        ``fn`` replaces the network for this call (``eps_and_derivative``: a tuple of outputs, each checked).
        """
        if not same_device(self.device, x.device):
            raise ValueError(f"{self.name}: x is on {x.device}, the model on {self.device}")
        t = self._time(x, t).expand(x.shape[0])
        t_in = self.schedule.to_discrete(t) if self.time_input == "discrete" else t
        if self.prediction == "edm":
            # EDMPrecond: the network sees c_in x and c_noise = log(sigma) / 4.
            _, _, c_in, t_in = self.schedule.precondition(t)
            x = x * c_in.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        self.nfe += 1
        self._passes[0] += self._passes_per_call
        with precision(x.device, self.autocast_dtype):
            out = (fn or self.fn)(_as(x, self.net_dtype), _as(t_in, self.net_dtype))
        if fn is not None:
            if not isinstance(out, tuple):
                raise ValueError(f"network {self.name!r}: derivative_fn returned {type(out).__name__}, not a tuple")
            for o in out:
                self._check_output(x, o)
            return tuple(_as(o, x.dtype) for o in out)
        self._check_output(x, out)
        return _as(out, x.dtype)

    def _time(self, x: torch.Tensor, t) -> torch.Tensor:
        """t as float64 on x's device: a tensor already there is used as is, a number or 0-d tensor is filled in."""
        if isinstance(t, torch.Tensor) and t.device == x.device:
            return _as(t, torch.float64)
        if isinstance(t, torch.Tensor) and t.dim():
            raise ValueError(f"{self.name}: t of shape {tuple(t.shape)} is on {t.device}, x on {x.device}: "
                             "make the time grid on x's device once, before the step loop")
        # torch.full writes a host scalar on the device without a copy (a copy from the host would synchronise).
        return torch.full((), float(t), dtype=torch.float64, device=x.device)

    def _check_output(self, x: torch.Tensor, out) -> None:
        """The network's output is a floating tensor of exactly x's shape on x's device (metadata only, no sync)."""
        if (not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.shape != x.shape
                or out.device != x.device):
            got = (f"{type(out).__name__}" if not isinstance(out, torch.Tensor)
                   else f"{tuple(out.shape)} {out.dtype} on {out.device}")
            raise ValueError(f"network {self.name!r} returned {got}; expected a floating tensor of shape "
                             f"{tuple(x.shape)} on {x.device}")

    def _coefs(self, x, t):
        """(alpha_t, sigma_t) in x's dtype, shaped to broadcast against x."""
        return self._coefs_of(x, t, lambda u: (self.schedule.alpha(u), self.schedule.sigma(u)))

    def _coefs_of(self, x, t, fn):
        """The schedule values ``fn(t)`` in x's dtype, shaped to broadcast against x."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        return tuple(c.to(x.dtype).reshape(shape) if c.dim() else c.to(x.dtype) for c in fn(self._time(x, t)))

    def eps(self, x: torch.Tensor, t, alpha_sigma=None) -> torch.Tensor:
        """Noise prediction eps(x_t, t); ``alpha_sigma``: (alpha_t, sigma_t) on x's device in x's dtype, if known."""
        out = self(x, t)
        if self.prediction == "eps":
            return out
        a, s = self._coefs(x, t) if alpha_sigma is None else alpha_sigma
        if self.prediction == "x0":
            # (x - a out) / s in one new tensor.
            r = torch.mul(out, a)
            return torch.sub(x, r, out=r).div_(s)
        if self.prediction == "v":
            e = s * x + a * out
            return e if self._vp else e / (a * a + s * s)
        if self.prediction == "score":
            return -s * out
        x0 = self._x0_of(x, t, out)
        return (x - a * x0) / s

    def x0(self, x: torch.Tensor, t, alpha_sigma=None) -> torch.Tensor:
        """Data prediction x0(x_t, t); ``alpha_sigma``: (alpha_t, sigma_t) on x's device in x's dtype, if known."""
        out = self(x, t)
        if self.prediction == "x0":
            return out
        if self.prediction in ("edm", "velocity"):
            return self._x0_of(x, t, out)
        a, s = self._coefs(x, t) if alpha_sigma is None else alpha_sigma
        if self.prediction == "eps":
            # (x - s out) / a in one new tensor.
            r = torch.mul(out, s)
            return torch.sub(x, r, out=r).div_(a)
        if self.prediction == "v":
            x0 = a * x - s * out
            return x0 if self._vp else x0 / (a * a + s * s)
        return (x + s**2 * out) / a  # score

    def _x0_of(self, x: torch.Tensor, t, out: torch.Tensor) -> torch.Tensor:
        """x0 from the raw output of an "edm" (preconditioned denoiser) or "velocity" network."""
        if self.prediction == "edm":
            c_skip, c_out, _, _ = self._coefs_of(x, t, self.schedule.precondition)
            return c_skip * x + c_out * out
        # x = a x0 + s eps, v = a' x0 + s' eps: x0 = (s' x - s v) / (a s' - a' s) (flow: x0 = x - t v).
        a, s = self._coefs(x, t)
        da, ds = self._coefs_of(x, t, self.schedule.alpha_sigma_derivatives)
        return (ds * x - s * out) / (a * ds - da * s)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """Score grad_x log p_t(x) = -eps / sigma."""
        _, s = self._coefs(x, t)
        return -self.eps(x, t) / s

    @contextmanager
    def counting(self) -> Iterator["NFECount"]:
        """Count the evaluations made inside the block: ``with model.counting() as c: ...; c.n``."""
        count = NFECount(self, self.nfe, self.network_passes)
        try:
            yield count
        finally:
            count.close()

    def __repr__(self):
        return f"DiffusionModel({self.name}, prediction={self.prediction}, schedule={self.schedule!r})"


class NFECount:
    """Number of network evaluations (``n``) and network passes (``passes``) made since the count was opened."""

    def __init__(self, model: DiffusionModel, start: int, start_passes: int = 0):
        self._model, self._start, self._end = model, start, None
        self._start_passes, self._end_passes = start_passes, None

    def close(self):
        self._end, self._end_passes = self._model.nfe, self._model.network_passes

    @property
    def n(self) -> int:
        return (self._end if self._end is not None else self._model.nfe) - self._start

    @property
    def passes(self) -> int:
        end = self._end_passes if self._end_passes is not None else self._model.network_passes
        return end - self._start_passes

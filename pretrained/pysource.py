"""The ``py:`` source: ``py:package.module:factory`` is a network written in Python, entering the whole harness.

Naming such a checkpoint is the user's explicit choice to run their code: the module is imported (from the current
folder or anything on ``sys.path``) and ``factory(device)`` called only for a ``py:`` name, never by the other sources.
The factory returns a ``samplers.DiffusionModel`` (any family: its schedule and prediction say which), or a pair
``(model, real_data)`` where ``real_data`` is a tensor (N, *data_shape) of real samples in the model's data space
([-1, 1] for images): it is then the checkpoint's FID reference (its content hash names it) and its real data.
The reference solution is the PF-ODE solved by ``pretrained.reference.ReferenceSolver`` for the runner's default
subset of a cell's samples. The fingerprint (part of every cache key) hashes the module's source and the network's outputs on a fixed
probe, so changed code or weights never reuse a cache.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from pathlib import Path

import torch

from samplers.model import DiffusionModel
from samplers.noise import initial_noise

from .checkpoint import Checkpoint, CheckpointEntry, resolve_device
from .reference import ReferenceSolver

PREFIX = "py:"
DEFAULT_N_SAMPLES = 1000
FORM = "py:package.module:factory"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
SPEC = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")
PROBE_TIMES = (0.25, 0.5, 0.75)  # fractions of T where the fingerprint's probe calls the network


def is_image_shape(shape) -> bool:
    """(C, H, W) with 1 or 3 channels: data a FID feature extractor can take."""
    return len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 1


def parse(source: str) -> tuple[str, str]:
    """(module, factory) of ``package.module:factory``; ValueError naming the form otherwise."""
    m = SPEC.fullmatch(source)
    if not m:
        raise ValueError(f"{PREFIX}{source}: expected {FORM} (a dotted module importable from the current folder "
                         f"or sys.path, a colon, and the name of a function in it)")
    return m.group(1), m.group(2)


def _factory(source: str):
    module_name, attr = parse(source)
    if "" not in sys.path and "." not in sys.path:  # `python -m bench` puts the current folder first; a script may not
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"{PREFIX}{source}: no module {e.name!r} (run from the folder that holds it, or add "
                             f"that folder to PYTHONPATH); expected {FORM}") from None
        raise
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{PREFIX}{source}: module {module_name!r} has no function {attr!r}; expected {FORM}")
    return module, factory


def _source_sha256(module) -> str:
    try:
        return hashlib.sha256(Path(inspect.getfile(module)).read_bytes()).hexdigest()
    except (TypeError, OSError):
        return ""


def fingerprint(module, model: DiffusionModel, data: torch.Tensor | None) -> str:
    """sha256 of the module's source, the schedule, the network's outputs on a fixed probe and the real data."""
    h = hashlib.sha256(_source_sha256(module).encode())
    h.update(repr((model.schedule, model.prediction, model.time_input, model.data_shape)).encode())
    probe = model.replace(name=f"{model.name}-fingerprint")  # its own NFE counter
    if model.device.type != "meta":
        x = initial_noise(0, range(2), model.data_shape, device=model.device, std=model.schedule.prior_std)
        with torch.no_grad():
            for frac in PROBE_TIMES:
                out = probe(x, frac * model.schedule.T)
                h.update(out.detach().to("cpu", torch.float64).numpy().tobytes())
    if data is not None:
        h.update(data.contiguous().numpy().tobytes())
    return h.hexdigest()


def _split(name: str, result) -> tuple[DiffusionModel, torch.Tensor | None]:
    """The factory's (model, real data or None), checked: one line naming what was expected."""
    model, data = (result if isinstance(result, tuple) and len(result) == 2 else (result, None))
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"{name}: the factory returned {type(model).__name__}; expected a samplers.DiffusionModel "
                         f"or (DiffusionModel, real data tensor)")
    if data is None:
        return model, None
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise ValueError(f"{name}: real data is {type(data).__name__}; expected a floating tensor (N, "
                         f"{', '.join(map(str, model.data_shape))})")
    if tuple(data.shape[1:]) != tuple(model.data_shape) or len(data) < 2:
        raise ValueError(f"{name}: real data of shape {tuple(data.shape)}; expected (N >= 2, "
                         f"{', '.join(map(str, model.data_shape))}) matching the model's data_shape")
    data = data.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name}: real data has non-finite values")
    return model, data


def load_python(source: str, device="cpu") -> Checkpoint:
    """Import ``package.module`` and build the checkpoint from ``factory(device)`` (see the module docstring)."""
    device = resolve_device(device)
    name = f"{PREFIX}{source}"
    module, factory = _factory(source)
    model, data = _split(name, factory(device))
    model = model.replace(name=name)
    if model.device.type != device.type:
        raise ValueError(f"{name}: the factory's model is on {model.device}, asked for {device}; build it on the "
                         f"device the factory is given")
    fp = fingerprint(module, model, data)
    extras = {"module": module.__name__, "factory": factory.__name__}
    real_data = _no_real_data(name)
    if data is not None:
        real_data = _real_data(data)
        extras["fid_reference"] = (f"py-data-{hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]}", len(data))
        if is_image_shape(model.data_shape):
            extras["fid"] = "auto"  # bench.metrics.features picks the extractor by shape
    solver = ReferenceSolver.around(model)
    return Checkpoint(name=name, model=model, description=f"Python factory {source}",
                      reference_solution=solver, reference_solver=solver, real_data=real_data, reference_exact=False,
                      fingerprint=fp,
                      extras=extras, device=device)


def _no_real_data(name: str):
    def real_data(n, seed=0):
        raise ValueError(f"{name}: the factory returned no real data; return (model, data) or give --fid-ref")
    return real_data


def _real_data(data: torch.Tensor):
    def real_data(n, seed=0):
        if n > len(data):
            raise ValueError(f"the factory's real data has {len(data)} samples, asked for {n}")
        return data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]]
    return real_data


def check(source: str) -> None:
    """The name's form only: importing the module runs the user's code, which happens once, when it is loaded."""
    parse(source)


def entry(source: str) -> CheckpointEntry:
    """The ``py:<source>`` entry (nothing imported until its loader runs)."""
    return CheckpointEntry(f"{PREFIX}{source}", lambda device: load_python(source, device=device), (), "from factory",
                           "from factory", f"Python factory {source}", DEFAULT_N_SAMPLES, lambda: check(source))

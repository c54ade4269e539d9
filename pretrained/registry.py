"""The checkpoint registry: ``load(name, device)`` gives a ``Checkpoint`` (model boundary + what metrics need).

A checkpoint is registered with a loader and the facts ``bench list`` shows (data shape, schedule,
prediction type, one-line description); loading happens only when asked for, once per process and device.
``validate(name, device)`` checks that a load would succeed without loading the weights.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import torch

from samplers.model import DiffusionModel


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model plus the data-side facts the metrics use.

    Attributes:
        model: the network behind the model boundary (counts its NFE).
        reference_solution: x_T -> the exact (analytic) or high-accuracy ODE solution at t_end.
        real_data: (n, seed) -> real data samples, for distribution metrics.
        log_prob: exact log p_0(x) where the density is known (analytic mixtures), else None.
        moments: exact (mean, covariance) of the data where known, else None.
        reference_exact: True when ``reference_solution`` is exact rather than a fine solver.
        reference_samples: solver error uses the first this many samples (None: all), where the
            reference solution is expensive (a network solved with 1000 NFE).
        fingerprint: what identifies the weights (their sha256); part of every cache key.
        device: where the model, the mixture parameters and ``reference_solution`` compute; ``real_data`` and
            ``moments`` stay on the CPU (they feed numpy and torch-fidelity).
        likelihood_data: n -> the first n points (CPU) of the held-out set likelihoods are estimated on
            (None: the checkpoint has no data to evaluate a likelihood on).
        data_levels: the data's number of discrete levels on [-1, 1] (17 for digits), None for continuous data.
        grad_model: the same network behind a boundary that is differentiable in x (no inference mode), for
            the ODE likelihood's divergence; None where ``model`` already is.
    """

    name: str
    model: DiffusionModel
    description: str
    reference_solution: Callable[[torch.Tensor, float], torch.Tensor]
    real_data: Callable[[int, int], torch.Tensor]
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    moments: Optional[tuple] = None
    reference_exact: bool = False
    reference_samples: Optional[int] = None
    fingerprint: str = ""
    extras: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    likelihood_data: Optional[Callable[[int], torch.Tensor]] = None
    data_levels: Optional[int] = None
    grad_model: Optional[DiffusionModel] = None

    @property
    def data_shape(self) -> tuple:
        return self.model.data_shape


@dataclass(frozen=True)
class CheckpointEntry:
    """A registered checkpoint: ``loader(device)`` builds it, ``check()`` raises ValueError where it would not load."""

    name: str
    loader: Callable[[torch.device], Checkpoint]
    data_shape: tuple
    schedule: str
    prediction: str
    description: str
    default_n_samples: int
    check: Callable[[], None] = lambda: None


_REGISTRY: dict[str, CheckpointEntry] = {}
_HEADS: dict[str, dict[str, tuple]] = {}  # checkpoint -> {head name: (loader, check)}


def register_head(checkpoint: str, head: str, loader: Callable[[Checkpoint], DiffusionModel],
                  check: Callable[[], None] | None = None) -> None:
    """Attach a further network (a distilled student, a derivative head) to ``checkpoint``: ``load`` builds it
    with ``loader(ck)`` from the loaded checkpoint (its device, and what it already loaded, e.g. the network a head
    reads) and passes it to the checkpoint's model as ``heads[head]``; ``check()`` raises
    ValueError where its weights would not load (``validate`` runs it). Duplicates raise."""
    if not head or any(c.isspace() for c in head):
        raise ValueError(f"invalid head name {head!r}")
    if head in _HEADS.get(checkpoint, {}):
        raise ValueError(f"checkpoint {checkpoint!r} already has a head {head!r}")
    _HEADS.setdefault(checkpoint, {})[head] = (loader, check or (lambda: None))


def heads_of(checkpoint: str) -> list[str]:
    """The names of the heads registered for ``checkpoint``."""
    return sorted(_HEADS.get(checkpoint, {}))


def checkpoints_with_head(head: str) -> list[str]:
    """The checkpoints that have a head named ``head`` (for "which checkpoints have a student" messages)."""
    return sorted(c for c, heads in _HEADS.items() if head in heads)


def register_checkpoint(name: str, *, data_shape: tuple, schedule: str, prediction: str, description: str,
                        default_n_samples: int = 1000, check: Callable[[], None] | None = None):
    """Decorator registering a loader ``(device) -> Checkpoint`` under ``name`` (duplicates raise).

    ``check``, if given, raises ValueError where loading would fail (e.g. a weights checksum), cheaply.
    """
    def deco(loader):
        if name in _REGISTRY:
            raise ValueError(f"checkpoint {name!r} is already registered")
        _REGISTRY[name] = CheckpointEntry(name, loader, tuple(data_shape), schedule, prediction, description,
                                         default_n_samples, check or (lambda: None))
        return loader
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


HUB_PREFIX = "hub:"  # "hub:<folder or hub id>" names a diffusers-format checkpoint


DEVICES = ("cpu", "cuda", "cuda:N", "meta")  # meta: shapes only, for tests of the analytic models


def resolve_device(device="cpu") -> torch.device:
    """``device`` (str or torch.device) as a torch.device with its index ("cuda" -> "cuda:<current>")."""
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a str or torch.device, got {type(device).__name__}; allowed: {list(DEVICES)}")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; allowed: {list(DEVICES)}") from None
    if d.type in ("cpu", "meta"):
        return torch.device(d.type)
    if d.type != "cuda":
        raise ValueError(f"unsupported device {device!r}; allowed: {list(DEVICES)}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; allowed: cpu")
    n = torch.cuda.device_count()
    index = torch.cuda.current_device() if d.index is None else d.index
    if index >= n:
        raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s); allowed: cpu, cuda, "
                         + ", ".join(f"cuda:{i}" for i in range(n)))
    return torch.device("cuda", index)


SAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
SAFE_NAME_SLUG = 40  # characters of the readable part; the sha1 part keeps distinct names distinct


def safe_name(name: str) -> str:
    """A file-name token for a checkpoint name: its [A-Za-z0-9._-] slug (<= 40 chars) + "-" + 10 hex of sha1(name).

    Never empty, never starts with a dot or contains a separator, so ``folder / safe_name(n)`` stays in ``folder``.
    """
    if not isinstance(name, str):
        raise ValueError(f"checkpoint name must be a str, got {type(name).__name__}")
    slug = SAFE_NAME_CHARS.sub("_", name).strip("._-")[:SAFE_NAME_SLUG]
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}" if slug else digest


def entry(name: str) -> CheckpointEntry:
    """The registered entry, without touching files; a "hub:" name gets one made on the fly (facts known once loaded)."""
    if not isinstance(name, str):
        raise ValueError(f"checkpoint name must be a str, got {type(name).__name__}")
    if name.startswith(HUB_PREFIX):
        from . import hub
        source = name[len(HUB_PREFIX):]
        return CheckpointEntry(name, lambda device: hub.load_diffusers(source, device=device), (), "vp_discrete",
                               "from config", f"diffusers-format checkpoint {source}", 1000,
                               lambda: hub.check_folder(source))
    if name not in _REGISTRY:
        raise ValueError(f"unknown checkpoint {name!r}; allowed: {available()} or 'hub:<folder or hub id>'")
    return _REGISTRY[name]


def validate(name: str, device="cpu") -> CheckpointEntry:
    """Raise ValueError unless ``load(name, device)`` would find its files intact, without loading the network.

    For a "hub:" name: the folder layout, both configs and a safetensors weights file (a hub id is resolved
    as ``load`` would, through the Hugging Face cache); for shipped weights: the sha256 pin.
    """
    resolve_device(device)
    e = entry(name)
    e.check()
    for _, check in _HEADS.get(name, {}).values():
        check()
    return e


def load(name: str, device="cpu") -> Checkpoint:
    """Load a registered checkpoint, or "hub:<folder or hub id>" for a diffusers UNet, onto ``device``.

    Cached per (name, device) for the process. ``device``: "cpu", "cuda", "cuda:N" (or a torch.device).
    """
    return _load(name, resolve_device(device))


@lru_cache(maxsize=None)
def _load(name: str, device: torch.device) -> Checkpoint:
    ck = entry(name).loader(device)
    if _HEADS.get(name):
        heads = {**ck.model.heads, **{h: loader(ck) for h, (loader, _) in _HEADS[name].items()}}
        ck.model = ck.model.replace(heads=heads)
    return ck

"""The checkpoint registry: ``load(name)`` gives a ``Checkpoint`` (model boundary + what metrics need).

A checkpoint is registered with a loader and the facts ``bench list`` shows (data shape, schedule,
prediction type, one-line description); loading happens only when asked for, once per process.
"""
from __future__ import annotations

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

    @property
    def data_shape(self) -> tuple:
        return self.model.data_shape


@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    loader: Callable[[], Checkpoint]
    data_shape: tuple
    schedule: str
    prediction: str
    description: str
    default_n_samples: int


_REGISTRY: dict[str, CheckpointEntry] = {}


def register_checkpoint(name: str, *, data_shape: tuple, schedule: str, prediction: str, description: str,
                        default_n_samples: int = 1000):
    """Decorator registering a zero-argument loader under ``name`` (duplicates raise)."""
    def deco(loader):
        if name in _REGISTRY:
            raise ValueError(f"checkpoint {name!r} is already registered")
        _REGISTRY[name] = CheckpointEntry(name, loader, tuple(data_shape), schedule, prediction, description,
                                         default_n_samples)
        return loader
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


HUB_PREFIX = "hub:"  # "hub:<folder or hub id>" names a diffusers-format checkpoint


def entry(name: str) -> CheckpointEntry:
    """The registered entry; a "hub:" name gets one made on the fly (its facts are known once loaded)."""
    if name.startswith(HUB_PREFIX):
        from .hub import load_diffusers
        return CheckpointEntry(name, lambda: load_diffusers(name[len(HUB_PREFIX):]), (), "vp_discrete", "from config",
                               f"diffusers-format checkpoint {name[len(HUB_PREFIX):]}", 1000)
    if name not in _REGISTRY:
        raise ValueError(f"unknown checkpoint {name!r}; allowed: {available()} or 'hub:<folder or hub id>'")
    return _REGISTRY[name]


@lru_cache(maxsize=None)
def load(name: str) -> Checkpoint:
    """Load a registered checkpoint, or "hub:<folder or hub id>" for a diffusers UNet (cached per process)."""
    return entry(name).loader()

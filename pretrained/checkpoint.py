"""What every checkpoint source returns: ``Checkpoint`` (a loaded model + what metrics need) and ``CheckpointEntry``
(how to load and check one), and the device names loaders accept. The registry and the sources (``hub:``, ``py:``)
import this module; it imports none of them."""
from __future__ import annotations

from dataclasses import dataclass, field
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
        reference_samples: solver error uses the first this many samples (None: the runner's default,
            ``bench.runner.DEFAULT_REFERENCE_SAMPLES``, or all of them where the reference is exact).
        reference_solver: the ``pretrained.reference.ReferenceSolver`` behind ``reference_solution`` where it is one:
            its name keys the reference cache, its NFE is the rows' ``reference_nfe`` and its ``tight`` solve
            estimates the reference's own error (None: exact, or a function of the checkpoint's own).
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
    reference_solver: Optional[object] = None
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

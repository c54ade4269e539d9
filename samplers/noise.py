"""Per-sample random streams: one generator per (seed, sample index, stream).

Draws depend only on the sample index, never on the batch it sits in or on the process that
computes it (EDM's convention), so results are invariant to batch size and to torchrun sharding.
Every draw is made on the CPU in float64 and then moved to the requested device and dtype, so the
numbers are bit-identical on every device.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .state import to_device

STREAM_X_T = 0       # the initial noise x_T
STREAM_SAMPLER = 1   # noise a stochastic sampler draws along the way
STREAM_LABEL = 2     # the class label a conditional sample is drawn for


def _generator(seed: int, index: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class SampleNoise:
    """Standard normal draws of shape (len(indices), *shape), one independent stream per index.

    Draws come from CPU generators (float64) and are moved to ``device`` (default CPU) in ``dtype``.
    """

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], stream: int = STREAM_SAMPLER,
                 dtype=torch.float64, device=None):
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device or "cpu")
        self._gens = [_generator(seed, i, stream) for i in indices]

    def randn(self) -> torch.Tensor:
        """The next draw of every stream, stacked along the batch dimension."""
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self._gens])
        return to_device(z, self.device, self.dtype)

    def like(self, x: torch.Tensor) -> "SampleNoise":
        """The same streams (shared, not copied) drawn on x's device in x's dtype; ValueError unless they fit x."""
        if len(self) != x.shape[0] or self.shape != tuple(x.shape[1:]):
            raise ValueError(f"noise has {len(self)} streams of shape {self.shape}, x_T is {tuple(x.shape)}: "
                             "make SampleNoise with x_T's sample indices and sample shape")
        out = object.__new__(SampleNoise)
        out.shape, out.dtype, out.device, out._gens = self.shape, x.dtype, x.device, self._gens
        return out

    def __len__(self):
        return len(self._gens)


def initial_noise(seed: int, indices: Sequence[int], shape: Sequence[int], *, device=None,
                  dtype=torch.float64, std: float = 1.0) -> torch.Tensor:
    """x_T ~ N(0, std^2 I) for the given sample indices, independent of batching; drawn on the CPU, then moved to device.

    ``std``: the schedule's ``prior_std`` (VP 1, EDM sigma_max); scaled in float64 before the move.
    """
    z = SampleNoise(seed, indices, shape, stream=STREAM_X_T, dtype=torch.float64).randn()
    return to_device(z if std == 1.0 else z * std, torch.device(device or "cpu"), dtype)


def sample_labels(seed: int, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class labels (int64, CPU) of the given sample indices, balanced: indices k*C .. k*C + C - 1 hold each class once.

    Label of index i: entry i mod C of a random permutation of 0..C-1 drawn for block i // C from the stream
    (seed, block, STREAM_LABEL); so a label depends on (seed, index) only, never on batching or sharding, and the
    first n indices hold every class floor(n / C) or ceil(n / C) times.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    perms: dict[int, torch.Tensor] = {}
    out = []
    for i in indices:
        block = int(i) // num_classes
        if block not in perms:
            perms[block] = torch.randperm(num_classes, generator=_generator(seed, block, STREAM_LABEL))
        out.append(int(perms[block][int(i) % num_classes]))
    return torch.tensor(out, dtype=torch.long)

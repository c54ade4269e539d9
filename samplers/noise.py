"""Per-sample random streams: one generator per (seed, sample index, stream).

Draws depend only on the sample index, never on the batch it sits in or on the process that
computes it (EDM's convention), so results are invariant to batch size and to torchrun sharding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

STREAM_X_T = 0       # the initial noise x_T
STREAM_SAMPLER = 1   # noise a stochastic sampler draws along the way


def _generator(seed: int, index: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class SampleNoise:
    """Standard normal draws of shape (len(indices), *shape), one independent stream per index."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], stream: int = STREAM_SAMPLER,
                 dtype=torch.float64):
        self.shape, self.dtype = tuple(shape), dtype
        self._gens = [_generator(seed, i, stream) for i in indices]

    def randn(self) -> torch.Tensor:
        """The next draw of every stream, stacked along the batch dimension."""
        return torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self._gens]).to(self.dtype)

    def __len__(self):
        return len(self._gens)


def initial_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """x_T ~ N(0, I) for the given sample indices (float64), independent of batching."""
    return SampleNoise(seed, indices, shape, stream=STREAM_X_T).randn()

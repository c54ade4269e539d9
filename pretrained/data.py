"""scikit-learn's 8x8 digits in [-1, 1], with one fixed split into train / reference / holdout.

"train" trains the diffusion model and the FID feature network; "reference" is the real side of
FID; "holdout" is real data never trained on, whose FID against "reference" is the metric's floor.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

SPLIT_SEED = 8
SPLIT_SIZES = {"reference": 300, "holdout": 300}  # "train" takes the rest (1197 of 1797)
SPLITS = ("train", "reference", "holdout")
MAX_LEVEL = 16.0  # pixel levels of load_digits are 0..16
N_IMAGES = 1797  # images in load_digits: the split needs only this count, so it is known without importing sklearn


@lru_cache(maxsize=None)
def _all() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    if len(d.images) != N_IMAGES:
        raise ValueError(f"sklearn's load_digits has {len(d.images)} images, the split was made for {N_IMAGES}")
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / MAX_LEVEL * 2.0 - 1.0  # (N, 1, 8, 8)
    return x, torch.as_tensor(d.target, dtype=torch.int64)


@lru_cache(maxsize=None)
def split_indices() -> dict[str, np.ndarray]:
    """Sorted image indices of each split (legacy RandomState permutation: frozen across numpy versions)."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(N_IMAGES)
    r, h = SPLIT_SIZES["reference"], SPLIT_SIZES["holdout"]
    return {"reference": np.sort(perm[:r]), "holdout": np.sort(perm[r:r + h]), "train": np.sort(perm[r + h:])}


def split_sha256() -> str:
    """sha256 of the split: the int64 index arrays of train, reference, holdout in that order."""
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode())
        h.update(split_indices()[name].astype("<i8").tobytes())
    return h.hexdigest()


def digits_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 8, 8) float32 in [-1, 1] and labels (n,) of split ``name``."""
    if name not in SPLITS:
        raise ValueError(f"unknown digits split {name!r}; allowed: {list(SPLITS)}")
    x, y = _all()
    idx = torch.as_tensor(split_indices()[name])
    return x[idx].clone(), y[idx].clone()

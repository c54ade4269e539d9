"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) against a checkpoint's real images, streamed and shardable.

``FidAccumulator`` keeps, as NVlabs EDM's fid.py does, the count and float64 sums of features and of their outer
products (plus the features of samples with index < KID_MAX_SAMPLES, for KID), so a 50,000-sample cell never sits
whole in memory and torchrun ranks merge by summing. Features come from torch-fidelity's extractors
(``features.py``: the digits classifier, or "inception-v3-compat" from sha256-verified weights); FID and KID from
torch-fidelity's ``fid_statistics_to_metric`` and ``kid_features_to_metric``. Reference statistics are computed the
same way from ``real_data(n, 0)``, or from a user's reference set (``reference_sets.ReferenceSet``: images, or
precomputed mu / sigma, which give FID but no KID), and cached as safetensors (no pickle) in a folder the caller
passes, under a hash of everything that determines them; torch-fidelity's own (pickle) cache is never used.

Beside FID and KID, in the same feature space and from the same kept features (the first KID_MAX_SAMPLES samples and
reference images): precision / recall and density / coverage (``prdc.py``), and FID-infinity (``fid_bias.py``).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch_fidelity
from safetensors import safe_open
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from ..atomic import atomic_write
from .features import ExtractorSpec, create_extractor, extractor_spec, spec_by_name, to_images
from .fid_bias import fid_infinity
from .prdc import DC_K, PR_K, prdc

BATCH_SIZE = 250
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000  # subsets are half the smaller set (at most this), so kid_std shows subset spread
KID_MAX_SAMPLES = 10_000  # KID uses the features of the samples (and reference images) with index below this
MIN_SAMPLES = 4  # KID subsets of at least 2
CACHE_FORMAT = 1
_STATE_TENSORS = ("sum", "outer", "kid_features", "kid_index")


class FidAccumulator:
    """Streaming FID/KID statistics of samples from one checkpoint's feature extractor.

    Args:
        checkpoint: a ``pretrained.Checkpoint``; ``extras["fid"]`` names the extractor.
        device: where features are computed.
        inception_weights_path: Inception weights for RGB checkpoints (else $SAMPLERBENCH_INCEPTION_WEIGHTS or
            torch.hub's cache); checked against their published sha256.
        spec: the extractor to use instead of the checkpoint's (a reference set's, ``--fid-extractor``).
    """

    def __init__(self, checkpoint, device="cpu", *, inception_weights_path=None, spec: ExtractorSpec | None = None):
        self.spec = spec or extractor_spec(checkpoint)
        self.device = torch.device(device)
        self.extractor = create_extractor(self.spec, self.device, inception_weights_path)
        d = self.spec.dim
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.outer = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        self.kid_features, self.kid_index = [], []

    @torch.no_grad()
    def update(self, samples: torch.Tensor, indices) -> None:
        """Add a batch ``samples`` (B, C, H, W) in [-1, 1] (clamped), whose global sample indices are ``indices``."""
        indices = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long).cpu()
        if indices.shape != (len(samples),):
            raise ValueError(f"FidAccumulator.update: {len(samples)} samples but indices of shape "
                             f"{tuple(indices.shape)}; give one global sample index per sample")
        if len(samples) == 0:
            return
        self._add(to_images(samples.to(self.device), self.spec), indices)

    @torch.no_grad()
    def update_images(self, images: torch.Tensor, indices) -> None:
        """Add uint8 images (B, C, H, W) as they are (a reference set's), with their global indices."""
        indices = torch.as_tensor(list(indices), dtype=torch.long).cpu()
        if len(images):
            x = images.to(self.device)
            self._add(x.expand(-1, 3, -1, -1).contiguous() if self.spec.rgb and x.shape[1] == 1 else x, indices)

    def _add(self, images: torch.Tensor, indices: torch.Tensor) -> None:
        f = self.extractor(images)[0]
        f64 = f.double()
        self.n += len(f)
        self.sum += f64.sum(0)
        self.outer += f64.T @ f64
        keep = indices < KID_MAX_SAMPLES
        if keep.any():
            self.kid_features.append(f[keep.to(f.device)].cpu())
            self.kid_index.append(indices[keep])

    def state(self) -> dict:
        """CPU tensors and plain values (for ``all_gather_object``): n, float64 feature and outer-product sums, and
        the features (the extractor's dtype) of samples with index < KID_MAX_SAMPLES with those indices."""
        d = self.spec.dim
        return {"extractor": self.spec.key, "n": self.n, "sum": self.sum.cpu(), "outer": self.outer.cpu(),
                "kid_features": torch.cat([torch.empty(0, d, dtype=self.spec.dtype), *self.kid_features]),
                "kid_index": torch.cat([torch.empty(0, dtype=torch.long), *self.kid_index])}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """One state from per-rank (or per-batch) states: sums summed, KID features sorted by sample index."""
        if not states:
            raise ValueError("FidAccumulator.merge: no states")
        keys = {s["extractor"] for s in states}
        if len(keys) > 1:
            raise ValueError(f"FidAccumulator.merge: states of different feature extractors {sorted(keys)}")
        index = torch.cat([s["kid_index"] for s in states])
        order = torch.argsort(index)
        index = index[order]
        if len(index) > 1 and bool((index[1:] == index[:-1]).any()):
            raise ValueError(f"FidAccumulator.merge: sample index {int(index[1:][index[1:] == index[:-1]][0])} "
                             f"occurs in more than one state (each sample must be added once)")
        return {"extractor": states[0]["extractor"], "n": sum(s["n"] for s in states),
                "sum": sum(s["sum"] for s in states), "outer": sum(s["outer"] for s in states),
                "kid_features": torch.cat([s["kid_features"] for s in states])[order], "kid_index": index}


def _statistics(state: dict) -> dict:
    """mu and the unbiased covariance (as np.cov) from the float64 sums."""
    n = state["n"]
    mu = state["sum"] / n
    sigma = (state["outer"] - n * torch.outer(mu, mu)) / (n - 1)
    return {"mu": mu.numpy(), "sigma": sigma.numpy()}


def _reference_meta(checkpoint, spec: ExtractorSpec, reference=None) -> dict:
    ref_key, n_ref = (reference.key, reference.n) if reference is not None else checkpoint.extras["fid_reference"]
    return {"format": CACHE_FORMAT, "extractor": spec.name, "weights_sha256": spec.weights_sha256,
            "layer": spec.layer, "dtype": str(spec.dtype), "reference": ref_key, "n": n_ref,
            "kid_max_samples": KID_MAX_SAMPLES, "torch_fidelity": torch_fidelity.__version__}


def reference_spec(checkpoint, reference=None) -> ExtractorSpec:
    """The extractor FID uses: the reference set's where one is given, else the checkpoint's."""
    return spec_by_name(reference.extractor) if reference is not None else extractor_spec(checkpoint)


def reference_name(checkpoint, reference=None) -> dict:
    """What a row names its FID reference by: {"fid_ref" (a reference set's content hash; None: the checkpoint's own,
    which its name identifies), "fid_ref_n" (images; None where statistics do not say), "fid_extractor"}."""
    if reference is not None:
        return {"fid_ref": reference.key, "fid_ref_n": reference.n or None, "fid_extractor": reference.extractor}
    return {"fid_ref": None, "fid_ref_n": checkpoint.extras["fid_reference"][1],
            "fid_extractor": extractor_spec(checkpoint).name}


def reference_cache_path(checkpoint, cache_dir, reference=None) -> Path:
    """Where the reference statistics are cached in ``cache_dir``: named by a hash of what determines them."""
    meta = _reference_meta(checkpoint, reference_spec(checkpoint, reference), reference)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"fid-reference-{digest[:32]}.safetensors"


def _read_reference(path: Path, meta: dict, spec: ExtractorSpec) -> dict | None:
    """The cached state in ``path``, or None (with a warning) if it is not a valid cache file for ``meta``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("samplerbench", "null")) != meta:
                raise ValueError("its metadata names other reference statistics")
            t = {k: f.get_tensor(k) for k in ("n", *_STATE_TENSORS)}
        d = spec.dim
        if (t["sum"].shape, t["outer"].shape, t["kid_features"].shape[1:]) != ((d,), (d, d), (d,)):
            raise ValueError("its tensors have the wrong shapes")
    except Exception as e:  # a corrupt, foreign or planted file: derived data, so recompute and replace it
        warnings.warn(f"FID reference cache {path} is not valid ({e}); recomputing it")
        return None
    return {"extractor": spec.key, "n": int(t.pop("n")), **t}


def _write_reference(path: Path, state: dict, meta: dict) -> None:
    """Atomically (bench.atomic: the sweep of a later run removes what a killed one left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"n": torch.tensor(state["n"]), **{k: state[k].contiguous() for k in _STATE_TENSORS}}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                             metadata={"samplerbench": json.dumps(meta, sort_keys=True)}))


def reference_state(checkpoint, *, cache_dir=None, device="cpu", inception_weights_path=None,
                    reference=None) -> dict:
    """The accumulator state of the reference images (the checkpoint's ``real_data(n, 0)``, or ``reference``'s
    images), read from or written to the cache in ``cache_dir`` (None: computed, not cached). A statistics reference
    gives {"extractor", "n", "mu", "sigma"} (no features: FID only)."""
    spec = reference_spec(checkpoint, reference)
    if reference is not None and reference.kind == "statistics":
        from .reference_sets import statistics
        mu, sigma = statistics(reference)
        return {"extractor": spec.key, "n": reference.n, "mu": mu, "sigma": sigma}
    meta = _reference_meta(checkpoint, spec, reference)
    path = reference_cache_path(checkpoint, cache_dir, reference) if cache_dir is not None else None
    if path is not None and path.is_file():
        state = _read_reference(path, meta, spec)
        if state is not None:
            return state
    acc = FidAccumulator(checkpoint, device, inception_weights_path=inception_weights_path, spec=spec)
    if reference is not None:
        from .reference_sets import image_batches
        lo = 0
        for batch in image_batches(reference, BATCH_SIZE):
            acc.update_images(torch.from_numpy(batch), range(lo, lo + len(batch)))
            lo += len(batch)
    else:
        real = checkpoint.real_data(meta["n"], 0)
        for lo in range(0, len(real), BATCH_SIZE):
            acc.update(real[lo:lo + BATCH_SIZE], range(lo, min(lo + BATCH_SIZE, len(real))))
    state = acc.state()
    if path is not None:
        _write_reference(path, state, meta)
    return state


def fid_kid_from_state(state: dict, checkpoint, *, cache_dir=None, device="cpu", inception_weights_path=None,
                       kid_subsets: int = KID_SUBSETS, reference=None) -> dict:
    """{"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "fid_inf", "fid_inf_slope", "pr_k",
    "dc_k", "feat_n", "feat_ref_n"} of a (merged) accumulator state against the checkpoint's reference set.

    Args:
        state: ``FidAccumulator.state()``, or ``FidAccumulator.merge`` of several.
        checkpoint: a ``pretrained.Checkpoint``; ``extras["fid_reference"]`` = (key, n) names and sizes its
            reference set.
        cache_dir: folder for the reference statistics (None: recomputed every call).
        device, inception_weights_path: as for ``FidAccumulator``, used only when the reference is computed.
        kid_subsets: number of KID subsets.
        reference: a ``reference_sets.ReferenceSet`` to compare with instead of the checkpoint's real data (its
            extractor is used); statistics give FID and FID_inf, KID and PRDC NaN.

    KID uses torch-fidelity's cubic polynomial kernel; for digits its gamma is 1 / E|f|^2 (manifest
    "kid_gamma") instead of 1 / d, so KID values are not on the Inception scale.
    """
    spec = reference_spec(checkpoint, reference)
    if state["extractor"] != spec.key:
        raise ValueError(f"FID state of extractor {state['extractor']!r}, but checkpoint {checkpoint.name!r} "
                         f"uses {spec.key!r}")
    if state["n"] < MIN_SAMPLES or len(state["kid_features"]) < MIN_SAMPLES:
        raise ValueError(f"FID/KID need at least {MIN_SAMPLES} samples with index < {KID_MAX_SAMPLES}; got {state['n']} "
                         f"samples, {len(state['kid_features'])} of them below that index")
    ref = reference_state(checkpoint, cache_dir=cache_dir, device=device, inception_weights_path=inception_weights_path,
                          reference=reference)
    f1 = state["kid_features"]
    if "mu" in ref:  # precomputed statistics: no reference features, so no KID and no PRDC
        with threadpool_limits(1, "blas"):
            fid = fid_statistics_to_metric(_statistics(state), {"mu": ref["mu"], "sigma": ref["sigma"]},
                                           verbose=False)[KEY_METRIC_FID]
        return {"fid": fid, "kid": float("nan"), "kid_std": float("nan"),
                **_feature_metrics(f1, None, ref["mu"], ref["sigma"], device)}
    f2 = ref["kid_features"]
    if len(f2) < MIN_SAMPLES:
        raise ValueError(f"checkpoint {checkpoint.name!r}: FID/KID need a reference set of at least {MIN_SAMPLES} "
                         f"images, the reference has {ref['n']}")
    ref_stats = _statistics(ref)
    # One BLAS thread: on shared cores OpenBLAS's spinning threads make KID's 100 small matmuls ~20x slower.
    with threadpool_limits(1, "blas"):
        fid = fid_statistics_to_metric(_statistics(state), ref_stats, verbose=False)[KEY_METRIC_FID]
        kid = kid_features_to_metric(f1, f2, kid_subsets=kid_subsets, kid_kernel_poly_gamma=spec.kid_gamma,
                                     kid_subset_size=min(len(f1), len(f2), 2 * KID_MAX_SUBSET) // 2, verbose=False)
    return {"fid": fid, "kid": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD],
            **_feature_metrics(f1, f2, ref_stats["mu"], ref_stats["sigma"], device)}


def _feature_metrics(fake: torch.Tensor, real: torch.Tensor | None, mu_ref, sigma_ref, device) -> dict:
    """PRDC (NaN without reference features, or with k or fewer points in a set) and FID-infinity from the kept
    features (the first KID_MAX_SAMPLES of each side), computed on ``device``; with the counts and k they used."""
    nan = float("nan")
    fake = fake.to(device)
    out = {"precision": nan, "recall": nan, "density": nan, "coverage": nan, "pr_k": PR_K, "dc_k": DC_K,
           "feat_n": len(fake), "feat_ref_n": None if real is None else len(real)}
    if real is not None and min(len(fake), len(real)) > max(PR_K, DC_K):
        out.update(prdc(fake, real.to(device, fake.dtype)))
    out.update(fid_infinity(fake, mu_ref, sigma_ref))
    return out


def fid_kid(samples: torch.Tensor, checkpoint, *, cache_dir=None, device="cpu", inception_weights_path=None,
            kid_subsets: int = KID_SUBSETS, batch_size: int = BATCH_SIZE, cache_root=None) -> dict:
    """``fid_kid_from_state``'s metrics of ``samples`` (N, C, H, W) in [-1, 1] (clamped): one accumulator over all.

    Arguments as for ``FidAccumulator`` and ``fid_kid_from_state``; ``cache_root`` is the former name of ``cache_dir``.
    """
    if cache_root is not None:
        if cache_dir is not None:
            raise ValueError("fid_kid: give cache_dir (cache_root is its former name), not both")
        cache_dir = cache_root
    acc = FidAccumulator(checkpoint, device, inception_weights_path=inception_weights_path)
    for lo in range(0, len(samples), batch_size):
        acc.update(samples[lo:lo + batch_size], range(lo, min(lo + batch_size, len(samples))))
    return fid_kid_from_state(acc.state(), checkpoint, cache_dir=cache_dir, device=device,
                              inception_weights_path=inception_weights_path, kid_subsets=kid_subsets)

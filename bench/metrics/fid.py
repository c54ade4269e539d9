"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) against a checkpoint's real images, via torch-fidelity.

Digits use the shipped classifier's 64-d pre-ReLU features (extractor "digits-classifier"); RGB
checkpoints use torch-fidelity's "inception-v3-compat", whose weights can be given by path or by the
SAMPLERBENCH_INCEPTION_WEIGHTS environment variable. Reference statistics are cached by
torch-fidelity under a name made of everything that determines them.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch_fidelity
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from pretrained.digits import FID_EXTRACTOR, load_feature_net
from pretrained.weights import WEIGHTS_ROOT, file_sha256, read_manifest

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
INCEPTION_ENV = "SAMPLERBENCH_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download name
DIGITS_LAYER = "fc_pre_relu"
DIGITS_WEIGHTS = WEIGHTS_ROOT / "digits_features"
CACHE_ENV = "SAMPLERBENCH_FID_CACHE"
BATCH_SIZE = 250
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000  # subsets are half the smaller set (at most this), so kid_std shows subset spread


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> 0..255 uint8 (clamped), the images torch-fidelity expects."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


class DigitsClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of the digits classifier: uint8 (B, 1, 8, 8) -> 64-d pre-ReLU features."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net, _ = load_feature_net(feature_extractor_weights_path or DIGITS_WEIGHTS)

    @staticmethod
    def get_provided_features_list():
        return (DIGITS_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return DIGITS_LAYER

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        # float64 features: KID's cubic kernel of O(10) features loses all precision in float32.
        return (self.net.features(x.float() / 127.5 - 1.0).double(),)


if FID_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(FID_EXTRACTOR, DigitsClassifierExtractor)


class Uint8Images(Dataset):
    """A torch Dataset over a (N, C, H, W) uint8 tensor."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def inception_weights(path=None) -> str | None:
    """The Inception weights file to use: ``path``, else $SAMPLERBENCH_INCEPTION_WEIGHTS, else torch-fidelity's
    download (None), which is checked to be reachable; raises FileNotFoundError saying how to provide them."""
    path = path or os.environ.get(INCEPTION_ENV)
    how = (f"download {INCEPTION_FILE} from https://github.com/toshas/torch-fidelity/releases (v0.2.0) on a machine "
           f"with internet and pass its path as inception_weights_path=... or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}")
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}: {how}")
        return str(path)
    if (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file():
        return None  # torch-fidelity finds it in torch.hub's cache
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
    except Exception as e:  # no network, proxy, HTTP error: all mean the same to the user
        raise FileNotFoundError(f"Inception weights are not cached and could not be downloaded ({e}): {how}") from e
    return None


def _sha256_prefix(path: str) -> str:
    """The weights' hash for the cache key, computed once per file version (Inception is ~100 MB; FID runs per cell)."""
    st = os.stat(path)
    return _hash_once(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=None)
def _hash_once(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)[:16]


def _extractor_setup(checkpoint, inception_weights_path):
    """(extractor name, feature layer, weights path or None, cache-key fragment of the weights, KID kernel gamma)."""
    name = checkpoint.extras.get("fid", INCEPTION)
    if name == FID_EXTRACTOR:
        manifest = read_manifest(DIGITS_WEIGHTS)
        return name, DIGITS_LAYER, str(DIGITS_WEIGHTS), manifest["weights_sha256"][:16], manifest["kid_gamma"]
    if name == INCEPTION:
        path = inception_weights(inception_weights_path)
        return name, INCEPTION_LAYER, path, (_sha256_prefix(path) if path else "torch-fidelity-url"), None
    raise ValueError(f"checkpoint {checkpoint.name!r} names an unknown FID extractor {name!r}; "
                     f"allowed: {[FID_EXTRACTOR, INCEPTION]}")


def _images(x: torch.Tensor, rgb: bool) -> torch.Tensor:
    x = to_uint8(x)
    return x.expand(-1, 3, -1, -1).contiguous() if rgb and x.shape[1] == 1 else x


def fid_kid(samples: torch.Tensor, checkpoint, *, inception_weights_path=None, cache_root=None,
            kid_subsets: int = KID_SUBSETS, batch_size: int = BATCH_SIZE) -> dict:
    """{"fid", "kid", "kid_std"} of ``samples`` (N, C, H, W) in [-1, 1] against the checkpoint's FID reference set.

    Args:
        samples: generated images in the data range [-1, 1]; values outside are clamped.
        checkpoint: a ``pretrained.Checkpoint``; ``extras["fid"]`` names the extractor,
            ``extras["fid_reference"]`` = (key, n) names and sizes its reference set (``real_data(n, 0)``).
        inception_weights_path: Inception weights for RGB checkpoints (else $SAMPLERBENCH_INCEPTION_WEIGHTS).
        cache_root: where reference statistics are cached (else $SAMPLERBENCH_FID_CACHE, else torch-fidelity's).

    KID uses torch-fidelity's cubic polynomial kernel; for digits its gamma is 1 / E|f|^2 (manifest
    "kid_gamma") instead of 1 / d, so KID values are not on the Inception scale.
    """
    name, layer, weights, weights_key, gamma = _extractor_setup(checkpoint, inception_weights_path)
    ref_key, n_ref = checkpoint.extras["fid_reference"]
    rgb = name == INCEPTION
    reference = _images(checkpoint.real_data(n_ref, 0), rgb)
    # One BLAS thread: on shared cores OpenBLAS's spinning threads make KID's 100 small matmuls ~20x slower.
    with threadpool_limits(1, "blas"):
        out = torch_fidelity.calculate_metrics(
            input1=Uint8Images(_images(samples, rgb)), input2=Uint8Images(reference),
            input2_cache_name=f"{ref_key}-n{n_ref}-{name}-{weights_key}-{layer}",
            cache_root=cache_root or os.environ.get(CACHE_ENV), cache=True,
            cuda=torch.cuda.is_available(), save_cpu_ram=True, batch_size=batch_size, verbose=False,
            fid=True, kid=True, feature_extractor=name, feature_layer_fid=layer, feature_layer_kid=layer,
            feature_extractor_weights_path=weights, kid_subsets=kid_subsets, kid_kernel_poly_gamma=gamma,
            kid_subset_size=min(len(samples), len(reference), 2 * KID_MAX_SUBSET) // 2)
    return {"fid": out["frechet_inception_distance"], "kid": out["kernel_inception_distance_mean"],
            "kid_std": out["kernel_inception_distance_std"]}

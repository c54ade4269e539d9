"""Feature extractors for FID/KID from torch-fidelity's registry: the digits classifier, and Inception-v3 whose weights
are checked against their published sha256 and read as plain tensors before torch-fidelity sees them.

torch-fidelity's Inception loader unpickles its weights (``torch.load(weights_only=False)`` on a path, or on
torch.hub's cached download, which is never hash-checked), so a planted file would run code. Here the bytes are
hashed, loaded with ``weights_only=True``, and torch-fidelity gets an in-memory copy of those tensors, never a path.
"""
from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from pretrained.digits import FEATURES_FOLDER as DIGITS_WEIGHTS
from pretrained.digits import FID_EXTRACTOR, load_feature_net
from pretrained.nets import DigitsClassifier
from pretrained.weights import file_sha256, read_manifest

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
INCEPTION_DIM = 2048
INCEPTION_ENV = "SAMPLERBENCH_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity v0.2.0 release; torch.hub name: sha256[:8]
# Its full sha256 (the name's 8 hex digits are its prefix), as projects that verify the file pin it for torch-fidelity's
# v0.2.0 URL and for pytorch-fid's copy pt_inception-2015-12-05-6726825d.pth (e.g. snap-research/discoscene,
# models/inception_model.py).
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
DIGITS_LAYER = "fc_pre_relu"


class InceptionWeightsError(ValueError):
    """The Inception weights file is not the published one (sha256), or does not hold plain tensors."""


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> 0..255 uint8 (clamped), the images torch-fidelity's extractors take; stays on x's device."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class DigitsClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of the digits classifier: uint8 (B, 1, 8, 8) -> 64-d pre-ReLU features, in float64.

    float64 throughout: float32 kernels change features by ~1e-7 with the batch size (FID must not), and KID's cubic
    kernel of O(10) features loses all precision in float32.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = load_feature_net(feature_extractor_weights_path or DIGITS_WEIGHTS)[0].double()

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
        return (self.net.features(x.double() / 127.5 - 1.0),)


if FID_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(FID_EXTRACTOR, DigitsClassifierExtractor)


def _how_to_get_inception() -> str:
    return (f"download {INCEPTION_FILE} from https://github.com/toshas/torch-fidelity/releases (v0.2.0) on a machine "
            f"with internet and pass its path as inception_weights_path=... or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}")


def _sha256_mismatch(path, actual: str) -> InceptionWeightsError:
    return InceptionWeightsError(
        f"Inception weights {path} have sha256 {actual}, not {INCEPTION_SHA256} (torch-fidelity's {INCEPTION_FILE}); "
        f"refusing to load them, since unpickling a different file can run arbitrary code: {_how_to_get_inception()}")


def inception_weights(path=None) -> Path:
    """The Inception weights file: ``path``, else $SAMPLERBENCH_INCEPTION_WEIGHTS, else torch.hub's cached copy, else
    a download into torch.hub's cache (kept only if its sha256 is the published one).

    Raises FileNotFoundError saying how to provide the file; InceptionWeightsError for a download with another hash.
    Files found are hashed when loaded (``load_inception_state``), not here.
    """
    path = path or os.environ.get(INCEPTION_ENV)
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}: {_how_to_get_inception()}")
        return Path(path)
    target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if target.is_file():
        return target
    # Download beside the target under a per-process name, check, then rename: no one ever sees an unchecked file.
    partial = target.with_name(f".{INCEPTION_FILE}.{os.getpid()}.{uuid.uuid4().hex}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(partial), progress=False)
        actual = file_sha256(partial)
        if actual != INCEPTION_SHA256:
            raise InceptionWeightsError(f"downloaded {URL_INCEPTION_V3}: {_sha256_mismatch(partial, actual)}")
        os.replace(partial, target)
    except InceptionWeightsError:
        raise
    except Exception as e:  # no network, proxy, HTTP error: all mean the same to the user
        raise FileNotFoundError(f"Inception weights are not cached and could not be downloaded ({e}): "
                                f"{_how_to_get_inception()}") from e
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_inception_state(path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, from bytes whose sha256 is INCEPTION_SHA256, read with ``weights_only=True``.

    Verified once per file version per process (Inception is ~96 MB and FID runs per cell); what is cached is the
    verified content, so replacing the file later cannot slip anything past the check.
    """
    st = os.stat(path)
    return _verified_state(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, INCEPTION_SHA256)


@lru_cache(maxsize=1)
def _verified_state(path: str, size: int, mtime_ns: int, ino: int, expected: str) -> dict[str, torch.Tensor]:
    data = Path(path).read_bytes()  # hash and load the same bytes: the file cannot change in between
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise _sha256_mismatch(path, actual)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InceptionWeightsError(f"Inception weights {path} could not be read as plain tensors "
                                    f"(torch.load weights_only=True): {e}") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InceptionWeightsError(f"Inception weights {path} are not a state dict of tensors")
    return state


@dataclass(frozen=True)
class ExtractorSpec:
    """What determines a checkpoint's features: extractor, layer, weights (sha256); plus KID's kernel gamma."""

    name: str
    layer: str
    weights_sha256: str
    dim: int
    dtype: torch.dtype
    rgb: bool
    kid_gamma: float | None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.layer}/{self.weights_sha256}"


def spec_by_name(name: str) -> ExtractorSpec:
    """The spec of the extractor ``name``; ValueError naming the allowed ones otherwise."""
    if name == FID_EXTRACTOR:
        manifest = read_manifest(DIGITS_WEIGHTS)
        return ExtractorSpec(name, DIGITS_LAYER, manifest["weights_sha256"], DigitsClassifier.FEATURE_DIM,
                             torch.float64, False, manifest["kid_gamma"])
    if name == INCEPTION:
        return ExtractorSpec(name, INCEPTION_LAYER, INCEPTION_SHA256, INCEPTION_DIM, torch.float32, True, None)
    raise ValueError(f"unknown FID extractor {name!r}; allowed: {[FID_EXTRACTOR, INCEPTION]}")


def extractor_dim(name: str) -> int:
    """The feature dimension of extractor ``name`` (no weights read)."""
    return {FID_EXTRACTOR: DigitsClassifier.FEATURE_DIM, INCEPTION: INCEPTION_DIM}[name]


def default_extractor(shape) -> str:
    """The extractor that follows the data: the digits classifier for 1x8x8 grayscale, Inception otherwise."""
    return FID_EXTRACTOR if tuple(shape) == (1, 8, 8) else INCEPTION


def extractor_spec(checkpoint) -> ExtractorSpec:
    """The feature extractor ``checkpoint.extras["fid"]`` names ("auto": by its data shape); raises ValueError for an
    unknown one."""
    name = checkpoint.extras.get("fid", INCEPTION)
    if name == "auto":
        name = default_extractor(checkpoint.data_shape)
    try:
        return spec_by_name(name)
    except ValueError:
        raise ValueError(f"checkpoint {checkpoint.name!r} names an unknown FID extractor {name!r}; "
                         f"allowed: {[FID_EXTRACTOR, INCEPTION]}") from None


def create_extractor(spec: ExtractorSpec, device, inception_weights_path=None) -> FeatureExtractorBase:
    """torch-fidelity's extractor for ``spec`` on ``device`` (eval mode, no grad)."""
    weights = str(DIGITS_WEIGHTS)  # safetensors, checked against its pinned sha256 by load_feature_net
    if spec.name == INCEPTION:
        # torch-fidelity calls torch.load(weights_only=False) on what it is given: give it our own serialisation
        # of the verified tensors, not a path.
        weights = io.BytesIO()
        torch.save(load_inception_state(inception_weights(inception_weights_path)), weights)
        weights.seek(0)
    extractor = create_feature_extractor(spec.name, [spec.layer], cuda=False, verbose=False,
                                         feature_extractor_weights_path=weights)
    return extractor.to(device)


def to_images(x: torch.Tensor, spec: ExtractorSpec) -> torch.Tensor:
    """Samples in [-1, 1] -> the uint8 images ``spec``'s extractor takes (grey repeated to RGB for Inception)."""
    x = to_uint8(x)
    return x.expand(-1, 3, -1, -1).contiguous() if spec.rgb and x.shape[1] == 1 else x

"""Feature extractors for FID/KID from torch-fidelity's registry: the digits classifier, and Inception-v3 whose weights
are checked against their published sha256 and read as plain tensors before torch-fidelity sees them.

torch-fidelity's Inception loader unpickles its weights (``torch.load(weights_only=False)`` on a path, or on
torch.hub's cached download, which is never hash-checked), so a planted file would run code. Here the bytes are
hashed, loaded with ``weights_only=True``, and torch-fidelity gets an in-memory copy of those tensors, never a path.

DINOv2 (Oquab et al. 2023; FD on its features: Stein et al. 2023): torch-fidelity 0.4's ``dinov2-vit-*`` extractors
fetch the model code and weights with ``torch.hub.load("facebookresearch/dinov2")`` and refuse a local weights path
(NotImplementedError). ``LocalDinoV2Extractor`` keeps torch-fidelity's preprocessing and forward, builds the network
from a local copy of that torch.hub repository (``pretrained=False``: nothing is downloaded) and loads a local weights
file through the same sha256 check and ``weights_only=True`` read as Inception's. Meta publishes no checksums for these
files and none could be verified here, so DINOV2_SHA256 pins none: until one is pinned, choosing a DINOv2 extractor
stops with an error saying so.
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
from torch_fidelity.feature_extractor_dinov2 import MODEL_METADATA as DINOV2_HUB_NAMES
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
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
DINOV2_DIMS = {"dinov2-vit-s-14": 384, "dinov2-vit-b-14": 768, "dinov2-vit-l-14": 1024, "dinov2-vit-g-14": 1536}
DINOV2_LAYER = "dinov2"
DINOV2_REGISTRY_PREFIX = "samplerbench-"  # torch-fidelity's registry name of our local extractor: prefix + name
DINOV2_REPO_ENV = "SAMPLERBENCH_DINOV2_REPO"  # a local copy of github.com/facebookresearch/dinov2 (its hubconf.py)
DINOV2_WEIGHTS_ENV = "SAMPLERBENCH_DINOV2_WEIGHTS"
# sha256 of Meta's dl.fbaipublicfiles.com/dinov2/<hub name>/<hub name>_pretrain.pth; None: not pinned (Meta publishes
# no checksums, and no copy could be hashed where this was written). Pin one by hashing a file downloaded from there.
DINOV2_SHA256: dict[str, str | None] = {name: None for name in DINOV2_DIMS}


class InceptionWeightsError(ValueError):
    """The Inception weights file is not the published one (sha256), or does not hold plain tensors."""


class DinoV2WeightsError(ValueError):
    """No sha256 is pinned for a DINOv2 model, its weights file has another, or does not hold plain tensors."""


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
    return _load_verified(path, INCEPTION_SHA256, "Inception", _sha256_mismatch, InceptionWeightsError)


def _load_verified(path, expected: str, what: str, mismatch, error) -> dict[str, torch.Tensor]:
    st = os.stat(path)
    return _verified_state(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, expected, what, mismatch,
                           error)


@lru_cache(maxsize=1)
def _verified_state(path: str, size: int, mtime_ns: int, ino: int, expected: str, what: str, mismatch,
                    error) -> dict[str, torch.Tensor]:
    data = Path(path).read_bytes()  # hash and load the same bytes: the file cannot change in between
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise mismatch(path, actual)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"{what} weights {path} could not be read as plain tensors (torch.load weights_only=True): {e}") \
            from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise error(f"{what} weights {path} are not a state dict of tensors")
    return state


def _dinov2_file(name: str) -> str:
    return f"{DINOV2_HUB_NAMES[name]}_pretrain.pth"


def _how_to_get_dinov2(name: str) -> str:
    hub = DINOV2_HUB_NAMES[name]
    return (f"on a machine with internet, clone github.com/facebookresearch/dinov2 and download "
            f"dl.fbaipublicfiles.com/dinov2/{hub}/{_dinov2_file(name)}, then set {DINOV2_REPO_ENV}=/path/to/dinov2 "
            f"and {DINOV2_WEIGHTS_ENV}=/path/to/{_dinov2_file(name)} (or place them where torch.hub keeps them: "
            f"<torch hub dir>/facebookresearch_dinov2_main and <torch hub dir>/checkpoints/{_dinov2_file(name)})")


def dinov2_sources(name: str) -> tuple[Path, Path]:
    """(repository folder, weights file) of DINOv2 model ``name``: $SAMPLERBENCH_DINOV2_REPO / _WEIGHTS, else where
    torch.hub keeps them. Raises DinoV2WeightsError when no sha256 is pinned for it, FileNotFoundError (saying how to
    provide them) when either is absent; nothing is downloaded."""
    if DINOV2_SHA256.get(name) is None:
        raise DinoV2WeightsError(
            f"{name}: no sha256 is pinned for {_dinov2_file(name)} in bench/metrics/features.py (DINOV2_SHA256), so "
            f"its weights are not loaded: Meta publishes no checksums and this version could not hash a copy. Pin the "
            f"sha256 of a file downloaded from dl.fbaipublicfiles.com there; until then use inception-v3-compat")
    hub = Path(torch.hub.get_dir())
    repo = Path(os.environ.get(DINOV2_REPO_ENV) or hub / "facebookresearch_dinov2_main")
    weights = Path(os.environ.get(DINOV2_WEIGHTS_ENV) or hub / "checkpoints" / _dinov2_file(name))
    if not (repo / "hubconf.py").is_file():
        raise FileNotFoundError(f"{name}: no DINOv2 repository (hubconf.py) at {repo}: {_how_to_get_dinov2(name)}")
    if not weights.is_file():
        raise FileNotFoundError(f"{name}: DINOv2 weights not found at {weights}: {_how_to_get_dinov2(name)}")
    return repo, weights


def load_dinov2_state(name: str, path) -> dict[str, torch.Tensor]:
    """The state dict of DINOv2 model ``name`` in ``path``, from bytes with its pinned sha256, ``weights_only=True``."""
    expected = DINOV2_SHA256[name]

    def mismatch(p, actual):
        return DinoV2WeightsError(f"DINOv2 weights {p} have sha256 {actual}, not {expected} (pinned for "
                                  f"{_dinov2_file(name)}); refusing to load them")
    return _load_verified(path, expected, "DINOv2", mismatch, DinoV2WeightsError)


class LocalDinoV2Extractor(FeatureExtractorDinoV2):
    """torch-fidelity's DINOv2 extractor (its resizing to 224, normalisation and CLS-token features) on a network built
    from a local torch.hub repository and sha256-verified local weights; ``name`` is one of DINOV2_DIMS."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        FeatureExtractorBase.__init__(self, name, features_list)
        name = name.removeprefix(DINOV2_REGISTRY_PREFIX)
        repo, weights = dinov2_sources(name)
        state = load_dinov2_state(name, feature_extractor_weights_path or weights)
        os.environ["XFORMERS_DISABLED"] = "1"  # as torch-fidelity: the reference attention, not xFormers'
        self.model = torch.hub.load(str(repo), DINOV2_HUB_NAMES[name], source="local", pretrained=False)
        self.model.load_state_dict(state)
        self.feature_extractor_internal_dtype = torch.float32
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def can_be_compiled():
        return False


for _name in DINOV2_DIMS:  # under our own names: torch-fidelity's (downloading) ones stay as they are
    if DINOV2_REGISTRY_PREFIX + _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(DINOV2_REGISTRY_PREFIX + _name, LocalDinoV2Extractor)


EXTRACTORS: dict[str, int] = {FID_EXTRACTOR: DigitsClassifier.FEATURE_DIM, INCEPTION: INCEPTION_DIM, **DINOV2_DIMS}
"""Every extractor ``--fid-extractor`` and checkpoints may name, with its feature dimension."""


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
    if name in DINOV2_DIMS:
        return ExtractorSpec(name, DINOV2_LAYER, str(DINOV2_SHA256[name]), DINOV2_DIMS[name], torch.float32, True,
                             None)
    raise ValueError(f"unknown FID extractor {name!r}; allowed: {list(EXTRACTORS)}")


def extractor_dim(name: str) -> int:
    """The feature dimension of extractor ``name`` (no weights read)."""
    return EXTRACTORS[name]


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
                         f"allowed: {list(EXTRACTORS)}") from None


def create_extractor(spec: ExtractorSpec, device, inception_weights_path=None) -> FeatureExtractorBase:
    """torch-fidelity's extractor for ``spec`` on ``device`` (eval mode, no grad)."""
    name, weights = spec.name, str(DIGITS_WEIGHTS)  # safetensors, checked against its pinned sha256 by load_feature_net
    if spec.name == INCEPTION:
        # torch-fidelity calls torch.load(weights_only=False) on what it is given: give it our own serialisation
        # of the verified tensors, not a path.
        weights = io.BytesIO()
        torch.save(load_inception_state(inception_weights(inception_weights_path)), weights)
        weights.seek(0)
    elif spec.name in DINOV2_DIMS:  # our local extractor finds and verifies its own files (dinov2_sources)
        name, weights = DINOV2_REGISTRY_PREFIX + spec.name, None
    extractor = create_feature_extractor(name, [spec.layer], cuda=False, verbose=False,
                                         feature_extractor_weights_path=weights)
    return extractor.to(device)


def to_images(x: torch.Tensor, spec: ExtractorSpec) -> torch.Tensor:
    """Samples in [-1, 1] -> the uint8 images ``spec``'s extractor takes (grey repeated to RGB for Inception)."""
    x = to_uint8(x)
    return x.expand(-1, 3, -1, -1).contiguous() if spec.rgb and x.shape[1] == 1 else x

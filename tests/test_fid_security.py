"""FID/KID never unpickle a file someone could plant: torch-fidelity's cache is unused, ours is safetensors,
and Inception weights are checked against their published sha256 before anything loads them."""
import hashlib
import io
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

import pretrained
from bench.metrics import features
from bench.metrics import fid as fidmod
from pretrained.data import digits_split
from pretrained.registry import Checkpoint
from pretrained.weights import read_manifest


def same_metrics(a: dict, b: dict) -> bool:
    """Equal metric dicts, NaN equal to NaN (a metric that does not apply, e.g. fid_inf below its sample minimum)."""
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in ((a[k], b[k]) for k in a))


class Planted:
    """A pickle that, when loaded, writes a marker file (stands for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mu": Planted(marker)}, str(path))  # torch.load(weights_only=False) would run it
    return path


@pytest.fixture(scope="module")
def ck():
    return pretrained.load("digits")


@pytest.fixture
def samples():
    x = digits_split("holdout")[0][:200]
    return x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))


def torch_fidelity_cache_files(ck):
    """The files torch-fidelity's cache read for the digits reference under the previous fid.py
    (``input2_cache_name`` = key-n-extractor-weights-layer, then its features and FID-statistics files)."""
    ref_key, n_ref = ck.extras["fid_reference"]
    name, layer = features.FID_EXTRACTOR, features.DIGITS_LAYER
    sha = read_manifest(features.DIGITS_WEIGHTS)["weights_sha256"][:16]
    prefix = f"{ref_key}-n{n_ref}-{name}-{sha}-{layer}-{name}"
    return [f"{prefix}-features-{layer}.pt", f"{prefix}-stat-fid-{layer}.pt"]


def test_torch_fidelity_cache_is_never_read(ck, samples, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    default_root = tmp_path / "torch_home" / "fidelity_cache"  # torch-fidelity's default cache_root
    env_root = tmp_path / "env_cache"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("SAMPLERBENCH_FID_CACHE", str(env_root))  # the previous fid.py's cache variable
    for root in (default_root, env_root):
        for name in torch_fidelity_cache_files(ck):
            plant(root / name, marker)
    out = fidmod.fid_kid(samples, ck)
    assert not marker.exists()
    assert out["fid"] > 0


def test_planted_files_in_our_cache_folder_are_not_unpickled(ck, samples, tmp_path):
    marker, cache = tmp_path / "pwned", tmp_path / "fid"
    for name in torch_fidelity_cache_files(ck):
        plant(cache / name, marker)
    clean = fidmod.fid_kid(samples, ck)
    ours = fidmod.reference_cache_path(ck, cache)
    plant(ours, marker)  # a pickle under our own cache name: not a safetensors file, so recomputed
    with pytest.warns(UserWarning, match="recomputing"):
        out = fidmod.fid_kid(samples, ck, cache_dir=cache)
    assert not marker.exists()
    assert same_metrics(out, clean)
    assert load_file(str(ours))["n"].item() == ck.extras["fid_reference"][1]  # replaced by a valid file


def _rgb_checkpoint(n=4):
    images = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return Checkpoint("rgb-test", None, "", None, lambda k, seed: images[:k],
                      extras={"fid": features.INCEPTION, "fid_reference": ("rgb-test", n)})


def test_malicious_inception_weights_path_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = plant(tmp_path / features.INCEPTION_FILE, marker)
    with pytest.raises(features.InceptionWeightsError, match="sha256") as err:
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint(), inception_weights_path=weights)
    assert isinstance(err.value, ValueError)
    assert not marker.exists()


def test_malicious_file_in_torch_hub_cache_is_refused(tmp_path, monkeypatch):
    """With no path given, torch-fidelity would unpickle whatever sits in torch.hub's checkpoints folder."""
    marker = tmp_path / "pwned"
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    plant(tmp_path / "hub" / "checkpoints" / features.INCEPTION_FILE, marker)
    with pytest.raises(features.InceptionWeightsError, match="sha256"):
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint())
    assert not marker.exists()


def test_tampered_download_is_refused_and_not_kept(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **kw: plant(Path(dst), marker))
    with pytest.raises(features.InceptionWeightsError, match="download"):
        features.inception_weights()
    assert not marker.exists()
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []


def test_pinned_hash_is_the_published_one():
    # torch.hub names a file by its sha256 prefix: weights-inception-2015-12-05-<sha256[:8]>.pth
    assert features.INCEPTION_FILE.endswith(f"-{features.INCEPTION_SHA256[:8]}.pth")
    assert len(features.INCEPTION_SHA256) == 64


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_matching_hash_still_loads_only_tensors(tmp_path, monkeypatch):
    """Belt and braces: even a file with the pinned hash is read with torch.load(weights_only=True)."""
    marker = tmp_path / "pwned"
    weights = plant(tmp_path / features.INCEPTION_FILE, marker)
    monkeypatch.setattr(features, "INCEPTION_SHA256", _sha256(weights))
    with pytest.raises(features.InceptionWeightsError, match="weights_only"):
        features.load_inception_state(weights)
    assert not marker.exists()


@pytest.fixture(scope="module")
def stand_in_inception(tmp_path_factory):
    """Randomly initialised weights of torch-fidelity's Inception architecture (the real ones cannot be fetched)."""

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    state = Skeleton(features.INCEPTION, [features.INCEPTION_LAYER], feature_extractor_weights_path=empty).state_dict()
    path = tmp_path_factory.mktemp("inception") / features.INCEPTION_FILE
    torch.save(state, str(path))
    return path


def test_verified_stand_in_weights_compute_fid(stand_in_inception, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "INCEPTION_SHA256", _sha256(stand_in_inception))
    ck = _rgb_checkpoint(n=6)
    x = ck.real_data(6, 0)
    out = fidmod.fid_kid(x, ck, inception_weights_path=stand_in_inception, cache_dir=tmp_path)
    assert abs(out["fid"]) < 1e-3  # the reference set against itself
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    # A different file under the same name is refused, wherever it is found.
    stand_in_inception.write_bytes(stand_in_inception.read_bytes() + b"\0")
    with pytest.raises(features.InceptionWeightsError, match=features.INCEPTION_SHA256[:8]):
        fidmod.FidAccumulator(ck, inception_weights_path=stand_in_inception)


def test_state_pickles_round_trip(ck, samples):
    """The state is what torch.distributed.all_gather_object pickles between our own ranks: plain data."""
    acc = fidmod.FidAccumulator(ck)
    acc.update(samples, range(len(samples)))
    state = pickle.loads(pickle.dumps(acc.state()))
    assert all(v.device.type == "cpu" for v in state.values() if torch.is_tensor(v))
    assert same_metrics(fidmod.fid_kid_from_state(state, ck), fidmod.fid_kid(samples, ck))


def test_temp_files_are_per_process_and_cleaned(ck, samples, tmp_path):
    fidmod.fid_kid(samples, ck, cache_dir=tmp_path)
    names = os.listdir(tmp_path)
    assert names == [fidmod.reference_cache_path(ck, tmp_path).name]

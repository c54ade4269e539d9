"""FID/KID: parity with torch-fidelity's calculate_metrics, the previous implementation's values, self-distance,
monotone response to noise, batch-size and shard invariance, the reference cache, Inception errors."""
import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset

import pretrained
from bench.metrics import features
from bench.metrics import fid as fidmod
from pretrained.data import digits_split
from pretrained.registry import Checkpoint
from pretrained.weights import read_manifest

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


@pytest.fixture(scope="module")
def ck():
    return pretrained.load("digits")


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "fidcache")


def noisy_holdout(scale=0.1, seed=0):
    x = digits_split("holdout")[0]
    return x + scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


class Uint8Images(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_parity_with_torch_fidelity_calculate_metrics(ck):
    """An independent path: torch-fidelity's own pipeline (features in one pass, np.cov, its KID) without cache."""
    x = noisy_holdout()[:257]
    ref_key, n_ref = ck.extras["fid_reference"]
    ref = ck.real_data(n_ref, 0)
    ours = fidmod.fid_kid(x, ck, batch_size=64)
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Images(features.to_uint8(x)), input2=Uint8Images(features.to_uint8(ref)), cache=False,
        cuda=False, save_cpu_ram=True, batch_size=100, verbose=False, fid=True, kid=True,
        feature_extractor=features.FID_EXTRACTOR, kid_subsets=fidmod.KID_SUBSETS,
        kid_kernel_poly_gamma=read_manifest(features.DIGITS_WEIGHTS)["kid_gamma"], kid_subset_size=257 // 2)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9, abs=1e-12)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)


def test_matches_previous_implementation(ck):
    """Values of the torch-fidelity calculate_metrics path this replaced (float32 classifier), same samples."""
    out = fidmod.fid_kid(noisy_holdout(), ck)
    assert out["fid"] == pytest.approx(35.651176765497894, rel=1e-6)
    assert out["kid"] == pytest.approx(0.0031909707685497148, rel=1e-5)
    assert out["kid_std"] == pytest.approx(0.013746434986396926, rel=1e-5)


def test_reference_against_itself_is_zero(ck, cache):
    out = fidmod.fid_kid(digits_split("reference")[0], ck, cache_dir=cache)
    assert abs(out["fid"]) < 1e-6
    # The cached reference statistics give the same value.
    again = fidmod.fid_kid(digits_split("reference")[0], ck, cache_dir=cache)
    assert again["fid"] == pytest.approx(out["fid"], abs=1e-9)


def test_fid_rises_with_noise(ck, cache):
    x = digits_split("holdout")[0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    fids = [fidmod.fid_kid(x + s * z, ck, cache_dir=cache, kid_subsets=5)["fid"] for s in NOISE_LEVELS]
    assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_features_batch_size_invariant():
    ex = features.DigitsClassifierExtractor(features.FID_EXTRACTOR, [features.DIGITS_LAYER])
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = features.to_uint8(digits_split("holdout")[0] + 0.1 * noise)
    with torch.no_grad():
        whole = ex(x)[0]
        pieces = torch.cat([ex(b)[0] for b in x.split(7)])
    assert whole.dtype == torch.float64
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)


def _accumulate(ck, x, batch_sizes, indices=None):
    acc = fidmod.FidAccumulator(ck)
    idx = torch.arange(len(x)) if indices is None else indices
    for b, i in zip(x.split(batch_sizes), idx.split(batch_sizes)):
        acc.update(b, i)
    return acc.state()


def test_batch_size_invariant(ck):
    x = noisy_holdout()
    one = fidmod.fid_kid_from_state(_accumulate(ck, x, len(x)), ck)
    seven = fidmod.fid_kid_from_state(_accumulate(ck, x, [1, 50, 3, 100, 44, 2, 100]), ck)
    assert seven["fid"] == pytest.approx(one["fid"], rel=1e-10)
    assert seven["kid"] == pytest.approx(one["kid"], rel=1e-10, abs=1e-14)
    assert seven["kid_std"] == pytest.approx(one["kid_std"], rel=1e-10)


def test_shards_merge_to_one_run(ck):
    """torchrun: rank r holds samples r::2; merged states give the single-process value, in any order."""
    x = noisy_holdout()
    idx = torch.arange(len(x))
    single = fidmod.fid_kid_from_state(_accumulate(ck, x, 64), ck)
    shards = [_accumulate(ck, x[r::2], 32, idx[r::2]) for r in range(2)]
    for states in (shards, shards[::-1]):
        merged = fidmod.FidAccumulator.merge(states)
        assert torch.equal(merged["kid_index"], idx)
        out = fidmod.fid_kid_from_state(merged, ck)
        assert out["fid"] == pytest.approx(single["fid"], rel=1e-10)
        assert out["kid"] == pytest.approx(single["kid"], rel=1e-10, abs=1e-14)
    # An empty shard (more ranks than samples) merges as nothing.
    empty = fidmod.FidAccumulator(ck).state()
    assert fidmod.fid_kid_from_state(fidmod.FidAccumulator.merge([empty, *shards]), ck) == out


def test_merge_rejects_a_sample_twice(ck):
    x = noisy_holdout()[:20]
    state = _accumulate(ck, x, 20)
    with pytest.raises(ValueError, match="sample index 0 occurs in more than one state"):
        fidmod.FidAccumulator.merge([state, state])


def test_kid_keeps_only_the_first_samples(ck, monkeypatch):
    monkeypatch.setattr(fidmod, "KID_MAX_SAMPLES", 100)
    x = noisy_holdout()
    state = _accumulate(ck, x, 64)
    assert state["n"] == len(x) and torch.equal(state["kid_index"], torch.arange(100))
    out = fidmod.fid_kid_from_state(state, ck)
    full = fidmod.fid_kid(x[:100], ck)
    assert out["kid"] == pytest.approx(full["kid"], rel=1e-10, abs=1e-14)  # KID of the first 100 against 100 refs


def test_update_checks_indices(ck):
    acc = fidmod.FidAccumulator(ck)
    with pytest.raises(ValueError, match="one global sample index per sample"):
        acc.update(torch.zeros(3, 1, 8, 8), range(2))


def test_too_few_samples(ck):
    with pytest.raises(ValueError, match="at least 4 samples"):
        fidmod.fid_kid(torch.zeros(3, 1, 8, 8), ck)


def test_reference_cache_is_read_and_keyed(ck, cache, monkeypatch):
    x = noisy_holdout()[:50]
    first = fidmod.fid_kid(x, ck, cache_dir=cache)
    path = fidmod.reference_cache_path(ck, cache)
    assert path.is_file()
    # A second call reads the file: it no longer needs the reference images.
    reads = ck.real_data
    monkeypatch.setattr(ck, "real_data", lambda n, seed: pytest.fail("reference recomputed despite the cache"))
    assert fidmod.fid_kid(x, ck, cache_dir=cache) == pytest.approx(first, rel=0, abs=0, nan_ok=True)
    # Another reference size is another file.
    monkeypatch.setattr(ck, "real_data", reads)
    monkeypatch.setitem(ck.extras, "fid_reference", (ck.extras["fid_reference"][0], 200))
    assert fidmod.reference_cache_path(ck, cache) != path
    assert fidmod.fid_kid(x, ck, cache_dir=cache)["fid"] != first["fid"]


def test_cache_root_is_the_former_name_of_cache_dir(ck, tmp_path):
    x = noisy_holdout()[:50]
    uncached = fidmod.fid_kid(x, ck, kid_subsets=5)
    assert fidmod.fid_kid(x, ck, cache_root=str(tmp_path), kid_subsets=5) == pytest.approx(uncached, rel=0, abs=0,
                                                                                           nan_ok=True)
    assert fidmod.reference_cache_path(ck, tmp_path).is_file()
    with pytest.raises(ValueError, match="not both"):
        fidmod.fid_kid(x, ck, cache_root=str(tmp_path), cache_dir=str(tmp_path))


def test_state_from_another_extractor_is_refused(ck):
    state = _accumulate(ck, noisy_holdout()[:20], 20)
    with pytest.raises(ValueError, match="uses 'inception-v3-compat"):
        fidmod.fid_kid_from_state(state, _rgb_checkpoint())


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert features.to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def _rgb_checkpoint():
    return Checkpoint("rgb-test", None, "", None, lambda n, seed: torch.zeros(n, 3, 8, 8),
                      extras={"fid": features.INCEPTION, "fid_reference": ("rgb-test", 4)})


def test_inception_weights_missing_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=features.INCEPTION_ENV):
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint(), inception_weights_path=missing)
    monkeypatch.setenv(features.INCEPTION_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        features.inception_weights()


def test_inception_weights_not_downloadable(tmp_path, monkeypatch):
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = "could not be downloaded.*network is unreachable.*" + features.INCEPTION_ENV
    with pytest.raises(FileNotFoundError, match=expected):
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint())


def test_unknown_extractor_raises():
    ck = Checkpoint("x", None, "", None, None, extras={"fid": "nope", "fid_reference": ("x", 1)})
    with pytest.raises(ValueError, match="unknown FID extractor"):
        fidmod.fid_kid(torch.zeros(1, 1, 8, 8), ck)

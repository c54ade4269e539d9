"""FID/KID through torch-fidelity: self-distance, monotone response to noise, batch invariance, Inception errors."""
import pytest
import torch

import pretrained
from bench.metrics import fid as fidmod
from pretrained.data import digits_split
from pretrained.registry import Checkpoint

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


@pytest.fixture(scope="module")
def ck():
    return pretrained.load("digits")


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "fidcache")


def test_reference_against_itself_is_zero(ck, cache):
    out = fidmod.fid_kid(digits_split("reference")[0], ck, cache_root=cache)
    assert abs(out["fid"]) < 1e-6
    # The cached reference statistics give the same value.
    again = fidmod.fid_kid(digits_split("reference")[0], ck, cache_root=cache)
    assert again["fid"] == pytest.approx(out["fid"], abs=1e-9)


def test_fid_rises_with_noise(ck, cache):
    x = digits_split("holdout")[0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    fids = [fidmod.fid_kid(x + s * z, ck, cache_root=cache, kid_subsets=5)["fid"] for s in NOISE_LEVELS]
    assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_features_batch_size_invariant():
    ex = fidmod.DigitsClassifierExtractor(fidmod.FID_EXTRACTOR, [fidmod.DIGITS_LAYER])
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = fidmod.to_uint8(digits_split("holdout")[0] + 0.1 * noise)
    with torch.no_grad():
        whole = ex(x)[0]
        pieces = torch.cat([ex(b)[0] for b in x.split(7)])
    assert whole.dtype == torch.float64
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert fidmod.to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def _rgb_checkpoint():
    return Checkpoint("rgb-test", None, "", None, lambda n, seed: torch.zeros(n, 3, 8, 8),
                      extras={"fid": fidmod.INCEPTION, "fid_reference": ("rgb-test", 4)})


def test_inception_weights_missing_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=fidmod.INCEPTION_ENV):
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint(), inception_weights_path=missing)
    monkeypatch.setenv(fidmod.INCEPTION_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        fidmod.inception_weights()


def test_inception_weights_not_downloadable(tmp_path, monkeypatch):
    monkeypatch.delenv(fidmod.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = "could not be downloaded.*network is unreachable.*" + fidmod.INCEPTION_ENV
    with pytest.raises(FileNotFoundError, match=expected):
        fidmod.fid_kid(torch.zeros(4, 3, 8, 8), _rgb_checkpoint())


def test_unknown_extractor_raises():
    ck = Checkpoint("x", None, "", None, None, extras={"fid": "nope", "fid_reference": ("x", 1)})
    with pytest.raises(ValueError, match="unknown FID extractor"):
        fidmod.fid_kid(torch.zeros(1, 1, 8, 8), ck)

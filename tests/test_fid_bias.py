"""FID-infinity: the line fit on a sequence with a known intercept, the subset Frechet distance against
torch-fidelity's, the extrapolation on Gaussian features whose true distance is 0 and whose bias is known, the subset
sizes, and determinism."""
import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric

from bench.metrics import fid_bias


def test_line_fit_recovers_known_intercept_and_slope():
    sizes = np.array([50, 80, 130, 200, 500])
    assert fid_bias.intercept_in_inverse_n(sizes, 7.0 + 300.0 / sizes) == pytest.approx((7.0, 300.0), rel=1e-9)
    with pytest.raises(ValueError, match="two distinct"):
        fid_bias.intercept_in_inverse_n([100, 100], [1.0, 2.0])


def test_subset_distance_matches_torch_fidelity():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    ref = torch.randn(400, 8, generator=g, dtype=torch.float64) + 0.3
    mu_r, sigma_r = ref.mean(0).numpy(), np.cov(ref.numpy(), rowvar=False)
    idx = torch.randperm(300, generator=g)[:120]
    ours = fid_bias.frechet_distances(f, [idx], mu_r, sigma_r)[0]
    x = f[idx].numpy()
    theirs = fid_statistics_to_metric({"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)},
                                      {"mu": mu_r, "sigma": sigma_r}, verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-8)


def test_extrapolates_gaussian_bias_away():
    """Features N(0, I_16) against the exact N(0, I_16): the true distance is 0, and FID at N has expectation about
    (d + d (d + 1) / 4) / N = 84 / N (mean term d / N; covariance term ||S - I||_F^2 / 4). Measured over 20 seeds:
    fid_inf 0.0006 +- 0.0036, slope 85 +- 4, full-pool FID 0.044 +- 0.004."""
    d = 16
    f = torch.randn(2000, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = fid_bias.fid_infinity(f, np.zeros(d), np.eye(d))
    full = fid_bias.frechet_distances(f, [torch.arange(2000)], np.zeros(d), np.eye(d))[0]
    assert full > 0.03  # the bias a plain FID carries at N = 2000
    assert abs(got["fid_inf"]) < 0.015
    assert got["fid_inf_slope"] == pytest.approx(84.0, rel=0.15)
    assert fid_bias.fid_infinity(f, np.zeros(d), np.eye(d)) == got  # seeded subsets: the same value again


def test_subset_sizes():
    sizes = fid_bias.subset_sizes(500, 64)
    assert (sizes[0], sizes[-1], len(sizes)) == (128, 500, fid_bias.FID_INF_POINTS)  # from 2 d
    assert fid_bias.subset_sizes(50_000, 2048)[0] == 5000  # the paper's range: 5,000 to 50,000
    assert fid_bias.subset_sizes(255, 64) is None  # fewer than 4 d samples: no range of a factor 2 from 2 d
    out = fid_bias.fid_infinity(torch.randn(255, 64, dtype=torch.float64), np.zeros(64), np.eye(64))
    assert np.isnan(out["fid_inf"]) and np.isnan(out["fid_inf_slope"])


def test_subsets_per_size(monkeypatch):
    """Five subsets per size for a small pool (the fit's noise), one from the paper's 5,000 samples on (its cost)."""
    drawn = []

    def line(f, subsets, mu, sigma):  # FID = 1 + 1 / N exactly
        drawn.append(len(subsets))
        return [1.0 + 1.0 / len(s) for s in subsets]
    monkeypatch.setattr(fid_bias, "frechet_distances", line)
    for n in (500, fid_bias.FID_INF_ONE_DRAW_N):
        out = fid_bias.fid_infinity(torch.zeros(n, 8, dtype=torch.float64), np.zeros(8), np.eye(8))
        assert out == pytest.approx({"fid_inf": 1.0, "fid_inf_slope": 1.0})
    assert drawn == [fid_bias.FID_INF_POINTS * fid_bias.FID_INF_REPEATS, fid_bias.FID_INF_POINTS]

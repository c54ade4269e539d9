"""Precision / recall / density / coverage: values worked out by hand on 2-D points, parity with the prdc formulas
(Naeem et al.'s reference code, with closed balls) written out in numpy, block-size invariance, and the rows."""
import numpy as np
import pytest
import torch

import pretrained
from bench.metrics import fid as fidmod
from bench.metrics import prdc as prdcmod
from pretrained.data import digits_split

# k = 1. Radii (distance to the nearest other point of the same set):
#   real r1 (0,0): 1 (r2); r2 (1,0): 1 (r1); r3 (0,2): 2 (r1); r4 (12,0): 11 (r2)
#   fake f1 (0.5,0.1): 3.437 (f2); f2 (0,3.5): 3.437 (f1); f3 (3,9): 6.265 (f2)
# Generated point in real balls: f1 in r1 (0.510 <= 1), r2 (0.510 <= 1), r3 (1.965 <= 2), not r4 (11.5 > 11);
#   f2 in r3 (1.5 <= 2) only (r1 3.5, r2 3.64, r4 12.5); f3 in none (r1 9.49, r2 9.22, r3 7.62, r4 12.73).
#   precision = 2/3 (f1, f2); density = (3 + 1 + 0) / (1 * 3) = 4/3; coverage = 3/4 (r1, r2, r3 hold a fake).
# Real point in generated balls: r1, r2 in f1's (0.510 <= 3.437), r3 in f2's (1.5 <= 3.437); r4 in none
#   (f1 11.5, f2 12.5, f3 12.73 > 6.265): recall = 3/4.
REAL = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [12.0, 0.0]], dtype=torch.float64)
FAKE = torch.tensor([[0.5, 0.1], [0.0, 3.5], [3.0, 9.0]], dtype=torch.float64)


def test_hand_computed_k1():
    got = prdcmod.prdc(FAKE, REAL, pr_k=1, dc_k=1)
    assert got == pytest.approx({"precision": 2 / 3, "recall": 3 / 4, "density": 4 / 3, "coverage": 3 / 4}, abs=1e-7)


def test_hand_computed_k2():
    # k = 2 radii: real r1 2 (r3), r2 2.236 (r3), r3 2.236 (r2), r4 12 (r1); fake f1 9.244 (f3), f2 6.265 (f3),
    #   f3 9.244 (f1).
    # Precision: f1 in r1 (0.51 <= 2); f2 in r3 (1.5 <= 2.236); f3 in none (r4 12.73 > 12, r3 7.62 > 2.236): 2/3.
    # Recall: r1, r2, r3 within 9.244 of f1; r4 is 11.5 from f1 (> 9.244), 12.5 from f2 (> 6.265), 12.73 from f3
    #   (> 9.244): 3/4.
    # Density: f1 in r1, r2, r3 (1.965 <= 2.236) and r4 (11.5 <= 12): 4; f2 in r3 only (r1 3.5 > 2, r2 3.64 > 2.236,
    #   r4 12.5 > 12): 1; f3: 0. (4 + 1 + 0) / (2 * 3) = 5/6. Coverage: every real ball holds f1: 1.
    got = prdcmod.prdc(FAKE, REAL, pr_k=2, dc_k=2)
    assert got == pytest.approx({"precision": 2 / 3, "recall": 3 / 4, "density": 5 / 6, "coverage": 1.0}, abs=1e-7)


def _numpy_prdc(fake, real, k):
    """The prdc package's formulas (Naeem et al. 2020), with <= (closed balls, as torch-fidelity's prc)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    r_rad = np.sort(dist(real, real), axis=1)[:, k]
    f_rad = np.sort(dist(fake, fake), axis=1)[:, k]
    rf = dist(real, fake)
    return {"precision": (rf <= r_rad[:, None]).any(0).mean(), "recall": (rf <= f_rad[None, :]).any(1).mean(),
            "density": (rf <= r_rad[:, None]).sum(0).mean() / k, "coverage": (rf.min(1) <= r_rad).mean()}


@pytest.mark.parametrize("k", [3, 5])
def test_parity_with_numpy_formulas(k):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(120, 6, generator=g, dtype=torch.float64)
    fake = 1.3 * torch.randn(90, 6, generator=g, dtype=torch.float64) + 0.4
    got = prdcmod.prdc(fake, real, pr_k=k, dc_k=k, batch_size=7)
    assert got == pytest.approx(_numpy_prdc(fake.numpy(), real.numpy(), k), abs=1e-7)
    # Blocks of distances: the same values at any block size.
    assert prdcmod.prdc(fake, real, pr_k=k, dc_k=k, batch_size=1000) == pytest.approx(got, abs=1e-7)


def test_same_k_precision_is_share_of_positive_density_counts():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(80, 3, generator=g), torch.randn(60, 3, generator=g) + 0.5
    p = prdcmod.precision_recall(fake, real, k=4)["precision"]
    radius = prdcmod.kth_neighbour_distance(real, 4)
    assert p == pytest.approx(float((torch.cdist(fake, real) <= radius).any(1).float().mean()), abs=1e-7)


def test_identical_sets_score_one_and_disjoint_sets_zero():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    same = prdcmod.prdc(x, x.clone())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0  # each point sits in its own ball and in those of the k neighbours it is within
    far = prdcmod.prdc(x + 100.0, x)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_too_few_points_or_bad_shapes_raise():
    with pytest.raises(ValueError, match="more than k points"):
        prdcmod.density_coverage(FAKE, REAL, k=3)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        prdcmod.precision_recall(FAKE, REAL[:, :1], k=1)


def test_rows_carry_prdc_in_fid_feature_space(tmp_path):
    """A digits FID call returns the four metrics of the same classifier features, with their k and counts."""
    ck = pretrained.load("digits")
    x = digits_split("holdout")[0][:120]
    got = fidmod.fid_kid(x, ck, cache_dir=str(tmp_path))
    assert (got["pr_k"], got["dc_k"], got["feat_n"], got["feat_ref_n"]) == (3, 5, 120, 300)
    acc = fidmod.FidAccumulator(ck)
    acc.update(x, range(len(x)))
    ref = fidmod.reference_state(ck, cache_dir=str(tmp_path))
    expect = prdcmod.prdc(acc.state()["kid_features"], ref["kid_features"])
    assert {k: got[k] for k in expect} == pytest.approx(expect, abs=1e-12)
    # Real held-out digits against the reference: most of each set lies on the other's manifold.
    assert min(got["precision"], got["recall"]) > 0.8 and got["coverage"] > 0.6  # 120 samples cover 300 balls
    noisy = fidmod.fid_kid(x + 0.6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), ck,
                           cache_dir=str(tmp_path))
    assert noisy["precision"] < got["precision"] - 0.2 and noisy["density"] < got["density"]


def test_statistics_reference_gives_no_prdc_but_fid_inf():
    """Against precomputed mu / sigma there are no reference features: PRDC is NaN, FID-infinity is computed."""
    f = torch.randn(300, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = fidmod._feature_metrics(f, None, np.zeros(4), np.eye(4), "cpu")
    assert all(np.isnan(out[k]) for k in ("precision", "recall", "density", "coverage"))
    assert out["feat_n"] == 300 and out["feat_ref_n"] is None and abs(out["fid_inf"]) < 0.05

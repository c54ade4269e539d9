"""DDIM / DDPM / Euler / Heun: order of convergence against the exact oracle, NFE accounting, invariance."""
import numpy as np
import pytest
import torch

import samplers
from samplers import SampleNoise, initial_noise

STEPS = [16, 32, 64, 128, 256]


def _slope(ck, sampler, nfes, x):
    ref = ck.reference_solution(x, samplers.VP_T_END)
    errs = [float((sampler.sample(ck.model, x, n) - ref).norm(dim=1).median()) for n in nfes]
    return np.polyfit(np.log(nfes), np.log(errs), 1)[0]


@pytest.fixture(scope="module")
def x2d():
    return initial_noise(0, range(64), (2,))


@pytest.mark.parametrize("name,options,order", [
    ("ddim", {}, 1.0), ("euler", {}, 1.0), ("euler", {"space": "rho"}, 1.0),
    ("heun", {}, 2.0), ("heun", {"grid": "logSNR"}, 2.0),
])
def test_order_of_convergence_on_gmm2d(gmm2d, x2d, name, options, order):
    s = samplers.get(name, **options)
    nfes = [2 * n for n in STEPS] if name == "heun" else STEPS
    assert _slope(gmm2d, s, nfes, x2d) == pytest.approx(-order, abs=0.35)


def test_edm_euler_is_ddim_on_the_same_grid(gmm16d):
    x = initial_noise(1, range(8), (16,))
    for grid in ("time_uniform", "karras"):
        a = samplers.get("ddim", grid=grid).sample(gmm16d.model, x, 7)
        b = samplers.get("euler", space="rho", grid=grid).sample(gmm16d.model, x, 7)
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("name,options", [("ddim", {}), ("ddpm", {}), ("ddim", {"eta": 0.3}), ("euler", {}),
                                          ("heun", {}), ("heun", {"final_euler": True})])
def test_counted_nfe_equals_budget(gmm2d, name, options):
    s = samplers.get(name, **options)
    x = initial_noise(0, range(3), (2,))
    for nfe in range(1, 51):
        try:
            s.check_nfe(nfe)
        except samplers.UnsupportedNFE:
            continue
        with gmm2d.model.counting() as c:
            s.sample(gmm2d.model, x, nfe, noise=SampleNoise(0, range(3), (2,)))
        assert c.n == nfe


@pytest.mark.parametrize("name", ["ddim", "ddpm", "heun"])
def test_batch_size_invariance(gmm16d, name):
    s = samplers.get(name)
    x = initial_noise(3, range(16), (16,))
    whole = s.sample(gmm16d.model, x, 10, noise=SampleNoise(3, range(16), (16,)))
    parts = [s.sample(gmm16d.model, x[i:i + 5], 10, noise=SampleNoise(3, range(i, min(16, i + 5)), (16,)))
             for i in range(0, 16, 5)]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-12, rtol=0)


def test_seeds_are_per_sample_index():
    a = initial_noise(0, range(10), (4,))
    assert torch.equal(a[3:7], initial_noise(0, range(3, 7), (4,)))
    assert not torch.allclose(a, initial_noise(1, range(10), (4,)))
    # x_T and the sampler's noise are independent streams.
    assert not torch.allclose(a, SampleNoise(0, range(10), (4,)).randn())


def test_ddpm_samples_the_data_distribution(gmm2d):
    """Ancestral sampling with many steps reaches the exact mixture: its moments match (independent check)."""
    n = 2000
    x = initial_noise(5, range(n), (2,))
    out = samplers.get("ddpm").sample(gmm2d.model, x, 200, noise=SampleNoise(5, range(n), (2,)))
    mean, cov = gmm2d.moments
    assert torch.allclose(out.mean(0), mean, atol=0.06)
    assert torch.allclose(torch.cov(out.T), cov, atol=0.06)

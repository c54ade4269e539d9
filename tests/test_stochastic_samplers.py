"""Stochastic samplers (k-diffusion's ancestral and SDE samplers, EDM's Alg. 2) and k-diffusion's lms / dpm_2:
parity with the references on the same noise, distribution metrics approaching the exact ones as NFE grows on
gmm-2d, order of their eta = 0 (ODE) forms, NFE accounting and per-sample-index invariance."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrained
import samplers
from samplers import SampleNoise, Unsupported, UnsupportedNFE, initial_noise

FIXTURES = Path(__file__).parent / "fixtures"
KD = json.loads((FIXTURES / "kdiffusion_samplers_reference.json").read_text())
EDM = json.loads((FIXTURES / "edm_reference.json").read_text())
PARITY_ATOL = 1e-10  # float64 on both sides: measured <= 2e-13 (k-diffusion), 2e-14 (EDM)
T_END = 1e-3
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
              "edm_stochastic"]
PER_STEP = {"dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2, "edm_stochastic": 2, "dpm_2": 2}
# An option change that must move each sampler off its reference.
CHANGED = {"euler_ancestral": {"eta": 0.8}, "dpm_2_ancestral": {"s_noise": 0.9}, "dpm_2": {"grid": "logSNR"},
           "dpmpp_2s_ancestral": {"eta": 0.5}, "dpmpp_sde": {"r": 0.4}, "dpmpp_2m_sde": {"eta": 0.8},
           "dpmpp_3m_sde": {"eta": 0.8}, "lms": {"order": 2}, "edm_stochastic": {"S_tmin": 1.0}}


def _run(ck, name, options, nfe, x_T, seed=0):
    noise = SampleNoise(seed, range(x_T.shape[0]), x_T.shape[1:])
    with ck.model.counting() as c:
        out = samplers.get(name, t_end=T_END, **options).sample(ck.model, x_T, nfe, noise=noise)
    return out, c.n


@pytest.fixture(scope="module")
def x16():
    return initial_noise(0, range(8), (16,))


# -- 1. parity with the references, fed the same noise ---------------------------------------------------------------
@pytest.mark.parametrize("case", KD["cases"], ids=lambda c: f"{c['kdiffusion']}-{c['nfe']}-{c['options']}")
def test_matches_kdiffusion(gmm16d, x16, case):
    out, n = _run(gmm16d, case["sampler"], case["options"], case["nfe"], x16)
    assert n == case["nfe"]
    assert float((out - torch.tensor(case["x"], dtype=torch.float64)).abs().max()) < PARITY_ATOL


@pytest.mark.parametrize("case", EDM["cases"], ids=lambda c: f"edm-{c['num_steps']}-{c['options']['S_churn']}")
def test_matches_edm(gmm16d, x16, case):
    out, n = _run(gmm16d, "edm_stochastic", case["options"], case["nfe"], x16)
    assert n == case["nfe"]
    assert float((out - torch.tensor(case["x"], dtype=torch.float64)).abs().max()) < PARITY_ATOL


def _first_cases():
    seen, out = set(), []
    for c in KD["cases"]:
        if c["sampler"] not in seen:
            seen.add(c["sampler"])
            out.append(c)
    return out + [{**EDM["cases"][0], "sampler": "edm_stochastic"}]


@pytest.mark.parametrize("case", _first_cases(), ids=lambda c: c["sampler"])
def test_changed_option_or_seed_leaves_the_reference(gmm16d, x16, case):
    ref = torch.tensor(case["x"], dtype=torch.float64)
    out, _ = _run(gmm16d, case["sampler"], {**case["options"], **CHANGED[case["sampler"]]}, case["nfe"], x16)
    assert float((out - ref).abs().max()) > 1e-4
    if samplers.get(case["sampler"], **case["options"]).stochastic:
        out, _ = _run(gmm16d, case["sampler"], case["options"], case["nfe"], x16, seed=1)
        assert float((out - ref).abs().max()) > 1e-4


# -- 2. distribution metrics approach the exact ones as NFE grows (gmm-2d) -------------------------------------------
N_DIST = 2000


@pytest.fixture(scope="module")
def dist2d():
    from bench.metrics.moments import frechet_to_moments, mean_loglik
    ck = pretrained.load("gmm-2d")
    mix = ck.extras["mixture"]
    mean, cov = mix.moments()
    exact_ll = mean_loglik(mix.sample(200_000, seed=2), mix.log_prob)  # E_p log p, Monte Carlo error ~3e-3
    x_T = initial_noise(0, range(N_DIST), (2,))

    def metrics(name, options, nfe):
        out, _ = _run(ck, name, {"denoise_to_zero": True, **options}, nfe, x_T)
        return frechet_to_moments(out, mean, cov), mean_loglik(out, mix.log_prob)
    return metrics, exact_ll


@pytest.mark.parametrize("name", STOCHASTIC)
def test_distribution_approaches_the_exact_one(dist2d, name):
    # Measured (2000 samples; exact samples: FD 2e-4, mean log p within 0.04 of E log p = -0.312): at 4 steps FD
    # 0.02..41 and mean log p -2..-2070; at 128 steps FD <= 2.5e-3 and mean log p -0.35..-0.22.
    metrics, exact_ll = dist2d
    per = PER_STEP.get(name, 1)
    fd_few, ll_few = metrics(name, {}, 4 * per + 1)
    fd_many, ll_many = metrics(name, {}, 128 * per + 1)
    print(f"{name}: FD {fd_few:.4f} -> {fd_many:.4f}, mean log p {ll_few:.3f} -> {ll_many:.3f} (exact {exact_ll:.3f})")
    assert fd_many < 5e-3 and abs(ll_many - exact_ll) < 0.15
    assert fd_few > fd_many and abs(ll_few - exact_ll) > abs(ll_many - exact_ll)


def test_wrong_noise_scale_misses_the_exact_distribution(dist2d):
    """The distribution test can fail: 0.7 times the ancestral noise concentrates the samples (mean log p +0.18)."""
    metrics, exact_ll = dist2d
    _, ll = metrics("euler_ancestral", {"s_noise": 0.7}, 129)
    assert abs(ll - exact_ll) > 0.3


# -- 3. eta = 0 (the ODE samplers) reach their order on gmm-16d's exact ODE solution ---------------------------------
# Measured slopes on the karras grid, steps 48 -> 96 -> 192: euler_ancestral 0.98, 0.99; dpm_2 2.03, 2.02;
# dpmpp_2s_ancestral / dpmpp_sde 1.97, 1.98; dpmpp_2m_sde midpoint 2.06, 2.04, heun 2.10, 2.05; dpmpp_3m_sde 1.89,
# 1.76 (karras) / 2.22, 2.04 (logSNR): global order 2, its first-order warm-up step is never repaired; EDM 2.04, 2.02.
ORDER_CASES = [("euler_ancestral", {"eta": 0.0}, 1), ("dpm_2", {}, 2), ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
               ("dpmpp_sde", {"eta": 0.0}, 2), ("dpmpp_2m_sde", {"eta": 0.0}, 2),
               ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2),
               ("dpmpp_3m_sde", {"eta": 0.0, "grid": "logSNR"}, 2), ("edm_stochastic", {"S_churn": 0.0}, 2)]


@pytest.fixture(scope="module")
def oracle16():
    ck = pretrained.load("gmm-16d")
    x_T = initial_noise(1, range(64), (16,))
    return ck, x_T, ck.reference_solution(x_T, T_END)


@pytest.mark.parametrize("name,options,order", ORDER_CASES, ids=lambda v: str(v))
def test_eta_zero_order_of_convergence(oracle16, name, options, order):
    ck, x_T, exact = oracle16
    steps = [48, 96, 192]
    errs = [(_run(ck, name, options, s * PER_STEP.get(name, 1), x_T)[0] - exact).norm(dim=1).median().item()
            for s in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    print(f"{name} {options}: slope {slope:.2f}, errors {errs}")
    assert abs(slope - order) <= 0.3


def test_eta_zero_is_deterministic_and_matches_the_ode_samplers(gmm16d, x16):
    """eta = 0: no noise drawn; dpmpp_sde (r = 1/2) and dpmpp_2s_ancestral are then the same DPM-Solver++(2S)."""
    for name in ("euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        assert not samplers.get(name, eta=0.0).stochastic
    a = samplers.get("dpmpp_sde", eta=0.0).sample(gmm16d.model, x16, 10)
    b = samplers.get("dpmpp_2s_ancestral", eta=0.0).sample(gmm16d.model, x16, 10)
    assert float((a - b).abs().max()) < 1e-12
    # Euler in rho is DDIM on the same grid.
    c = samplers.get("euler_ancestral", eta=0.0).sample(gmm16d.model, x16, 7)
    d = samplers.get("ddim", grid="karras").sample(gmm16d.model, x16, 7)
    assert float((c - d).abs().max()) < 1e-12


# -- 4. NFE accounting and invariances -------------------------------------------------------------------------------
ALL = STOCHASTIC + ["dpm_2", "lms"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ending", [False, True])
def test_counted_nfe_is_the_budget(gmm2d, name, ending):
    opt = {"to_zero" if name == "lms" else "denoise_to_zero": ending}
    s = samplers.get(name, t_end=T_END, **opt)
    x = initial_noise(0, range(3), (2,))
    accepted = 0
    for nfe in range(1, 16):
        try:
            s.check_nfe(nfe)
        except UnsupportedNFE:
            start = gmm2d.model.nfe
            with pytest.raises(UnsupportedNFE):
                s.sample(gmm2d.model, x, nfe, noise=SampleNoise(0, range(3), (2,)))
            assert gmm2d.model.nfe == start
            continue
        accepted += 1
        out, n = _run(gmm2d, name, opt, nfe, x)
        assert n == nfe and torch.isfinite(out).all()
    per = PER_STEP.get(name, 1)
    assert accepted == ((15 - int(ending)) // per if name != "lms" else 15 - int(ending))


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2", "edm_stochastic"])
@pytest.mark.parametrize("dz", [False, True])
def test_afs_saves_one_evaluation(gmm2d, name, dz):
    s, s_afs = (samplers.get(name, t_end=T_END, denoise_to_zero=dz, afs=afs) for afs in (False, True))
    x = initial_noise(0, range(3), (2,))
    for nfe in range(1, 14):
        try:
            s_afs.check_nfe(nfe)
        except UnsupportedNFE:
            continue
        s.check_nfe(nfe + 1)  # the same grid without AFS costs one more
        out, n = _run(gmm2d, name, {"denoise_to_zero": dz, "afs": True}, nfe, x)
        assert n == nfe and torch.isfinite(out).all()


@pytest.mark.parametrize("name", STOCHASTIC)
def test_batch_invariance_and_seeds(gmm16d, name):
    nfe = 2 * 6 + 1 if PER_STEP.get(name, 1) == 2 else 10
    opt = {"denoise_to_zero": True} if nfe % 2 else {}
    big, _ = _run(gmm16d, name, opt, nfe, initial_noise(3, range(16), (16,)), seed=3)
    small, _ = _run(gmm16d, name, opt, nfe, initial_noise(3, range(4), (16,)), seed=3)
    assert float((big[:4] - small).abs().max()) <= 1e-12
    # Samples 4..7 on their own (another batch, same indices) equal rows 4..7 of the big batch.
    idx = range(4, 8)
    s = samplers.get(name, t_end=T_END, **opt)
    part = s.sample(gmm16d.model, initial_noise(3, idx, (16,)), nfe, noise=SampleNoise(3, idx, (16,)))
    assert float((big[4:8] - part).abs().max()) <= 1e-12
    other, _ = _run(gmm16d, name, opt, nfe, initial_noise(3, range(4), (16,)), seed=4)
    assert float((other - small).abs().max()) > 1e-3


@pytest.mark.parametrize("name", STOCHASTIC)
def test_float32_state(gmm16d, x16, name):
    nfe = 12 if PER_STEP.get(name, 1) == 2 else 10
    a, _ = _run(gmm16d, name, {}, nfe, x16)
    b, _ = _run(gmm16d, name, {}, nfe, x16.float())
    assert b.dtype == torch.float32 and float((a - b.double()).abs().max()) < 1e-3


def test_stochastic_needs_noise(gmm16d, x16):
    with pytest.raises(ValueError, match="stochastic"):
        samplers.get("euler_ancestral").sample(gmm16d.model, x16, 10)


def test_edm_churn_above_T_is_unsupported(gmm16d):
    # gmm-16d's rho(T) is about 152: churning there would need t > T.
    s = samplers.get("edm_stochastic", S_tmax=1000.0, t_end=T_END)
    with pytest.raises(Unsupported, match="S_tmax"):
        s.check_model(gmm16d.model, 10)
    samplers.get("edm_stochastic", t_end=T_END).check_model(gmm16d.model, 10)


@pytest.mark.parametrize("name,options", [("euler_ancestral", {"eta": 1.5}), ("dpmpp_sde", {"r": 1.0}),
                                          ("dpmpp_2m_sde", {"solver_type": "euler"}), ("dpmpp_3m_sde", {"eta": -0.1}),
                                          ("edm_stochastic", {"S_tmin": 2.0, "S_tmax": 1.0}),
                                          ("edm_stochastic", {"S_noise": -1.0}), ("dpm_2", {"eta": 0.5})])
def test_bad_options_raise(name, options):
    with pytest.raises(ValueError):
        samplers.get(name, **options)

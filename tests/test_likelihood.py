"""Likelihood estimators: exact log p of the analytic mixtures, Hutchinson's bias, the VLB as a bound, convergence
of the fixed-step solvers, bits/dim units, invariance to batching and seeds, NFE accounting, option checks."""
import math

import pytest
import torch

import samplers
from bench.metrics.nll import NllAccumulator, nll_metrics
from pretrained.gmm import GaussianMixture
from samplers import likelihood as L
from samplers.schedules import VPLinear


def _nll(ck, name, x, nfe, seed=0, indices=None, **kw):
    levels = kw.pop("levels", None)
    data_range = kw.pop("data_range", L.DATA_RANGE)
    indices = range(len(x)) if indices is None else indices
    return L.get_estimator(name, **kw).estimate(ck.model, x, nfe, seed=seed, indices=indices, levels=levels,
                                                data_range=data_range)


def _quantize(x, levels, lo, hi):
    w = (hi - lo) / (levels - 1)
    return lo + w * torch.round((x.clamp(lo, hi) - lo) / w)


def _binned_nll_bits(mix: GaussianMixture, x, width):
    """-log2 P(x's bin) / D under the mixture at t = 0: the exact probability of the discretised data."""
    lo = (x[:, None, :] - width / 2 - mix.mu[None]) / mix.s2.sqrt()[None]
    hi = (x[:, None, :] + width / 2 - mix.mu[None]) / mix.s2.sqrt()[None]
    log_mass = torch.log(torch.special.ndtr(hi) - torch.special.ndtr(lo)).sum(-1) + torch.log(mix.w)[None]
    return -torch.logsumexp(log_mass, -1) / (x.shape[1] * math.log(2))


# -- units ---------------------------------------------------------------------------------------------
def test_bits_per_dim_offset():
    assert L.dequantization_offset_bits(17) == pytest.approx(3.0, abs=1e-15)           # digits: width 2/16
    assert L.dequantization_offset_bits(256) == pytest.approx(math.log2(127.5))          # score_sde's 7 uses 2/256
    assert L.dequantization_offset_bits(256, (0.0, 255.0)) == pytest.approx(0.0)
    for levels in (2, 17, 256):
        # A density uniform on the dequantisation cube [lo - w/2, hi + w/2]^D: p = (L w)^-D, so bpd = log2 L.
        w, dim = L.bin_width(levels), 64
        logp = torch.tensor(-dim * math.log(levels * w), dtype=torch.float64)
        assert float(L.bits_per_dim(logp, dim, levels)) == pytest.approx(math.log2(levels), abs=1e-12)
        assert float(L.bits_per_dim(logp, dim)) == pytest.approx(math.log2(levels * w), abs=1e-12)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="levels"):
            L.bin_width(bad)
    with pytest.raises(ValueError, match="data_range"):
        L.bin_width(17, (1.0, -1.0))


def test_dequantised_ode_is_a_bound_on_the_binned_mixture(gmm2d):
    """E_u log p(x + u) <= log P(bin): the dequantised estimate with its offset sits just above the exact bits."""
    mix, levels, rng = gmm2d.extras["mixture"], 31, (-1.5, 1.5)
    x = _quantize(gmm2d.real_data(200, 3), levels, *rng)
    exact = _binned_nll_bits(mix, x, L.bin_width(levels, rng))
    out = _nll(gmm2d, "ode_rk4", x, 80, divergence="exact", n_dequant=4, levels=levels, data_range=rng, t_eps=1e-5)
    gap = out["nll_bpd"] - exact
    se = float(gap.std()) / math.sqrt(len(gap))
    assert -3 * se < float(gap.mean()) < 0.06


# -- the ODE estimator ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gmm-2d", "gmm-16d"])
def test_ode_exact_divergence_matches_exact_log_prob(name, monkeypatch):
    import pretrained
    ck = pretrained.load(name)
    mix, x = ck.extras["mixture"], ck.real_data(16, 1)
    dim = x.shape[1]
    x_T = []
    prior = L.standard_normal_logprob
    monkeypatch.setattr(L, "standard_normal_logprob", lambda z: x_T.append(z) or prior(z))
    out = _nll(ck, "ode_dopri5", x, None, divergence="exact", rtol=1e-6, atol=1e-6, t_eps=1e-5)
    per_dim = (out["nll_nats"] + mix.log_prob(x, t=1e-5)) / dim
    # The N(0, I) prior against the true p_T (alpha_T = 6.6e-3) leaves up to ~1e-2 nats per sample.
    assert float(per_dim.abs().max()) < 2e-3
    assert abs(float(((out["nll_nats"] + mix.log_prob(x)) / dim).mean())) < 0.01
    assert torch.allclose(out["nll_bpd"], out["nll_nats"] / (dim * math.log(2)))
    # With the exact p_T as the prior, what is left is the solver's error.
    exact_prior = out["nll_nats"] + prior(x_T[0]) - mix.log_prob(x_T[0], t=1.0)
    assert float(((exact_prior + mix.log_prob(x, t=1e-5)) / dim).abs().max()) < 2e-5


def test_hutchinson_is_unbiased_and_probes_reduce_its_spread(gmm16d):
    x = gmm16d.real_data(200, 2)
    exact = _nll(gmm16d, "ode_rk4", x, 20, divergence="exact")["nll_nats"]
    spread = {}
    for probe, n_probes in (("rademacher", 1), ("gaussian", 1), ("rademacher", 16)):
        d = _nll(gmm16d, "ode_rk4", x, 20, seed=5, probe=probe, n_probes=n_probes)["nll_nats"] - exact
        assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(len(d))
        spread[probe, n_probes] = float(d.std())
    assert spread["rademacher", 16] < 0.4 * spread["rademacher", 1]  # 1/sqrt(16) = 0.25
    assert spread["rademacher", 1] < spread["gaussian", 1]             # Rademacher has the smaller variance


def test_fixed_step_estimators_converge_to_the_adaptive_one(gmm2d):
    x = gmm2d.real_data(8, 4)
    ref = _nll(gmm2d, "ode_dopri5", x, None, divergence="exact", rtol=1e-10, atol=1e-10)["nll_nats"]
    for name, order in (("ode_euler", 1), ("ode_heun", 2), ("ode_rk4", 4)):
        err = [float((_nll(gmm2d, name, x, n, divergence="exact")["nll_nats"] - ref).abs().mean()) for n in (64, 256)]
        assert err[1] < err[0] * 4.0 ** (-order) * 2.0, (name, err)
    assert err[1] < 1e-4


def test_adaptive_in_lambda_and_in_t_agree(gmm2d):
    """The lambda ODE, sigma^2 x - sigma eps, is the schedule's ode_velocity times dt/dlambda."""
    x = gmm2d.real_data(16, 5)
    a = _nll(gmm2d, "ode_dopri5", x, None, divergence="exact", rtol=1e-8, atol=1e-8)["nll_nats"]
    b = _nll(gmm2d, "ode_dopri5", x, None, divergence="exact", rtol=1e-8, atol=1e-8, space="t")["nll_nats"]
    assert float((a - b).abs().max()) < 1e-4


def test_truncation_terms(gmm16d):
    mix, x = gmm16d.extras["mixture"], gmm16d.real_data(32, 6)
    sch, dim = gmm16d.model.schedule, x.shape[1]
    out = _nll(gmm16d, "ode_rk4", x, 64, divergence="exact", truncation="gaussian")
    # Gaussian decoder N(x; x_eps / alpha, sigma^2 / alpha^2 I) against q(x_eps | x): D log alpha_eps, exactly.
    expect = -dim * float(sch.log_alpha(sch.t_end)) / (dim * math.log(2))  # t_eps None: the schedule's end
    assert torch.allclose(out["ode_truncation_bpd"], torch.full_like(out["nll_bpd"], expect), rtol=1e-9)
    assert abs(float(((out["nll_nats"] + mix.log_prob(x)) / dim).mean())) < 0.01
    levels, rng = 41, (-2.0, 2.0)
    xq = _quantize(x, levels, *rng)
    with pytest.raises(ValueError, match="dequantization='none'"):
        L.get_estimator("ode_rk4", truncation="discrete")
    disc = _nll(gmm16d, "ode_rk4", xq, 64, divergence="exact", truncation="discrete", dequantization="none",
                levels=levels, data_range=rng)
    assert float(disc["nll_bpd"].mean()) > float(_binned_nll_bits(mix, xq, L.bin_width(levels, rng)).mean())


# -- the variational bound ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gmm-2d", "gmm-16d"])
def test_vlb_is_above_the_exact_nll(name):
    import pretrained
    ck = pretrained.load(name)
    x = ck.real_data(256, 7)
    exact = -ck.extras["mixture"].log_prob(x) / (x.shape[1] * math.log(2))
    gap = _nll(ck, "vlb_continuous", x, 32, t_eps=1e-5)["nll_bpd"] - exact
    se = float(gap.std()) / math.sqrt(len(gap))
    assert -3 * se < float(gap.mean()) < 0.3
    # Discrete time: T steps bound the continuous-time VLB from above, tighter as T grows (nested logSNR grids).
    disc = [float((_nll(ck, "vlb_discrete", x, T, t_eps=1e-5)["nll_bpd"] - exact).mean()) for T in (10, 100)]
    assert disc[0] > disc[1] > float(gap.mean()) - 3 * se


def test_vlb_discrete_decoder_and_gamma_prime(gmm2d):
    sch = gmm2d.model.schedule
    t = torch.tensor([1e-3, 0.3, 0.9], dtype=torch.float64)
    fd = (L.gamma(sch, t + 1e-6) - L.gamma(sch, t - 1e-6)) / 2e-6
    assert torch.allclose(L.gamma_prime(sch, t), fd, rtol=1e-6)
    # The decoder at tiny noise puts all mass on the level of z; at huge noise it is uniform over the levels.
    k = torch.tensor([[0, 3, 16]])
    z = -1.0 + 0.125 * k.double()
    assert float(L.discrete_decoder_logprob(k, z, torch.tensor(-20.0, dtype=torch.float64), 17)) > -1e-9
    assert float(L.discrete_decoder_logprob(k, z * 0, torch.tensor(30.0, dtype=torch.float64), 17)) == \
        pytest.approx(-3 * math.log(17), rel=1e-6)


# -- invariance and accounting ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,nfe,kw", [
    ("ode_rk4", 8, {"n_probes": 2, "n_dequant": 2}), ("ode_heun", 6, {"truncation": "gaussian"}),
    ("vlb_continuous", 5, {}), ("vlb_discrete", 5, {}),
])
def test_per_sample_estimates_do_not_depend_on_batching(gmm16d, name, nfe, kw):
    levels, rng = 33, (-2.0, 2.0)
    x = _quantize(gmm16d.real_data(7, 8), levels, *rng)
    run = lambda idx, seed=3: _nll(gmm16d, name, x[idx], nfe, seed=seed, indices=idx, levels=levels, data_range=rng,
                                   **kw)
    whole = run(list(range(7)))
    parts = [run([6, 0, 2]), run([1, 5]), run([3, 4])]
    acc = NllAccumulator()
    for idx, out in zip(([6, 0, 2], [1, 5], [3, 4]), parts):
        acc.update(out, idx)
    merged = NllAccumulator.merge([acc.state()])
    for key, v in whole.items():
        assert torch.allclose(merged["values"][key], v, rtol=0, atol=1e-12), key
    other = run(list(range(7)), seed=4)["nll_bpd"]
    assert not torch.allclose(other, whole["nll_bpd"])


def test_nfe_is_counted_and_unsupported_budgets_raise(gmm2d):
    x = gmm2d.real_data(3, 0)
    for name, nfes in (("ode_euler", (1, 3)), ("ode_heun", (2, 6)), ("ode_rk4", (4, 12)), ("vlb_continuous", (1, 7)),
                       ("vlb_discrete", (1, 7))):
        for nfe in nfes:
            with gmm2d.model.counting() as c:
                _nll(gmm2d, name, x, nfe, n_probes=3) if name.startswith("ode") else _nll(gmm2d, name, x, nfe)
            assert c.n == nfe, (name, nfe)
    for name, nfe in (("ode_heun", 3), ("ode_rk4", 6), ("ode_rk4", 2), ("ode_euler", None), ("ode_dopri5", 10)):
        with pytest.raises(samplers.UnsupportedNFE):
            L.get_estimator(name).check_nfe(nfe)
    with gmm2d.model.counting() as c:
        _nll(gmm2d, "ode_dopri5", x, None, n_dequant=3)
    assert c.n > 6 and c.n % 6 == 2  # dopri5 (FSAL): 6 per accepted or rejected step + 2; dequant draws share a solve


@pytest.mark.parametrize("name,options,match", [
    ("ode_rk4", {"n_probes": 0}, "out of range"), ("ode_rk4", {"n_dequant": 0}, "out of range"),
    ("ode_dopri5", {"rtol": 0.0}, "out of range"), ("ode_dopri5", {"atol": -1e-5}, "out of range"),
    ("ode_dopri5", {"rtol": float("nan")}, "out of range"), ("ode_rk4", {"t_eps": "1e-3"}, "number or None"),
    ("vlb_continuous", {"t_eps": -1e-3}, "out of range"), ("ode_rk4", {"divergence": "nope"}, "not allowed"),
    ("ode_rk4", {"grid": "nope"}, "not allowed"), ("ode_rk4", {"rtol": 1e-5}, "no option"),
    ("ode_rk4", {"n_probes": 1.5}, "type int"), ("nope", {}, "unknown likelihood estimator"),
])
def test_options_are_checked_when_built(name, options, match):
    with pytest.raises(ValueError, match=match):
        L.get_estimator(name, **options)


def test_inputs_are_checked(gmm2d):
    x = gmm2d.real_data(4, 0)
    with pytest.raises(ValueError, match="not on 17 levels"):
        _nll(gmm2d, "vlb_continuous", x, 2, levels=17)
    for t_eps in (0.0, 1.0):  # T = 1: above the schedule's range, checked per schedule
        with pytest.raises(ValueError, match="t_eps"):
            _nll(gmm2d, "ode_rk4", x, 4, t_eps=t_eps)
    with pytest.raises(ValueError, match="indices"):
        _nll(gmm2d, "ode_rk4", x, 4, indices=range(3))
    frozen = gmm2d.model.replace(fn=lambda x, t: gmm2d.model.fn(x, t).detach())
    with pytest.raises(ValueError, match="no gradient"):
        L.get_estimator("ode_euler").estimate(frozen, x, 1, seed=0, indices=range(4))


def test_nll_metrics_merge_ranks_and_standard_error():
    out = lambda v: {"nll_nats": v * 2.0, "nll_bpd": v, "vlb_recon_bpd": v / 2, "vlb_prior_bpd": v * 0,
                     "vlb_diffusion_bpd": v / 2}
    v = torch.arange(10, dtype=torch.float64)
    ranks = [NllAccumulator(), NllAccumulator()]
    for r, acc in enumerate(ranks):
        idx = list(range(r, 10, 2))
        acc.update(out(v[idx]), idx)
    merged = NllAccumulator.merge([a.state() for a in ranks])
    m = nll_metrics(merged)
    assert m["nll_bpd"] == pytest.approx(4.5) and m["nll_n"] == 10
    assert m["nll_bpd_se"] == pytest.approx(float(v.std()) / math.sqrt(10))
    assert m["vlb_recon_bpd"] == pytest.approx(2.25) and "ode_flow_bpd" not in m
    assert torch.equal(merged["idx"], torch.arange(10))
    with pytest.raises(ValueError, match="more than one"):
        NllAccumulator.merge([ranks[0].state(), ranks[0].state()])


@pytest.mark.parametrize("name,kw", [("ode_euler", {}), ("ode_rk4", {"divergence": "exact", "truncation": "gaussian"}),
                                     ("vlb_continuous", {}), ("vlb_continuous", {"time_sampling": "time_uniform"}),
                                     ("vlb_discrete", {})])
@pytest.mark.parametrize("ck_name", ["gmm-16d", "gmm-16d-edm", "gmm-16d-flow"])
def test_fixed_nfe_estimators_run_on_the_state_device_and_dtype(name, kw, ck_name):
    """On the meta device any read of a value back to the host raises: none happens for continuous data."""
    import pretrained
    model = pretrained.load(ck_name, "meta").model
    for dtype in (torch.float32, torch.float64):
        x = torch.empty(5, 16, device="meta", dtype=dtype)
        out = L.get_estimator(name, **kw).estimate(model, x, 4, seed=0, indices=range(5))
        assert all(v.device.type == "meta" and v.dtype == dtype and v.shape == (5,) for v in out.values())


def test_float32_state_agrees_with_float64(gmm2d):
    x = gmm2d.real_data(8, 9)
    a = _nll(gmm2d, "ode_dopri5", x, None, divergence="exact")["nll_bpd"]
    b = _nll(gmm2d, "ode_dopri5", x.float(), None, divergence="exact")["nll_bpd"]
    assert b.dtype == torch.float32 and float((a - b.double()).abs().max()) < 1e-3


"""Likelihood estimators on every model family (VP, EDM, flow): convergence to the mixtures' exact NLL, and one value
on the three families where their log-SNR ranges coincide (the ODE in lambda on the VP-scaled state
y = xbar / sqrt(1 + rho^2) and VDM's bound in gamma are functions of lambda alone; only the prior N(0, prior_std^2 I)
of x_T and, with truncation "none", the point where p_eps is read are each family's own)."""
import json
import math

import pytest
import torch

import pretrained
import samplers
from pretrained.gmm import random_mixture, ring_2d
from samplers import likelihood as L
from samplers.schedules import EDM, FAMILIES, FlowMatching, VPLinear

VP = VPLinear()
LAM_T, LAM_END = float(VP.lambda_(VP.T)), float(VP.lambda_(VP.t_end))


class _VPWithSigmaPrior(VPLinear):
    """VP with x_T ~ N(0, sigma_T^2 I), the prior EDM and flow use: then every term is the same on all three."""

    @property
    def prior_std(self):
        return float(self.sigma(self.T))


SAME_LAMBDA = {  # equal log-SNR at T and at t_end (see tests/test_families.py)
    "vp": _VPWithSigmaPrior(),
    "edm": EDM(sigma_min=math.exp(-LAM_END), sigma_max=math.exp(-LAM_T)),
    "flow": FlowMatching(T=1 / (1 + math.exp(LAM_T)), t_end=1 / (1 + math.exp(LAM_END))),
}


# |nll - exact| per dim left by the prior N(0, sigma_T^2) (EDM: against p_T = p_0 * N(0, 80^2)) and t_eps = t_end / 100
FLOOR = {"edm": 2e-3, "flow": 5e-4}


def _est(model, name, x, nfe, seed=0, **kw):
    return L.get_estimator(name, **kw).estimate(model, x, nfe, seed=seed, indices=range(len(x)))


def _per_dim(nats, x):
    return nats / x.shape[1]


def test_every_estimator_is_registered_for_every_family():
    for name in L.available_estimators():
        assert set(L.get_estimator(name).spec.families) == set(FAMILIES), name


def test_a_family_an_estimator_is_not_written_for_is_unsupported():
    class OtherFamily(EDM):
        family = "other"

    model = random_mixture(EDM()).as_model("gmm-16d/other").replace(schedule=OtherFamily())
    x = torch.zeros(2, 16, dtype=torch.float64)
    for name in L.available_estimators():
        est = L.get_estimator(name)
        with pytest.raises(samplers.Unsupported, match="'other' schedule family"):
            est.estimate(model, x, None if est.adaptive else 4, seed=0, indices=range(2))


@pytest.mark.parametrize("family", ["vp", "edm", "flow"])
def test_t_eps_none_is_the_schedule_end(family):
    """VP: the same numbers as the former default t_eps = 1e-3, bit for bit."""
    ck = pretrained.load("gmm-2d" if family == "vp" else f"gmm-2d-{family}")
    x, sch = ck.real_data(4, 0), ck.model.schedule
    for name, nfe in (("ode_heun", 4), ("vlb_discrete", 4)):
        a, b = _est(ck.model, name, x, nfe), _est(ck.model, name, x, nfe, t_eps=sch.t_end)
        assert torch.equal(a["nll_bpd"], b["nll_bpd"]), name
    assert json.loads(L.get_estimator("ode_heun").config_json())["t_eps"] is None
    assert family != "vp" or sch.t_end == 1e-3
    for bad in (sch.T, 2 * sch.T, 0.0):  # at or above T, or sigma = 0: refused on this schedule
        with pytest.raises(ValueError, match="t_eps"):
            _est(ck.model, "ode_euler", x, 1, t_eps=bad)


# -- convergence to the exact NLL ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gmm-2d-edm", "gmm-2d-flow"])
def test_fixed_step_ode_converges_to_the_exact_nll(name):
    """Exact divergence, t_eps = t_end / 100: the error of rk4 falls with NFE to the prior's and t_eps's floor."""
    ck = pretrained.load(name)
    x = ck.likelihood_data(32)
    exact = -ck.log_prob(x)
    t_eps = ck.model.schedule.t_end / 100
    err = [float(_per_dim(_est(ck.model, "ode_rk4", x, n, divergence="exact", t_eps=t_eps)["nll_nats"] - exact, x)
                 .mean().abs()) for n in (8, 32, 128)]
    assert err[0] > err[1] > err[2] and err[2] < 2e-4, err


@pytest.mark.parametrize("name", ["gmm-16d-edm", "gmm-16d-flow", "gmm-2d-edm", "gmm-2d-flow"])
def test_adaptive_ode_converges_to_the_exact_nll(name, monkeypatch):
    """dopri5, exact divergence: with the exact p_T in place of the prior, what is left is the solver's error, which
    falls with the tolerance; against the exact log p_0 the prior N(0, sigma_T^2 I) and t_eps leave a small floor."""
    ck = pretrained.load(name)
    mix, sch, x = ck.extras["mixture"], ck.model.schedule, ck.likelihood_data(8)
    t_eps = sch.t_end / 100
    x_T, prior = [], L.prior_logprob
    monkeypatch.setattr(L, "prior_logprob", lambda z, s: x_T.append(z) or prior(z, s))
    err = {}
    for tol in (1e-2, 1e-6):
        out = _est(ck.model, "ode_dopri5", x, None, divergence="exact", t_eps=t_eps, rtol=tol, atol=tol)["nll_nats"]
        with_exact_prior = out + prior(x_T[-1], sch.prior_std) - mix.log_prob(x_T[-1], t=sch.T)
        err[tol] = float(_per_dim(with_exact_prior + mix.log_prob(x, t=t_eps), x).abs().max())
    assert err[1e-6] < 2e-5 < err[1e-2], err
    assert float(_per_dim(out + ck.log_prob(x), x).abs().max()) < FLOOR[name.split("-")[-1]]


@pytest.mark.parametrize("name", ["gmm-16d-edm", "gmm-16d-flow"])
def test_hutchinson_ode_at_the_defaults_matches_the_exact_nll(name):
    """The sweep's defaults (t_eps = the schedule's end, one Rademacher probe) within 4 standard errors + 2e-3 bits/dim."""
    ck = pretrained.load(name)
    x = ck.likelihood_data(64)
    exact = -ck.log_prob(x) / (x.shape[1] * math.log(2))
    gap = _est(ck.model, "ode_rk4", x, 64)["nll_bpd"] - exact
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / math.sqrt(len(gap)) + 2e-3, float(gap.mean())


@pytest.mark.parametrize("name", ["gmm-2d-edm", "gmm-2d-flow", "gmm-16d-edm", "gmm-16d-flow"])
def test_vlb_bounds_the_exact_nll(name):
    ck = pretrained.load(name)
    x = ck.real_data(256, 7)
    exact = -ck.log_prob(x) / (x.shape[1] * math.log(2))
    t_eps = ck.model.schedule.t_end / 100
    gap = _est(ck.model, "vlb_continuous", x, 32, t_eps=t_eps)["nll_bpd"] - exact
    se = float(gap.std()) / math.sqrt(len(gap))
    assert -3 * se < float(gap.mean()) < 0.3
    disc = [float((_est(ck.model, "vlb_discrete", x, T, t_eps=t_eps)["nll_bpd"] - exact).mean()) for T in (10, 100)]
    assert disc[0] > disc[1] > float(gap.mean()) - 3 * se


# -- one value on three families --------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gmm-2d", "gmm-16d"])
def same_lambda(request):
    make = {"gmm-2d": ring_2d, "gmm-16d": random_mixture}[request.param]
    models = {f: make(s).as_model(f"{request.param}/{f}") for f, s in SAME_LAMBDA.items()}
    return models, make(SAME_LAMBDA["vp"]).sample(6, 11)


@pytest.mark.parametrize("name,nfe,kw", [
    ("ode_euler", 5, {"truncation": "gaussian"}), ("ode_heun", 8, {"truncation": "gaussian", "n_probes": 2}),
    ("ode_rk4", 12, {"truncation": "gaussian", "divergence": "exact", "grid": "karras"}),
    ("ode_dopri5", None, {"truncation": "gaussian", "rtol": 1e-3, "atol": 1e-3}),
    ("vlb_continuous", 6, {}), ("vlb_discrete", 6, {}), ("vlb_discrete", 6, {"grid": "karras"}),
])
def test_the_estimate_is_the_same_on_the_three_families(same_lambda, name, nfe, kw):
    """At any NFE: the same lambda steps on the same state with the same draws (grids defined by the log-SNR)."""
    models, x = same_lambda
    out = {f: _est(m, name, x, nfe, seed=2, **kw) for f, m in models.items()}
    for f in ("vp", "flow"):
        gap = float((out[f]["nll_nats"] - out["edm"]["nll_nats"]).abs().max())
        assert gap < 1e-9 * x.shape[1], (f, gap)
    if name.startswith("vlb"):  # every term of the bound is a function of gamma; the ODE's terms in x are not
        for f, key in ((f, key) for f in ("vp", "flow") for key in L.VLB_TERMS):
            assert torch.allclose(out[f][key], out["edm"][key], rtol=0, atol=1e-10), (f, key)


def test_the_prior_is_the_schedules_x_T_distribution(same_lambda):
    """VP keeps score_sde's N(0, I); the same ODE with N(0, sigma_T^2 I) moves the prior term alone, by their log ratio."""
    models, x = same_lambda
    dim, s = x.shape[1], models["vp"].schedule.prior_std
    a = _est(models["vp"].replace(schedule=VPLinear()), "ode_heun", x, 8, truncation="gaussian")
    b = _est(models["vp"], "ode_heun", x, 8, truncation="gaussian")
    assert torch.equal(a["ode_flow_bpd"], b["ode_flow_bpd"]) and s < 1.0
    sq = 2 * (a["ode_prior_bpd"] * dim * math.log(2) - 0.5 * dim * math.log(2 * math.pi))  # |x_T|^2
    expect = (0.5 * dim * math.log(2 * math.pi) + dim * math.log(s) + sq / (2 * s**2)) / (dim * math.log(2))
    assert torch.allclose(b["ode_prior_bpd"], expect, rtol=1e-12, atol=0)


def test_truncation_none_reads_each_familys_own_density_at_the_data(same_lambda):
    """Without truncation the ODE evaluates p_eps at the data, the density of what the family's samplers return
    (x at t_end, scaled by alpha_eps): EDM (alpha = 1) and flow (alpha_eps = 0.99 here) differ, and agree once the
    flow starts from alpha_eps x with the Jacobian D log alpha_eps (the density of x_eps / alpha_eps)."""
    models, x = same_lambda
    sch = models["flow"].schedule
    a_eps = float(sch.alpha(sch.t_end))
    edm = _est(models["edm"], "ode_rk4", x, 16, divergence="exact")["nll_nats"]
    flow = _est(models["flow"], "ode_rk4", x, 16, divergence="exact")["nll_nats"]
    flow_scaled = _est(models["flow"], "ode_rk4", a_eps * x, 16, divergence="exact")["nll_nats"]
    assert float((flow - edm).abs().max()) > 1e-4
    assert torch.allclose(flow_scaled - x.shape[1] * math.log(a_eps), edm, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["edm", "flow"])
def test_adaptive_in_lambda_and_in_t_agree(family):
    """space='t' solves x by the schedule's drift and diffusion (no VP identity), space='lambda' the VP-scaled y."""
    ck = pretrained.load(f"gmm-2d-{family}")
    x = ck.real_data(8, 5)
    a, b = (_est(ck.model, "ode_dopri5", x, None, divergence="exact", rtol=1e-8, atol=1e-8, space=space)["nll_nats"]
            for space in ("lambda", "t"))
    assert float((a - b).abs().max()) < 1e-4


def test_the_sweep_writes_ok_rows_near_the_exact_nll_on_every_family(tmp_path):
    from bench.cli import main
    from bench.store import ResultsStore

    exact = "nll:ode_dopri5,divergence=exact,rtol=1e-6,atol=1e-6"
    assert main(["run", "--checkpoint", "gmm-2d-edm", "gmm-2d-flow", "--nfe", "8", "--seeds", "0", "--quiet",
                 "--nll-samples", "24", "--sampler", exact, "nll:ode_heun", "nll:vlb_continuous",
                 "--results", str(tmp_path)]) == 0
    df = ResultsStore(tmp_path).read()
    assert len(df) == 6 and (df["status"] == "ok").all() and df["nll_exact_bpd"].notna().all()
    adaptive = df[df["sampler"] == "nll:ode_dopri5"]
    assert ((adaptive["nll_bpd"] - adaptive["nll_exact_bpd"]).abs() < 2e-3).all()

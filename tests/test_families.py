"""Model families: one PF-ODE in three parameterisations (VP, EDM, flow) gives one trajectory in lambda.

The same mixture under a VP, an EDM and a flow schedule with equal log-SNR at the start and the end: x / alpha solves
d xbar / d rho = eps, the same ODE on all three, so a sampler written in lambda (or in xbar, rho) on a grid defined by
the log-SNR (logSNR, karras) lands on the same xbar on each, to float64 round-off, through each family's own network
output (eps, EDM's preconditioned F, the flow velocity) converted at the model boundary.
"""
import math

import pytest
import torch

import pretrained
import samplers
from pretrained.gmm import random_mixture
from samplers.schedules import EDM, FlowMatching, VPLinear

VP = VPLinear()
LAM_T, LAM_END = float(VP.lambda_(VP.T)), float(VP.lambda_(VP.t_end))
FAMILY_SCHEDULES = {
    "vp": VP,
    "edm": EDM(sigma_min=math.exp(-LAM_END), sigma_max=math.exp(-LAM_T)),
    "flow": FlowMatching(T=1 / (1 + math.exp(LAM_T)), t_end=1 / (1 + math.exp(LAM_END))),
}
# Samplers whose steps are not functions of lambda alone, with the reason (they run on every family, differently).
NOT_INVARIANT = {
    "dpm_solver_adaptive": "its error control measures x, whose scale alpha differs between families",
    **{n: "DEIS tAB extrapolates eps by a polynomial in t, whose map to lambda differs between families"
       for n in ("deis", "deis_tab1", "deis_tab2", "deis_tab3")},
}
# Options that make a sampler family-invariant: the grid, and Euler / midpoint in (xbar, rho) rather than in t.
INVARIANT_GRIDS = ("logSNR", "karras")
NFE = 8


def _models():
    return {f: random_mixture(s).as_model(f"gmm-16d/{f}") for f, s in FAMILY_SCHEDULES.items()}


def _invariant_samplers():
    out = []
    for name in samplers.available():
        spec = samplers.describe(name)
        if name.startswith("diffusers:") or spec.requires is not None or name in NOT_INVARIANT:
            continue  # VP-only adapters, students and heads (VP checkpoints), see NOT_INVARIANT
        out.append(name)
    return out


def _options(name):
    defaults = samplers.describe(name).defaults
    opts = {}
    if "grid" in defaults and defaults["grid"] not in INVARIANT_GRIDS:
        opts["grid"] = "logSNR"
    if defaults.get("space") == "t":
        opts["space"] = "rho"
    return opts


def _sample_on(name, model, nfe):
    sch = model.schedule
    z = samplers.initial_noise(0, range(6), (16,))
    xbar_T = z * float(sch.rho(sch.T)) / 1.0  # the same xbar_T = x_T / alpha_T on every family
    x_T = xbar_T * float(sch.alpha(sch.T))
    s = samplers.get(name, **_options(name))
    noise = samplers.SampleNoise(0, range(6), (16,)) if s.stochastic else None
    x = s.sample(model, x_T, nfe, noise=noise)
    return x / float(sch.alpha(sch.t_end))


def test_the_three_schedules_share_the_log_snr_range():
    for sch in FAMILY_SCHEDULES.values():
        assert float(sch.lambda_(sch.T)) == pytest.approx(LAM_T, rel=1e-12)
        assert float(sch.lambda_(sch.t_end)) == pytest.approx(LAM_END, rel=1e-12)


@pytest.mark.parametrize("name", _invariant_samplers())
def test_every_lambda_sampler_gives_the_same_point_on_every_family(name):
    models = _models()
    s = samplers.get(name, **_options(name))
    nfe = next(n for n in range(NFE, NFE + 6) if _supports(s, n))
    out = {f: _sample_on(name, m, nfe) for f, m in models.items()}
    scale = float(out["vp"].abs().max())
    assert torch.isfinite(out["vp"]).all()
    for f in ("edm", "flow"):
        assert float((out[f] - out["vp"]).abs().max()) <= 1e-9 * scale, f


def _supports(s, nfe):
    try:
        s.check_nfe(nfe)
        return True
    except samplers.Unsupported:
        return False


def test_a_time_defined_grid_is_not_invariant():
    """time_uniform places its points in t, which means another lambda on each family: the test can fail."""
    models = _models()
    x = {f: _sample_on_grid(m, "time_uniform") for f, m in models.items()}
    assert float((x["edm"] - x["vp"]).abs().max()) > 1e-3


def _sample_on_grid(model, grid):
    sch = model.schedule
    z = samplers.initial_noise(0, range(6), (16,))
    x_T = z * float(sch.rho(sch.T)) * float(sch.alpha(sch.T))
    return samplers.get("ddim", grid=grid).sample(model, x_T, NFE) / float(sch.alpha(sch.t_end))


@pytest.mark.parametrize("name", ["gmm-16d-edm", "gmm-16d-flow", "gmm-2d-edm", "gmm-2d-flow"])
def test_family_checkpoints_predict_the_exact_eps_through_their_own_output(name):
    ck = pretrained.load(name)
    model, mix = ck.model, ck.extras["mixture"]
    assert model.prediction == {"edm": "edm", "flow": "velocity"}[model.schedule.family]
    sch = model.schedule
    x = torch.randn(5, ck.data_shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (sch.T, 0.3 * sch.T, 10 * sch.t_end, sch.t_end):
        xt = x * float(sch.sigma(t))
        exact = mix.eps(xt, torch.full((5,), t, dtype=torch.float64))
        torch.testing.assert_close(model.eps(xt, t), exact, rtol=1e-10, atol=1e-12)
        x0 = (xt - float(sch.sigma(t)) * exact) / float(sch.alpha(t))
        torch.testing.assert_close(model.x0(xt, t), x0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["gmm-16d-edm", "gmm-16d-flow"])
def test_solver_error_falls_with_nfe_on_each_family(name):
    """DPM-Solver++(2M) on the logSNR grid converges to the exact oracle at second order on each family."""
    ck = pretrained.load(name)
    sch = ck.model.schedule
    x_T = samplers.initial_noise(0, range(32), (16,), std=sch.prior_std)
    ref = ck.reference_solution(x_T, sch.t_end)
    errs = [float((samplers.get("dpm_solver++_2m", lower_order_final=False).sample(ck.model, x_T, n) - ref)
                  .norm(dim=1).mean()) for n in (40, 80, 160)]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(1.7 < o < 2.3 for o in orders), (errs, orders)


def test_schedules_and_their_inverses():
    for sch in (EDM(), FlowMatching(), FlowMatching(shift=3.0)):
        t = torch.linspace(sch.t_end, sch.T, 101, dtype=torch.float64)
        lam = sch.lambda_(t)
        assert (lam[1:] < lam[:-1]).all()
        torch.testing.assert_close(sch.inverse_lambda(lam), t, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sch.unwarp(sch.warp(t / sch.T)), t / sch.T, rtol=1e-12, atol=1e-14)
        # (f, g^2) against finite differences: f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2.
        u, h = t[1:-1], 1e-6 * sch.T
        f, g2 = sch.drift_diffusion(u)
        fd_f = (sch.log_alpha(u + h) - sch.log_alpha(u - h)) / (2 * h)
        fd_s2 = (sch.sigma(u + h) ** 2 - sch.sigma(u - h) ** 2) / (2 * h)
        torch.testing.assert_close(f, fd_f, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(g2, fd_s2 - 2 * f * sch.sigma(u) ** 2, rtol=1e-5, atol=1e-8)


def test_flow_shift_is_sd3s_time_shift_on_time_grids_only():
    """SD3's shift s u / (1 + (s - 1) u) on time_uniform points; logSNR grids ignore it (defined by lambda)."""
    shifted = FlowMatching(shift=3.0)
    assert shifted.T == pytest.approx(3 * 0.999 / (1 + 2 * 0.999), rel=1e-15)  # diffusers' first shifted flow sigma
    ts = samplers.time_grid(shifted, "time_uniform", 10)
    u = torch.linspace(float(shifted.unwarp(shifted.T)), float(shifted.unwarp(shifted.t_end)), 11, dtype=torch.float64)
    torch.testing.assert_close(ts[1:-1], (3 * u / (1 + 2 * u))[1:-1], rtol=1e-14, atol=0)
    plain, shifted = FlowMatching(), FlowMatching(shift=3.0, T=0.999)
    torch.testing.assert_close(samplers.time_grid(shifted, "logSNR", 10), samplers.time_grid(plain, "logSNR", 10))


def test_bad_family_options_are_refused():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDM(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="shift > 0"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="needs a schedule with EDM's preconditioning"):
        samplers.DiffusionModel(lambda x, t: x, VPLinear(), "edm")
    ck = pretrained.load("gmm-16d-edm")
    with pytest.raises(samplers.Unsupported, match="outside the model's time range"):
        samplers.get("ddim", t_end=100.0).check_model(ck.model, 10)
    with pytest.raises(samplers.Unsupported, match="DDPM betas"):
        samplers.get("diffusers:DDIMScheduler").check_model(ck.model, 10)

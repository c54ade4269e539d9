"""Parity on the EDM and flow mixtures with the references users run, configured the same way (issue 19).

- k-diffusion 0.1.1.post1 ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m`` on gmm-16d-edm (fixture from
  tests/fixtures/generators/kdiffusion_edm.py): our ``euler`` (space rho), ``heun``, ``dpm_solver++_2m``.
- Meta flow_matching 1.0.10 ``ODESolver`` euler / midpoint on gmm-16d-flow (fixture from
  tests/fixtures/generators/flow_matching_meta.py): our ``euler`` and ``midpoint`` in t.
- diffusers' ``FlowMatchEulerDiscreteScheduler`` and ``DPMSolverMultistepScheduler`` with flow sigmas, run live
  (checked with diffusers 0.42.1, huggingface/diffusers src/diffusers/schedulers/): our ``euler`` and
  ``dpm_solver++_2m``, then one x0 evaluation for their last step to sigma = 0. diffusers keeps its sigmas and its
  state in float32, hence the looser tolerance there.
Each reference has a changed option that must move the result off it, so every parity check can fail.
"""
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

import pretrained
import samplers
from pretrained.gmm import random_mixture
from samplers.schedules import FLOW_T_MAX, FlowMatching
from parity import MISMATCH_ATOL, load_fixture, max_abs

KDIFFUSION = load_fixture("kdiffusion_edm_reference.json")
FLOW_MATCHING = load_fixture("flow_matching_reference.json")
FLOAT64_ATOL = 1e-10   # both fixtures: float64 end to end (measured at most 2e-14)
DIFFUSERS_ATOL = 2e-6  # float32 sigmas and state inside diffusers' step (measured at most 3.4e-7)
# A changed option per reference case (by its id) that must not match: the grid where the option space cannot
# differ (Euler in t and in rho are the same iterates on EDM, where alpha = 1, and on the linear flow path).
KDIFFUSION_CHANGED = {"sample_euler-10": {"grid": "logSNR"}, "sample_heun-10": {"grid": "logSNR"},
                      "sample_dpmpp_2m-5": {"lower_order_final": True}, "sample_dpmpp_2m-10": {"solver_type": "taylor"}}
FLOW_MATCHING_CHANGED = {"euler-10": {"grid": "logSNR"}, "midpoint-10": {"space": "rho"}}


def _id(case, fn):
    return f"{case[fn]}-{case['nfe']}"


def _max_diff(ck, case):
    x_T = samplers.initial_noise(0, range(8), (16,), std=ck.model.schedule.prior_std)
    with ck.model.counting() as c:
        x = samplers.get(case["sampler"], **case["options"]).sample(ck.model, x_T, case["nfe"])
    assert c.n == case["nfe"]
    return max_abs(x, case["x"])


@pytest.mark.parametrize("case", KDIFFUSION["cases"], ids=lambda c: _id(c, "kdiffusion"))
def test_matches_kdiffusion_on_the_edm_mixture(case):
    assert _max_diff(pretrained.load(KDIFFUSION["checkpoint"]), case) < FLOAT64_ATOL


@pytest.mark.parametrize("case", FLOW_MATCHING["cases"], ids=lambda c: _id(c, "method"))
def test_matches_meta_flow_matching_on_the_flow_mixture(case):
    assert _max_diff(pretrained.load(FLOW_MATCHING["checkpoint"]), case) < FLOAT64_ATOL


@pytest.mark.parametrize("fixture,key,changes", [(KDIFFUSION, "kdiffusion", KDIFFUSION_CHANGED),
                                                 (FLOW_MATCHING, "method", FLOW_MATCHING_CHANGED)],
                         ids=["kdiffusion", "flow_matching"])
def test_changed_option_does_not_match(fixture, key, changes):
    cases = {_id(c, key): c for c in fixture["cases"]}
    for name, change in changes.items():
        case = cases[name]
        changed = {**case, "options": {**case["options"], **change}}
        assert _max_diff(pretrained.load(fixture["checkpoint"]), changed) > MISMATCH_ATOL, (name, change)


# -- diffusers' flow schedulers, live ---------------------------------------------------------------------------

def _flow_model(shift: float, T: float = FLOW_T_MAX):
    """gmm-16d-flow, or the same mixture on a flow schedule with another shift / start."""
    if shift == 1.0 and T == FLOW_T_MAX:
        return pretrained.load("gmm-16d-flow").model
    return random_mixture(FlowMatching(shift=shift, T=T)).as_model(f"gmm-16d-flow/shift{shift}")


def _diffusers_loop(scheduler, model, x):
    for i, t in enumerate(scheduler.timesteps):
        # The exact velocity at the scheduler's own float sigma: DPMSolverMultistep's timesteps are int64-truncated
        # (999, 899, ...) while its update uses the float sigmas, so a model fed `t` would not be the model it steps.
        v = model(x, scheduler.sigmas[i].to(torch.float64).expand(x.shape[0]))
        x = scheduler.step(v, t, x).prev_sample
    return x


def _ours_then_x0(model, sampler, x_T, nfe, t_end):
    """Our sampler to t_end, then diffusers' last step to sigma = 0, which returns x0 = x - sigma v exactly: the
    sampler's ``denoise_to_zero`` ending (one more NFE), checked against an explicit model.x0 after it."""
    ended = samplers.get(sampler.name, **{**sampler.options, "denoise_to_zero": True}).sample(model, x_T, nfe + 1)
    assert sampler.options["t_end"] in (None, t_end) or float(sampler.options["t_end"]) == float(t_end)
    other = model.replace()  # its own NFE counter: the caller counts the ended run only
    torch.testing.assert_close(ended, other.x0(sampler.sample(other, x_T, nfe), t_end), rtol=0, atol=0)
    return ended


@pytest.mark.parametrize("shift,steps", [(1.0, 10), (1.0, 20), (3.0, 10)])
def test_flow_match_euler_matches_euler_in_t(shift, steps):
    # Custom sigmas = our time_uniform grid before the shift; the scheduler shifts them once (no double shift:
    # its sigma_min / sigma_max are not used) and appends 0.
    model = _flow_model(shift)
    sch = model.schedule
    ts = samplers.time_grid(sch, "time_uniform", steps)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=sch.unwarp(ts).tolist())
    assert float((scheduler.sigmas[:-1].to(torch.float64) - ts).abs().max()) < 1e-7  # float32 sigmas
    x_T = samplers.initial_noise(0, range(8), (16,), std=sch.prior_std)
    with model.counting() as c:
        ref = _diffusers_loop(scheduler, model, x_T)
    euler = samplers.get("euler", space="t", grid="time_uniform")
    with model.counting() as c2:
        ours = _ours_then_x0(model, euler, x_T, steps, ts[-1])
    assert c.n == c2.n == steps + 1
    assert max_abs(ours, ref) < DIFFUSERS_ATOL
    if shift != 1.0:  # the grid without the shift is another grid
        unshifted = _flow_model(1.0)
        assert max_abs(_ours_then_x0(unshifted, euler, x_T, steps, ts[-1]), ref) > MISMATCH_ATOL


@pytest.mark.parametrize("shift,steps", [(1.0, 10), (1.0, 20), (3.0, 10)])
def test_flow_dpm_solver_pp_matches_dpm_solver_pp_2m(shift, steps):
    # Its flow grid: sigmas = shift(k (1 - 1/1000) / steps), k = steps..1, uniform in the unshifted time from 0.999,
    # then 0; every step is 2M but the first and the last (final_sigmas_type "zero": first order, giving x0).
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                            algorithm_type="dpmsolver++", solver_order=2, flow_shift=shift)
    scheduler.set_timesteps(steps)
    warp = FlowMatching(shift=shift).warp
    T, t_end = float(warp(FLOW_T_MAX)), float(warp(FLOW_T_MAX / steps))
    model = _flow_model(shift, T)
    ts = samplers.time_grid(model.schedule, "time_uniform", steps - 1, t_end)
    assert float((scheduler.sigmas.to(torch.float64) - torch.cat([ts, ts.new_zeros(1)])).abs().max()) < 1e-7
    x_T = samplers.initial_noise(0, range(8), (16,), std=T)
    with model.counting() as c:
        ref = _diffusers_loop(scheduler, model, x_T)
    # Its last 2M step (to t_end) stays second order: lower_order_final=False (ours lowers it below 10 steps).
    dpm = samplers.get("dpm_solver++_2m", grid="time_uniform", lower_order_final=False, t_end=t_end)
    with model.counting() as c2:
        ours = _ours_then_x0(model, dpm, x_T, steps - 1, t_end)
    assert c.n == c2.n == steps
    assert max_abs(ours, ref) < DIFFUSERS_ATOL
    if steps - 1 < 10:
        lowered = samplers.get("dpm_solver++_2m", grid="time_uniform", lower_order_final=True, t_end=t_end)
        assert max_abs(_ours_then_x0(model, lowered, x_T, steps - 1, t_end), ref) > MISMATCH_ATOL


# -- midpoint: order of convergence and NFE ----------------------------------------------------------------------

@pytest.mark.parametrize("space", ["t", "rho"])
def test_midpoint_is_second_order_on_the_flow_mixture(space):
    ck = pretrained.load("gmm-2d-flow")
    t_end = 0.05  # the exact solution to 0.05 costs a quarter of the one to t_end = 1e-3 (stiff near data)
    x_T = samplers.initial_noise(0, range(4), (2,), std=ck.model.schedule.prior_std)
    ref = _oracle(ck, x_T, t_end)
    nfes = [64, 128, 256]
    errs = [max_abs(samplers.get("midpoint", space=space, t_end=t_end).sample(ck.model, x_T, n), ref) for n in nfes]
    assert np.polyfit(np.log(nfes), np.log(errs), 1)[0] == pytest.approx(-2.0, abs=0.3)


_ORACLES = {}


def _oracle(ck, x_T, t_end):
    key = (ck.name, t_end)
    if key not in _ORACLES:
        _ORACLES[key] = ck.reference_solution(x_T, t_end)
    return _ORACLES[key]


def test_midpoint_spends_two_evaluations_per_step():
    model = pretrained.load("gmm-2d-flow").model
    s = samplers.get("midpoint")
    for nfe in (1, 3, 7):
        with pytest.raises(samplers.UnsupportedNFE, match="even NFE"):
            s.check_nfe(nfe)
    x_T = samplers.initial_noise(0, range(3), (2,))
    for nfe in (2, 4, 10):
        with model.counting() as c:
            s.sample(model, x_T, nfe)
        assert c.n == nfe

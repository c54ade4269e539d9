"""DPM-Solver / DPM-Solver++: parity with the official reference, order of convergence, NFE accounting, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrained
import samplers
from samplers import UnsupportedNFE

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "dpm_solver_reference.json").read_text())
PRESETS = ["dpm_solver_fast", "dpm_solver_2", "dpm_solver_3", "dpm_solver_2m", "dpm_solver_3m", "dpm_solver++_2s",
           "dpm_solver++_2m", "dpm_solver++_3m"]
PARITY_ATOL = 1e-9           # fixed-step: measured <= 7e-11 (fixture values have 12 significant digits)
ADAPTIVE_ATOL = 1e-6         # adaptive: the reference rounds its step-size factor to float32; measured <= 7e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is ~5x faster than two on a shared machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _case_id(case):
    return "-".join(f"{v}" for v in case["config"].values())


def _run(name, nfe, options, model, x):
    with model.counting() as count:
        out = samplers.get(name, **options).sample(model, x, nfe)
    return out, count.n


@pytest.fixture(scope="module")
def gmm16():
    ck = pretrained.load("gmm-16d")
    return ck, samplers.initial_noise(0, range(8), (16,))


def _recording_model(ck):
    """gmm-16d's exact eps behind a DiffusionModel that records the time of every call."""
    calls = []

    def fn(x, t):
        calls.append(float(t[0]))
        return ck.extras["mixture"].eps(x, t)
    return samplers.DiffusionModel(fn, ck.model.schedule, "eps", data_shape=(16,), net_dtype=torch.float64), calls


# -- 1. parity with LuChengTHU/dpm-solver dpm_solver_pytorch.py (float64) -----------------------------------------
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=_case_id)
def test_parity_with_reference(case, gmm16):
    ck, x_T = gmm16
    cfg = dict(case["config"])
    name, nfe = cfg.pop("sampler"), cfg.pop("nfe")
    model, calls = _recording_model(ck)
    out, n = _run(name, nfe, cfg, model, x_T)
    ref = torch.tensor(case["output"], dtype=torch.float64)
    tol = ADAPTIVE_ATOL if name == "dpm_solver_adaptive" else PARITY_ATOL
    assert (out - ref).abs().max().item() <= tol
    assert n == case["nfe_counted"]
    if name == "dpm_solver_adaptive":
        # Every try evaluates the model first at its start s; distinct starts = accepted steps.
        assert len(set(calls[::cfg["order"]])) == case["accepted_steps"]


def _fixture_case(**match):
    return next(c for c in FIXTURE["cases"] if all(c["config"].get(k) == v for k, v in match.items()))


@pytest.mark.parametrize("change", [{"order": 2}, {"lower_order_final": False}, {"grid": "time_uniform"},
                                    {"solver_type": "taylor"}, {"method": "singlestep"}])
def test_parity_detects_a_wrong_configuration(change, gmm16):
    ck, x_T = gmm16
    case = _fixture_case(sampler="dpm_solver++", method="multistep", order=3, nfe=6, grid="logSNR",
                         lower_order_final=True, thresholding=None)
    cfg = {k: v for k, v in case["config"].items() if k not in ("sampler", "nfe")}
    out, _ = _run("dpm_solver++", 6, {**cfg, **change}, ck.model, x_T)
    assert (out - torch.tensor(case["output"], dtype=torch.float64)).abs().max().item() > 1e-4


def test_lower_order_final_threshold_is_the_reference_code_s(gmm16):
    """The reference lowers final orders only when steps < 10: at 10 steps the flag changes nothing."""
    ck, x_T = gmm16
    case = _fixture_case(sampler="dpm_solver", method="multistep", order=3, nfe=10, grid="logSNR")
    out, _ = _run("dpm_solver", 10, {"method": "multistep", "order": 3, "lower_order_final": False}, ck.model, x_T)
    assert (out - torch.tensor(case["output"], dtype=torch.float64)).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_match_the_reference(preset, gmm16):
    ck, x_T = gmm16
    spec = samplers.describe(preset)
    opts = {**spec.defaults, **spec.fixed}
    cases = [c for c in FIXTURE["cases"] if c["config"]["sampler"] == spec.base and "thresholding" not in c["config"]
             and all(opts[k] == v for k, v in c["config"].items() if k not in ("sampler", "nfe"))]
    assert cases, f"no reference case for {preset}"
    for c in cases:
        out, n = _run(preset, c["config"]["nfe"], {}, ck.model, x_T)
        assert (out - torch.tensor(c["output"], dtype=torch.float64)).abs().max().item() <= PARITY_ATOL
        assert n == c["config"]["nfe"]


# -- 2. order of convergence against the exact ODE oracle ----------------------------------------------------------
# Checkpoint.reference_solution (dopri8 at tol 1e-10) is itself off by ~1e-7 (median L2, measured against tol 1e-13),
# so errors are kept >= 5e-7: orders <= 2 on 48..384 steps, order 3 (which reaches 1e-7 near 150 steps) on 24..96.
CONV_STEPS = {1: [48, 96, 192, 384], 2: [48, 96, 192, 384], 3: [24, 32, 48, 64, 96]}
# (base, method, order, expected global order). Multistep order 3 starts with one first-order and one second-order
# step: the O(h^2) local error of that first step is never repaired, so its global order is 2 (measured 1.9-2.1).
CONV_CASES = [("dpm_solver", "singlestep_fixed", 1, 1), ("dpm_solver", "singlestep_fixed", 2, 2),
              ("dpm_solver", "singlestep_fixed", 3, 3), ("dpm_solver", "multistep", 2, 2),
              ("dpm_solver", "multistep", 3, 2), ("dpm_solver++", "singlestep_fixed", 2, 2),
              ("dpm_solver++", "singlestep_fixed", 3, 3), ("dpm_solver++", "multistep", 2, 2),
              ("dpm_solver++", "multistep", 3, 2)]


@pytest.fixture(scope="module", params=["gmm-2d", "gmm-16d"])
def oracle(request):
    ck = pretrained.load(request.param)
    x_T = samplers.initial_noise(1, range(64), ck.data_shape)
    return ck, x_T, ck.reference_solution(x_T, samplers.VP_T_END)


@pytest.mark.parametrize("base,method,order,expected", CONV_CASES, ids=lambda v: str(v))
def test_order_of_convergence(base, method, order, expected, oracle):
    ck, x_T, exact = oracle
    errs, steps_list = [], CONV_STEPS[expected]
    for steps in steps_list:
        nfe = steps * order if method == "singlestep_fixed" else steps
        out = samplers.get(base, method=method, order=order, grid="logSNR").sample(ck.model, x_T, nfe)
        errs.append((out - exact).norm(dim=1).median().item())
    slope = -np.polyfit(np.log(steps_list), np.log(errs), 1)[0]
    print(f"{ck.name} {base} {method} order {order}: slope {slope:.2f}, errors {errs}")
    assert min(errs) > 5e-7
    assert abs(slope - expected) <= 0.3


# -- 3. accounting and invariance ----------------------------------------------------------------------------------
# Every preset on NFE 1..50, and every (base, method, order) on NFE 1..30.
ACCOUNTING = [(p, {}, 50) for p in PRESETS] + [(b, {"method": m, "order": o}, 30) for b in ("dpm_solver", "dpm_solver++")
                                               for m in ("singlestep", "singlestep_fixed", "multistep") for o in (1, 2, 3)]


@pytest.mark.parametrize("name,options,max_nfe", ACCOUNTING, ids=lambda v: str(v))
def test_counted_nfe_is_the_budget(name, options, max_nfe):
    # A cheap linear eps model: only the solver's bookkeeping is under test.
    model = samplers.DiffusionModel(lambda x, t: 0.3 * x, samplers.VPLinear(), "eps", data_shape=(2,),
                                    net_dtype=torch.float64)
    x_T = samplers.initial_noise(0, range(4), (2,))
    sampler = samplers.get(name, **options)
    accepted = 0
    for nfe in range(1, max_nfe + 1):
        start = model.nfe
        try:
            sampler.check_nfe(nfe)
        except UnsupportedNFE:
            with pytest.raises(UnsupportedNFE):
                sampler.sample(model, x_T, nfe)
            assert model.nfe == start  # rejected before any model call
            continue
        accepted += 1
        out, n = _run(name, nfe, options, model, x_T)
        assert n == nfe and torch.isfinite(out).all()
    fixed = sampler.options["method"] == "singlestep_fixed"
    assert accepted == (max_nfe // sampler.options["order"] if fixed else max_nfe)


def test_singlestep_fixed_rejects_indivisible_nfe():
    with pytest.raises(UnsupportedNFE, match="multiple of 3"):
        samplers.get("dpm_solver_3").check_nfe(10)
    with pytest.raises(UnsupportedNFE):
        samplers.get("dpm_solver_2m").check_nfe(0)


@pytest.mark.parametrize("name,options", [(p, {}) for p in PRESETS]
                         + [("dpm_solver++", {"thresholding": "dynamic", "threshold_ratio": 0.9})])
def test_batch_invariance(name, options):
    ck = pretrained.load("gmm-16d")
    big, small = samplers.initial_noise(3, range(16), (16,)), samplers.initial_noise(3, range(4), (16,))
    s = samplers.get(name, **options)
    assert (s.sample(ck.model, big, 12)[:4] - s.sample(ck.model, small, 12)).abs().max().item() <= 1e-12


def test_adaptive_reports_its_real_nfe(gmm16):
    ck, x_T = gmm16
    with pytest.raises(UnsupportedNFE):
        samplers.get("dpm_solver_adaptive").sample(ck.model, x_T, 10)
    model, calls = _recording_model(ck)
    out, n = _run("dpm_solver_adaptive", None, {"order": 2}, model, x_T)
    accepted = len(set(calls[::2]))
    # Two evaluations per try, rejected tries included.
    assert n == len(calls) and n % 2 == 0 and n > 2 * accepted and torch.isfinite(out).all()


# -- 4. bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,allowed", [
    ("dpm_solver", {"method": "adaptive"}, "multistep"),
    ("dpm_solver", {"order": 4}, "[1, 2, 3]"),
    ("dpm_solver", {"solver_type": "heun"}, "taylor"),
    ("dpm_solver", {"thresholding": "dynamic"}, "solver_type"),   # noise prediction has no thresholding
    ("dpm_solver++", {"thresholding": "static"}, "clip"),
    ("dpm_solver++", {"grid": "cosine"}, "logSNR"),
    ("dpm_solver_adaptive", {"order": 1}, "[2, 3]"),
    ("dpm_solver_adaptive", {"prediction": "v"}, "data"),
    ("dpm_solver_2m", {"order": 3}, "dpm_solver"),                # a preset's fixed option
])
def test_bad_options_raise_naming_allowed_values(name, options, allowed):
    with pytest.raises(ValueError, match=allowed.replace("[", r"\[").replace("]", r"\]")):
        samplers.get(name, **options)


@pytest.mark.parametrize("name,options", [("dpm_solver++", {"threshold_ratio": 1.5}),
                                          ("dpm_solver_adaptive", {"theta": 0.0})])
def test_bad_values_raise_before_sampling(name, options):
    ck = pretrained.load("gmm-2d")
    start = ck.model.nfe
    with pytest.raises(ValueError):
        samplers.get(name, **options).sample(ck.model, samplers.initial_noise(0, range(2), (2,)),
                                             None if name == "dpm_solver_adaptive" else 6)
    assert ck.model.nfe == start

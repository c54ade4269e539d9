"""iPNDM / variable-step iPNDM (diff-sampler) and k-diffusion's lms: parity with the references, order of convergence
on gmm-16d's exact ODE solution, the analytic first step (AFS), the final denoising step, NFE accounting. The
diff-sampler fixture also holds its euler / heun / dpm_2 samplers with AFS (our euler_ancestral eta 0, edm_stochastic
S_churn 0, dpm_2)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrained
import samplers
from samplers import UnsupportedNFE, initial_noise

DIFF = json.loads((Path(__file__).parent / "fixtures" / "diff_sampler_reference.json").read_text())
PARITY_ATOL = 1e-10  # float64 on both sides: measured <= 3e-14
T_END = 1e-3
CHANGED = {"ipndm": {"max_order": 2}, "ipndm_v": {"variant": "textbook"}}


@pytest.fixture(scope="module")
def x16():
    return initial_noise(0, range(8), (16,))


def _run(ck, name, options, nfe, x_T):
    with ck.model.counting() as c:
        out = samplers.get(name, t_end=T_END, **options).sample(ck.model, x_T, nfe)
    return out, c.n


@pytest.mark.parametrize("case", DIFF["cases"], ids=lambda c: f"{c['function']}-{c['steps']}-{c['options']}")
def test_matches_diff_sampler(gmm16d, x16, case):
    out, n = _run(gmm16d, case["sampler"], case["options"], case["nfe"], x16)
    assert n == case["nfe"]  # diff-sampler's accounting: steps - afs + denoise_to_zero
    ref = torch.tensor(case["x"], dtype=torch.float64)
    assert float((out - ref).abs().max()) < PARITY_ATOL
    change = CHANGED.get(case["sampler"], {"grid": "logSNR"})
    changed, _ = _run(gmm16d, case["sampler"], {**case["options"], **change}, case["nfe"], x16)
    if case["options"].get("max_order", 4) > 2:  # official and textbook agree up to order 2
        assert float((changed - ref).abs().max()) > 1e-4


def test_textbook_ipndm_v_is_lms_and_official_agrees_up_to_order_2(gmm16d, x16):
    """Variable-step AB in rho is k-diffusion's lms; diff-sampler's closed form is right at order 2, not at 3-4."""
    for nfe in (5, 10):
        a = samplers.get("ipndm_v").sample(gmm16d.model, x16, nfe)
        b = samplers.get("lms").sample(gmm16d.model, x16, nfe)
        assert float((a - b).abs().max()) < 1e-12
    a = samplers.get("ipndm_v", max_order=2).sample(gmm16d.model, x16, 10)
    b = samplers.get("ipndm_v", max_order=2, variant="official").sample(gmm16d.model, x16, 10)
    assert float((a - b).abs().max()) < 1e-12
    c = samplers.get("ipndm_v", variant="official").sample(gmm16d.model, x16, 10)
    assert float((c - samplers.get("ipndm_v").sample(gmm16d.model, x16, 10)).abs().max()) > 1e-3


# -- order of convergence on gmm-16d's exact ODE solution (karras grid) ---------------------------------------------
# Measured slopes, steps 48 -> 96 -> 192 -> 384: lms (order 4) 3.57, 3.80, 3.92 (its low-order warm-up costs nothing
# measurable here: the first steps, near T, see an almost linear eps); lms order 3: 2.73, 2.85, 2.94; iPNDM's fixed
# AB coefficients on a non-uniform grid: global order 2 whatever max_order >= 2 (2.13, 2.0); max_order 1 (Euler) 1.0.
# AFS caps the order at 1 (the analytic eps differs from the model's at T by O(alpha_T), times the first step h_0).
ORDER_CASES = [("ipndm", {}, 2, [48, 96, 192]), ("ipndm", {"max_order": 2}, 2, [48, 96, 192]),
               ("ipndm", {"max_order": 1}, 1, [48, 96, 192]), ("lms", {}, 4, [96, 192, 384]),
               ("lms", {"order": 3}, 3, [96, 192, 384]), ("lms", {"order": 2}, 2, [48, 96, 192])]


@pytest.fixture(scope="module")
def oracle16():
    ck = pretrained.load("gmm-16d")
    x_T = initial_noise(1, range(64), (16,))
    return ck, x_T, ck.reference_solution(x_T, T_END)


@pytest.mark.parametrize("name,options,order,steps", ORDER_CASES, ids=lambda v: str(v))
def test_order_of_convergence(oracle16, name, options, order, steps):
    ck, x_T, exact = oracle16
    errs = [(_run(ck, name, options, s, x_T)[0] - exact).norm(dim=1).median().item() for s in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    print(f"{name} {options}: slope {slope:.2f}, errors {errs}")
    assert min(errs) > 1e-7  # above the oracle's own error (~2e-9)
    assert abs(slope - order) <= 0.3


def test_afs_skips_the_first_model_call(gmm16d, x16):
    calls = []

    def fn(x, t):
        calls.append(float(t[0]))
        return gmm16d.extras["mixture"].eps(x, t)
    model = samplers.DiffusionModel(fn, gmm16d.model.schedule, "eps", data_shape=(16,), net_dtype=torch.float64)
    samplers.get("ipndm", afs=True, t_end=T_END).sample(model, x16, 5)
    ts = samplers.time_grid(model.schedule, "karras", 6, T_END)
    assert calls == pytest.approx(ts[1:6].tolist(), rel=1e-12)  # never at T: 6 steps, 5 calls
    calls.clear()
    samplers.get("ipndm", denoise_to_zero=True, t_end=T_END).sample(model, x16, 5)
    ts = samplers.time_grid(model.schedule, "karras", 4, T_END)
    assert calls == pytest.approx(ts.tolist(), rel=1e-12)  # 4 steps, then x0 at t_end


@pytest.mark.parametrize("name", ["ipndm", "ipndm_v"])
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("dz", [False, True])
def test_counted_nfe_is_the_budget(gmm2d, name, afs, dz):
    s = samplers.get(name, afs=afs, denoise_to_zero=dz, t_end=T_END)
    x = initial_noise(0, range(3), (2,))
    accepted = 0
    for nfe in range(1, 13):
        try:
            s.check_nfe(nfe)
        except UnsupportedNFE:
            with pytest.raises(UnsupportedNFE):
                s.sample(gmm2d.model, x, nfe)
            continue
        accepted += 1
        out, n = _run(gmm2d, name, {"afs": afs, "denoise_to_zero": dz}, nfe, x)
        assert n == nfe and torch.isfinite(out).all()
    assert accepted == 12 - int(dz and not afs)


@pytest.mark.parametrize("name,options", [("ipndm", {}), ("ipndm", {"afs": True}), ("ipndm_v", {"variant": "official"}),
                                          ("lms", {"to_zero": True})])
def test_batch_invariance(gmm16d, name, options):
    big, small = initial_noise(3, range(16), (16,)), initial_noise(3, range(4), (16,))
    s = samplers.get(name, **options)
    assert float((s.sample(gmm16d.model, big, 9)[:4] - s.sample(gmm16d.model, small, 9)).abs().max()) <= 1e-12
    assert not s.stochastic


@pytest.mark.parametrize("name,options", [("ipndm", {"max_order": 5}), ("ipndm_v", {"variant": "nope"}),
                                          ("lms", {"order": 0}), ("lms", {"denoise_to_zero": True})])
def test_bad_options_raise(name, options):
    with pytest.raises(ValueError):
        samplers.get(name, **options)

"""UniPC: parity with the official uni_pc.py (wl-zhao/UniPC), convergence order vs the exact oracle, accounting."""

import numpy as np
import pytest
import torch

import pretrained
import samplers
from parity import assert_changes_break_parity, assert_parity, load_fixture

torch.set_num_threads(1)
FIXTURE = load_fixture("unipc_reference.json")
PRESETS = ["unipc", "unipc_bh1_3", "unipc_bh2_3", "unipc_bh2_2"]
STEPS = (16, 27, 45, 76, 128)  # errors stay >= 1e-6, well above the oracle's ~1e-7 floor
# (variant, order, corrector) -> global order with lower_order_final=False, logSNR grid: UniC adds one.
EXPECTED_SLOPE = {("bh1", 1, False): 1, ("bh1", 1, True): 2, ("bh1", 2, False): 2, ("bh1", 2, True): 3,
                  ("bh2", 2, False): 2, ("bh2", 2, True): 3, ("bh1", 3, False): 3}


def _x_T(n=8, dim=16, seed=0):
    return samplers.initial_noise(seed, range(n), (dim,))


def test_fixture_provenance():
    ref = FIXTURE["reference"]
    assert ref["repo"] == "wl-zhao/UniPC" and ref["path"] == "uni_pc.py" and len(ref["commit"]) == 40
    opts = [c["options"] for c in FIXTURE["cases"]]
    assert {(o["variant"], o["order"], o["grid"]) for o in opts} >= {
        (v, k, g) for v in ("bh1", "bh2") for k in (1, 2, 3) for g in ("logSNR", "time_quadratic", "time_uniform")}
    assert {o["predict"] for o in opts} == {"x0", "eps"} and {o["corrector"] for o in opts} == {True, False}
    assert {c["nfe"] for c in FIXTURE["cases"]} == {5, 6, 10, 20}


def test_parity_with_reference():
    assert_parity(FIXTURE, "unipc")


def test_changed_configuration_does_not_match():
    case = next(c for c in FIXTURE["cases"] if c["options"] == {
        "variant": "bh1", "order": 3, "grid": "logSNR", "predict": "x0", "corrector": True,
        "lower_order_final": True} and c["nfe"] == 5)
    changes = [{"variant": "bh2"}, {"order": 2}, {"predict": "eps"}, {"corrector": False},
               {"lower_order_final": False}, {"grid": "time_quadratic"}]
    assert_changes_break_parity(FIXTURE, "unipc", case, changes)


@pytest.mark.parametrize("grid", ["logSNR", "time_uniform", "karras"])
@pytest.mark.parametrize("predict", ["x0", "eps"])
def test_order1_without_corrector_is_ddim(predict, grid):
    m = pretrained.load("gmm-16d").model
    ours = samplers.get("unipc", order=1, corrector=False, predict=predict, grid=grid).sample(m, _x_T(), 7)
    ddim = samplers.get("ddim", grid=grid).sample(m, _x_T(), 7)
    assert float((ours - ddim).abs().max()) <= 1e-10


def _errors(ck, x_T, ref, steps, **options):
    return [float((samplers.get("unipc", **options).sample(ck.model, x_T, n) - ref).norm(dim=1).median())
            for n in steps]


def _slope(steps, errs):
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


@pytest.mark.parametrize("name", ["gmm-2d", "gmm-16d"])
def test_convergence_order(name):
    ck = pretrained.load(name)
    x_T = samplers.initial_noise(1, range(64), ck.data_shape)
    ref = ck.reference_solution(x_T, samplers.VP_T_END)
    for (variant, order, corrector), expected in EXPECTED_SLOPE.items():
        errs = _errors(ck, x_T, ref, STEPS, variant=variant, order=order, corrector=corrector,
                       lower_order_final=False)
        assert abs(_slope(STEPS, errs) - expected) <= 0.3, (variant, order, corrector, errs)
    # Order 3 + UniC: 4.0-4.6 over these steps (pre-asymptotic; ~3.8 at 400-800 steps vs a self-reference).
    errs = _errors(ck, x_T, ref, STEPS, variant="bh2", order=3, lower_order_final=False)
    assert _slope(STEPS, errs) >= 4 - 0.3, errs
    # Order 2 keeps order 3 with the default lower_order_final=True over this range.
    errs = _errors(ck, x_T, ref, STEPS, variant="bh2", order=2)
    assert abs(_slope(STEPS, errs) - 3) <= 0.3, errs


@pytest.mark.parametrize("name", ["gmm-2d", "gmm-16d"])
def test_lower_order_final_costs_order_at_many_steps(name):
    """The reference always ends with a first-order step without corrector (local O(h^2)): order 2 eventually."""
    ck = pretrained.load(name)
    x_T = samplers.initial_noise(1, range(64), ck.data_shape)
    ref = ck.reference_solution(x_T, samplers.VP_T_END)
    steps = (128, 256)
    lof = _errors(ck, x_T, ref, steps, order=3)
    assert _slope(steps, lof) < 2.6, lof
    assert lof[-1] > 2 * _errors(ck, x_T, ref, steps[-1:], order=3, lower_order_final=False)[0]


def test_nfe_accounting():
    m = pretrained.load("gmm-2d").model
    x_T = _x_T(1, 2)
    for name in PRESETS:
        s = samplers.get(name)
        order = s.options["order"]
        for nfe in range(1, 51):
            with m.counting() as count:
                if nfe < order:  # the reference asserts steps >= order (its warm-up)
                    with pytest.raises(samplers.UnsupportedNFE):
                        s.sample(m, x_T, nfe)
                else:
                    s.sample(m, x_T, nfe)
            assert count.n == (0 if nfe < order else nfe), (name, nfe)
    for options in ({"corrector": False}, {"predict": "eps"}, {"lower_order_final": False}):
        with m.counting() as count:
            samplers.get("unipc", **options).sample(m, x_T, 13)
        assert count.n == 13, options


def test_batch_invariance():
    m = pretrained.load("gmm-16d").model
    for name in ("unipc_bh1_3", "unipc_bh2_2"):
        s = samplers.get(name)
        full = s.sample(m, _x_T(), 10)
        single = torch.cat([s.sample(m, samplers.initial_noise(0, [i], (16,)), 10) for i in range(8)])
        assert float((full - single).abs().max()) <= 1e-12


def test_presets_and_sweep():
    sweep = set(samplers.available(default_sweep_only=True))
    assert {"unipc_bh1_3", "unipc_bh2_2"} <= sweep and "unipc_bh2_3" not in sweep and "unipc" not in sweep
    assert samplers.get("unipc").options["grid"] == "logSNR"
    assert samplers.get("unipc").options["predict"] == "x0"


@pytest.mark.parametrize("options, allowed", [({"variant": "bh3"}, "'bh1', 'bh2', 'vary_coeff'"), ({"order": 4}, "1, 2, 3"),
                                              ({"predict": "v"}, "'x0', 'eps'"), ({"grid": "cubic"}, "logSNR"),
                                              ({"corrector": "yes"}, "bool"), ({"use_corrector": True}, "corrector")])
def test_bad_options(options, allowed):
    with pytest.raises(ValueError, match=allowed):
        samplers.get("unipc", **options)

"""DEIS rhoRK: parity with qsh-zh/deis's Runge-Kutta steps, order of convergence on gmm-16d's exact ODE solution,
NFE accounting."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrained
import samplers
from samplers import UnsupportedNFE, initial_noise
from samplers.rk import TABLEAUS

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "deis_rhork_reference.json").read_text())
PARITY_ATOL = 1e-10  # float64 on both sides: measured <= 1e-12
T_END = 1e-3


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"{c['options']['rk_method']}-{c['options']['grid']}")
def test_matches_deis(gmm16d, case):
    x_T = initial_noise(0, range(8), (16,))
    ref = torch.tensor(case["x"], dtype=torch.float64)
    with gmm16d.model.counting() as c:
        out = samplers.get("deis_rhork", t_end=T_END, **case["options"]).sample(gmm16d.model, x_T, case["nfe"])
    assert c.n == case["nfe"]
    assert float((out - ref).abs().max()) < PARITY_ATOL
    # Another tableau of the same stage count, or another grid, leaves the reference.
    other = {"3kutta": "3ral", "3ral": "3heun", "3heun": "3vdh", "3vdh": "3ssprk", "3ssprk": "3kutta"}
    rk = case["options"]["rk_method"]
    changed = {**case["options"], **({"rk_method": other[rk]} if rk in other else {"grid": "karras"})}
    if changed == case["options"]:
        changed["grid"] = "logSNR"
    out = samplers.get("deis_rhork", t_end=T_END, **changed).sample(gmm16d.model, x_T, case["nfe"])
    assert float((out - ref).abs().max()) > 1e-5


# Measured slopes on time_quadratic, steps 24 -> 48 -> 96 -> 192: 1euler 0.99, 1.00; 2heun 2.02, 2.01; third-order
# tableaus 2.98-3.02; 4rk 4.02, 3.95 (logSNR grid: the same within 0.15).
@pytest.fixture(scope="module")
def oracle16():
    ck = pretrained.load("gmm-16d")
    x_T = initial_noise(1, range(64), (16,))
    return ck, x_T, ck.reference_solution(x_T, T_END)


@pytest.mark.parametrize("rk_method", list(TABLEAUS))
def test_order_of_convergence(oracle16, rk_method):
    ck, x_T, exact = oracle16
    order = int(rk_method[0])
    steps = [24, 48, 96] if order >= 3 else [48, 96, 192]
    s = samplers.get("deis_rhork", rk_method=rk_method, t_end=T_END)
    errs = [(s.sample(ck.model, x_T, n * len(TABLEAUS[rk_method][0])) - exact).norm(dim=1).median().item()
            for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    print(f"{rk_method}: slope {slope:.2f}, errors {errs}")
    assert min(errs) > 1e-7 and abs(slope - order) <= 0.25


@pytest.mark.parametrize("rk_method", ["2heun", "3kutta", "4rk"])
def test_counted_nfe_is_the_budget(gmm2d, rk_method):
    s = samplers.get("deis_rhork", rk_method=rk_method)
    x = initial_noise(0, range(3), (2,))
    k = len(TABLEAUS[rk_method][0])
    for nfe in range(1, 13):
        if nfe % k:
            with pytest.raises(UnsupportedNFE):
                s.check_nfe(nfe)
            continue
        with gmm2d.model.counting() as c:
            out = s.sample(gmm2d.model, x, nfe)
        assert c.n == nfe and torch.isfinite(out).all()


def test_batch_invariance(gmm16d):
    big, small = initial_noise(3, range(16), (16,)), initial_noise(3, range(4), (16,))
    s = samplers.get("deis_rhork")
    assert float((s.sample(gmm16d.model, big, 9)[:4] - s.sample(gmm16d.model, small, 9)).abs().max()) <= 1e-12

"""Parity with k-diffusion's sample_euler, sample_heun and sample_dpmpp_2m (fixture numbers from its code)."""
import json
from pathlib import Path

import pytest
import torch

import samplers

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "kdiffusion_reference.json").read_text())
CASES = FIXTURE["cases"]
# A changed option that must move the result off the reference.
CHANGED = {"euler": {"space": "t"}, "heun": {"grid": "logSNR"}, "dpm_solver++_2m": {"solver_type": "taylor"}}


def _skip_missing(name):
    if name not in samplers.available():
        pytest.skip(f"{name} is not registered")


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kdiffusion']}-{c['nfe']}" for c in CASES])
def test_matches_kdiffusion(gmm16d, case):
    _skip_missing(case["sampler"])
    x_T = samplers.initial_noise(0, range(8), (16,))
    ref = torch.tensor(case["x"], dtype=torch.float64)
    s = samplers.get(case["sampler"], t_end=FIXTURE["t_end"], **case["options"])
    with gmm16d.model.counting() as c:
        x = s.sample(gmm16d.model, x_T, case["nfe"])
    assert c.n == case["nfe"]
    assert float((x - ref).abs().max()) < 1e-6


@pytest.mark.parametrize("case", [c for c in CASES if c["nfe"] == 10], ids=lambda c: c["kdiffusion"])
def test_changed_config_does_not_match(gmm16d, case):
    _skip_missing(case["sampler"])
    options = {**case["options"], **CHANGED[case["sampler"]]}
    x_T = samplers.initial_noise(0, range(8), (16,))
    x = samplers.get(case["sampler"], t_end=FIXTURE["t_end"], **options).sample(gmm16d.model, x_T, case["nfe"])
    assert float((x - torch.tensor(case["x"], dtype=torch.float64)).abs().max()) > 1e-4

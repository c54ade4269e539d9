"""Shared checks against committed reference fixtures (numbers produced by an official implementation)."""
import json
from pathlib import Path

import torch

import pretrained
import samplers

PARITY_ATOL = 1e-6     # max abs difference to the reference, float64
MISMATCH_ATOL = 1e-4   # a changed configuration must move the output by more than this


def load_fixture(name: str) -> dict:
    return json.loads((Path(__file__).parent / "fixtures" / name).read_text())


def max_abs(a, b) -> float:
    return float((a - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def x_T(fixture: dict) -> torch.Tensor:
    ck = pretrained.load(fixture["model"])
    return samplers.initial_noise(0, range(8), ck.data_shape)


def assert_parity(fixture: dict, sampler: str):
    """Every case: counted NFE equals the reference's model calls and the output is within PARITY_ATOL."""
    ck = pretrained.load(fixture["model"])
    x = x_T(fixture)
    for case in fixture["cases"]:
        with ck.model.counting() as count:
            out = samplers.get(sampler, **case["options"]).sample(ck.model, x, case["nfe"])
        assert count.n == case["ref_model_calls"] == case["nfe"], case["options"]
        assert max_abs(out, case["x"]) <= PARITY_ATOL, (case["options"], case["nfe"])


def assert_changes_break_parity(fixture: dict, sampler: str, case: dict, changes: list[dict]):
    """Each one-option change of a matching case no longer matches the reference (the test can fail)."""
    ck = pretrained.load(fixture["model"])
    for change in changes:
        out = samplers.get(sampler, **{**case["options"], **change}).sample(ck.model, x_T(fixture), case["nfe"])
        assert max_abs(out, case["x"]) > MISMATCH_ATOL, change

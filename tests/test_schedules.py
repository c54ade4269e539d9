import math

import pytest
import torch

from samplers.schedules import VPCosine, VPDiscrete, VPLinear, make_schedule

SCHEDULES = [VPLinear(), VPLinear(0.05, 10.0), VPCosine(), VPDiscrete.linear()]


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_alpha_sigma_identity_and_lambda_inverse(sch):
    t = torch.linspace(2e-3, sch.T, 257, dtype=torch.float64)
    assert torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)
    lam = sch.lambda_(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda must decrease in t"
    assert torch.allclose(sch.inverse_lambda(lam), t, atol=1e-9, rtol=0)
    assert torch.allclose(sch.inverse_rho(sch.rho(t)), t, atol=1e-9, rtol=0)


def test_vp_linear_closed_form():
    sch, t = VPLinear(0.1, 20.0), 0.3
    expected = math.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    assert float(sch.alpha(t)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_drift_is_derivative_of_log_alpha(sch):
    t, h = torch.tensor([0.1004, 0.5004, 0.9004], dtype=torch.float64), 1e-6  # off the discrete knots
    f, g2 = sch.drift_diffusion(t)
    fd = (sch.log_alpha(t + h) - sch.log_alpha(t - h)) / (2 * h)
    assert torch.allclose(f, fd, rtol=1e-6)
    assert torch.allclose(g2, -2 * f)


def test_discrete_schedule_matches_ddpm_alphas_cumprod_at_knots():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    sch = VPDiscrete(betas)
    acp = torch.cumprod(1 - betas, 0)
    n = torch.tensor([0, 1, 499, 999])
    t = (n + 1).double() / 1000.0
    assert torch.allclose(sch.alpha(t) ** 2, acp[n], rtol=1e-12)
    assert torch.allclose(sch.to_discrete(t), n.double())


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="allowed"):
        make_schedule("vp_quartic")
    with pytest.raises(ValueError):
        VPDiscrete([0.5, 1.5])

"""The samplers of the samplers-in-use issue run unchanged on every family: written in x/alpha and rho = sigma/alpha,
on the same rho grid they give the same x/alpha on VP, EDM and flow schedules (Gaussian data, exact eps)."""
import pytest
import torch

import samplers
from samplers import SampleNoise, initial_noise

pytestmark = pytest.mark.skipif(not hasattr(samplers, "EDM") or not hasattr(samplers, "FlowMatching"),
                                reason="needs the EDM and flow schedules")
S_DATA = 0.5
T_END = 1e-3
CASES = [("euler_ancestral", {}, 8), ("dpm_2_ancestral", {"denoise_to_zero": True}, 9), ("dpm_2", {}, 8),
         ("dpmpp_2s_ancestral", {}, 8), ("dpmpp_sde", {"eta": 0.6}, 8), ("dpmpp_2m_sde", {"solver_type": "heun"}, 8),
         ("dpmpp_3m_sde", {"denoise_to_zero": True}, 8), ("edm_stochastic", {"S_tmax": 10.0}, 8), ("lms", {}, 8),
         ("lms", {"to_zero": True}, 8), ("ipndm", {"afs": True}, 7), ("ipndm_v", {"variant": "official"}, 8),
         ("deis_rhork", {}, 9), ("unipc_vary_coeff", {}, 8)]


def _gaussian(schedule):
    """Data N(0, S_DATA^2 I): eps(x, t) = sigma x / (alpha^2 S^2 + sigma^2), exact on any family."""
    def eps(x, t):
        a, s = schedule.alpha(t).reshape(-1, 1).to(x), schedule.sigma(t).reshape(-1, 1).to(x)
        return s * x / (a**2 * S_DATA**2 + s**2)
    return samplers.DiffusionModel(eps, schedule, "eps", data_shape=(4,), net_dtype=torch.float64)


@pytest.fixture(scope="module")
def models():
    vp = samplers.VPLinear()
    lo, hi = float(vp.rho(T_END)), float(vp.rho(vp.T))
    # The same rho range on each family: EDM sigma = rho, flow t = rho / (1 + rho).
    edm = samplers.EDM(sigma_min=lo, sigma_max=hi)
    flow = samplers.FlowMatching(T=hi / (1 + hi), t_end=lo / (1 + lo))
    return {"vp": (_gaussian(vp), T_END), "edm": (_gaussian(edm), lo), "flow": (_gaussian(flow), lo / (1 + lo))}


@pytest.mark.parametrize("name,options,nfe", CASES, ids=lambda v: str(v))
def test_same_result_on_every_family(models, name, options, nfe):
    xb_T = initial_noise(0, range(6), (4,)) * 3.0
    out = {}
    for fam, (model, t_end) in models.items():
        sch = model.schedule
        x_T = xb_T * sch.alpha(sch.T)
        x = samplers.get(name, t_end=t_end, grid="karras", **options).sample(
            model, x_T, nfe, noise=SampleNoise(0, range(6), (4,)))
        ends_at_zero = options.get("denoise_to_zero") or options.get("to_zero")
        out[fam] = x if ends_at_zero else x / sch.alpha(t_end)
    for fam in ("edm", "flow"):
        assert float((out[fam] - out["vp"]).abs().max()) < 1e-8, fam

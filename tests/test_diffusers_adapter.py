"""diffusers schedulers through samplers.diffusers_adapter: parity with our solvers, exact NFE, invariance."""
import pytest
import torch

import samplers

pytest.importorskip("diffusers")

DIFFUSERS = [n for n in samplers.available() if n.startswith("diffusers:")]


@pytest.fixture(scope="module")
def x_T():
    return samplers.initial_noise(0, range(8), (16,))


def _max(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("nfe", [9, 27])
def test_ddim_matches_ours_on_coinciding_grid(gmm16d, x_T, nfe):
    # 'leading' spacing with stride 999 // nfe and steps_offset = stride gives timesteps 999, 999 - stride, ...,
    # stride and a last step to acp_0: continuous t = 1, ..., 1e-3, exactly time_uniform(T=1, 1e-3, nfe).
    stride = 999 // nfe
    ours = samplers.get("ddim", grid="time_uniform").sample(gmm16d.model, x_T, nfe)
    theirs = samplers.get("diffusers:DDIMScheduler", timestep_spacing="leading", steps_offset=stride,
                          set_alpha_to_one=False, clip_sample=False).sample(gmm16d.model, x_T, nfe)
    assert _max(ours, theirs) < 1e-8
    # A different grid (diffusers' default 'leading' without offset starts below T) does not match.
    other = samplers.get("diffusers:DDIMScheduler", clip_sample=False, set_alpha_to_one=False).sample(
        gmm16d.model, x_T, nfe)
    assert _max(ours, other) > 1e-5


@pytest.mark.parametrize("nfe", [9, 27])
def test_dpm_solver_pp_2m_matches_ours(gmm16d, x_T, nfe):
    if "dpm_solver++_2m" not in samplers.available():
        pytest.skip("dpm_solver++_2m is not registered")
    # 'linspace' timesteps round(linspace(0, 999, nfe + 1)) are exact when nfe divides 999; final sigma_min
    # ends at acp_0 (t = 1e-3). lower_order_final makes the last step first order below 15 steps in diffusers,
    # below 10 in ours: both at 9, neither at 27. diffusers steps in float32 (it casts the sample), hence the
    # tolerance.
    ours = samplers.get("dpm_solver++_2m", grid="time_uniform", lower_order_final=True).sample(gmm16d.model, x_T, nfe)
    opts = dict(timestep_spacing="linspace", final_sigmas_type="sigma_min", lower_order_final=True)
    theirs = samplers.get("diffusers:DPMSolverMultistepScheduler", **opts).sample(gmm16d.model, x_T, nfe)
    assert _max(ours, theirs) < 2e-6
    other = samplers.get("diffusers:DPMSolverMultistepScheduler", **{**opts, "solver_type": "heun"}).sample(
        gmm16d.model, x_T, nfe)
    assert _max(ours, other) > 1e-4


@pytest.mark.parametrize("name", DIFFUSERS)
def test_counted_nfe_is_the_budget(gmm16d, x_T, name):
    model = gmm16d.model
    for nfe in (5, 10, 20):
        s = samplers.get(name)
        noise = samplers.SampleNoise(0, range(8), (16,)) if s.stochastic else None
        try:
            s.check_nfe(nfe)
        except samplers.UnsupportedNFE as e:
            assert "nearest supported NFE" in str(e)
            continue
        with model.counting() as c:
            x = s.sample(model, x_T, nfe, noise=noise)
        assert c.n == nfe and x.dtype == torch.float64 and torch.isfinite(x).all()


def test_unsupported_budgets_name_neighbours():
    with pytest.raises(samplers.UnsupportedNFE, match=r"\[9, 11\]"):
        samplers.get("diffusers:HeunDiscreteScheduler").check_nfe(10)
    # diffusers would silently switch lower_order_final on for odd steps: that budget is refused instead.
    single = samplers.get("diffusers:DPMSolverSinglestepScheduler", lower_order_final=False,
                          final_sigmas_type="sigma_min")
    single.check_nfe(10)
    with pytest.raises(samplers.UnsupportedNFE, match=r"\[8, 10\]"):
        single.check_nfe(9)


@pytest.mark.parametrize("name", ["diffusers:DPMSolverMultistepScheduler", "diffusers:EulerDiscreteScheduler",
                                  "diffusers:DDPMScheduler", "diffusers:EulerAncestralDiscreteScheduler"])
def test_batch_invariance(gmm16d, x_T, name):
    s = samplers.get(name)
    noise = lambda idx: samplers.SampleNoise(3, idx, (16,)) if s.stochastic else None
    full = s.sample(gmm16d.model, x_T, 10, noise=noise(range(8)))
    parts = torch.cat([s.sample(gmm16d.model, x_T[i:i + 3], 10, noise=noise(range(i, min(i + 3, 8))))
                       for i in range(0, 8, 3)])
    assert _max(full, parts) < 1e-12
    if s.stochastic:  # the noise comes from our per-sample streams, not from a diffusers generator
        other = s.sample(gmm16d.model, x_T, 10, noise=noise(range(8, 16)))
        assert _max(full, other) > 1e-3


def test_options_are_the_schedulers_config():
    spec = samplers.describe("diffusers:DPMSolverMultistepScheduler")
    assert spec.defaults["solver_order"] == 2 and spec.defaults["algorithm_type"] == "dpmsolver++"
    for fixed in ("trained_betas", "beta_start", "beta_schedule", "num_train_timesteps", "prediction_type"):
        assert fixed not in spec.defaults
    with pytest.raises(ValueError, match="allowed"):
        samplers.get("diffusers:DPMSolverMultistepScheduler", solver_ordr=3)
    with pytest.raises(ValueError, match="has no option 'prediction_type'"):
        samplers.get("diffusers:EulerDiscreteScheduler", prediction_type="v_prediction")
    with pytest.raises(ValueError):
        samplers.get("diffusers:DPMSolverMultistepScheduler", algorithm_type="nonsense").check_nfe(10)
    assert not set(DIFFUSERS) & set(samplers.available(default_sweep_only=True))

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


# -- options are checked when the sampler is built, not halfway through a sweep ---------------------------------------
@pytest.mark.parametrize("name,options,message", [
    ("DPMSolverMultistepScheduler", {"algorithm_type": "nope"}, "algorithm_type='nope' is not allowed; allowed: ["),
    ("DDIMScheduler", {"timestep_spacing": "nope"}, "timestep_spacing='nope' is not allowed; allowed: ["),
    ("DDIMScheduler", {"steps_offset": -1}, "steps_offset=-1 is out of range; allowed: [0, 999]"),
    ("DPMSolverMultistepScheduler", {"solver_order": 4}, "solver_order=4 is out of range; allowed: [1, 3]"),
    ("DDPMScheduler", {"clip_sample_range": -1.0}, "clip_sample_range=-1.0 is out of range; allowed: (0.0, inf)"),
    ("DDPMScheduler", {"variance_type": "learned"}, "variance_type='learned' is not allowed"),
    ("DEISMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "allowed: ['deis']"),  # diffusers would remap it
    ("UniPCMultistepScheduler", {"solver_type": "midpoint"}, "allowed: ['bh1', 'bh2']"),  # diffusers would remap it
    ("DDIMScheduler", {"dynamic_thresholding_ratio": float("nan")}, "dynamic_thresholding_ratio=nan is out of range"),
    # A combination diffusers itself refuses when the scheduler is made.
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}, "`final_sigmas_type` zero is not supported"),
])
def test_bad_options_raise_when_the_sampler_is_built(name, options, message):
    with pytest.raises(ValueError) as e:
        samplers.get(f"diffusers:{name}", **options)
    assert message in str(e.value)


def test_every_listed_value_is_one_diffusers_runs():
    from samplers.diffusers_adapter import CLASS_CHOICES, OPTION_CHOICES
    for name in DIFFUSERS:
        spec = samplers.describe(name)
        for key, values in spec.choices.items():
            for value in values:
                opts = {key: value}
                if key == "algorithm_type" and value in ("dpmsolver", "sde-dpmsolver"):
                    opts["final_sigmas_type"] = "sigma_min"  # diffusers' own rule for noise prediction
                samplers.get(name, **opts)
        # Every option of the installed diffusers is listed: a new one must be looked at, not passed through.
        for key, default in spec.defaults.items():
            if isinstance(default, str):
                assert key in OPTION_CHOICES or key in CLASS_CHOICES.get(name.split(":")[1], {}), (name, key)
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                assert str(spec.bounds[key]) != "(-inf, inf)", (name, key)


def test_a_budget_error_is_still_unsupported_nfe_not_an_option_error():
    s = samplers.get("diffusers:HeunDiscreteScheduler")  # valid options: builds
    with pytest.raises(samplers.UnsupportedNFE):
        s.check_nfe(10)

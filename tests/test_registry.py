import pytest
import torch

import samplers
from samplers import UnsupportedNFE
from samplers.grids import get_grid, time_grid
from samplers.schedules import VP_T_END as T_END
from samplers.registry import MAX_NFE, Interval, register, validate_nfe


def test_unknown_names_and_options_raise_naming_the_allowed():
    with pytest.raises(ValueError, match="allowed: .*ddim"):
        samplers.get("dddim")
    with pytest.raises(ValueError, match="allowed: .*eta"):
        samplers.get("ddim", etaa=0.1)
    with pytest.raises(ValueError, match="allowed: .*logSNR"):
        samplers.get("ddim", grid="log")
    with pytest.raises(ValueError, match="allowed: .*rho"):
        samplers.get("euler", space="sigma")
    with pytest.raises(ValueError, match="type"):
        samplers.get("ddim", eta="0.5")
    with pytest.raises(ValueError, match="fixes"):
        samplers.get("ddpm", eta=0.0)
    with pytest.raises(ValueError, match="allowed"):
        get_grid("cosine")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("ddim", defaults={})(lambda model, x, nfe, *, noise: x)


def test_int_accepted_for_float_option_and_config_is_the_identity():
    a, b = samplers.get("ddim", eta=0), samplers.get("ddim", eta=0.0)
    assert a.config_json() == b.config_json()
    assert samplers.get("ddim", eta=0.5).config_json() != a.config_json()


def test_unsupported_nfe_raises_before_any_model_call(gmm2d):
    x = torch.zeros(2, 2, dtype=torch.float64)
    with gmm2d.model.counting() as c:
        with pytest.raises(UnsupportedNFE, match="even"):
            samplers.get("heun").sample(gmm2d.model, x, 5)
        with pytest.raises(UnsupportedNFE, match="odd"):
            samplers.get("heun", final_euler=True).sample(gmm2d.model, x, 4)
        with pytest.raises(UnsupportedNFE):
            samplers.get("ddim").sample(gmm2d.model, x, 0)
    assert c.n == 0


def test_stochastic_sampler_requires_noise(gmm2d):
    with pytest.raises(ValueError, match="noise"):
        samplers.get("ddpm").sample(gmm2d.model, torch.zeros(1, 2), 3)


@pytest.mark.parametrize("name", ["time_uniform", "time_quadratic", "logSNR", "karras"])
def test_time_grids_run_from_T_to_t_end_monotonically(gmm2d, name):
    sch = gmm2d.model.schedule
    ts = time_grid(sch, name, 17)
    assert len(ts) == 18 and ts[0] == sch.T and ts[-1] == T_END
    assert (ts[1:] < ts[:-1]).all()


def test_grids_match_their_definitions(gmm2d):
    sch = gmm2d.model.schedule
    lam = sch.lambda_(time_grid(sch, "logSNR", 10))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(10), atol=1e-9)
    rho = sch.rho(time_grid(sch, "karras", 10)) ** (1 / 7)
    assert torch.allclose(rho.diff(), rho.diff()[0].expand(10), atol=1e-9)
    sq = time_grid(sch, "time_quadratic", 10).sqrt()
    assert torch.allclose(sq.diff(), sq.diff()[0].expand(10), atol=1e-12)


# -- option ranges: checked when a sampler is built ----------------------------------------------------------------
OURS = [n for n in samplers.available() if not n.startswith("diffusers:")]


def test_every_numeric_option_has_choices_or_a_range():
    for name in OURS:
        spec = samplers.describe(name)
        for key, default in spec.defaults.items():
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert key in spec.choices or key in spec.bounds, (name, key)


def _outside(interval):
    """Values just outside an Interval, NaN and the infinities."""
    out = [float("nan"), float("inf"), float("-inf")]
    if interval.lo is not None:
        out.append(interval.lo if interval.closed in ("right", "neither") else interval.lo - 1)
    if interval.hi is not None:
        out.append(interval.hi if interval.closed in ("left", "neither") else interval.hi + 1)
    return out


@pytest.mark.parametrize("name,key", [(n, k) for n in OURS for k in samplers.describe(n).bounds
                                      if k not in samplers.describe(n).fixed])
def test_out_of_range_values_raise_when_built_naming_option_value_and_range(name, key):
    interval = samplers.describe(name).bounds[key]
    for value in _outside(interval):
        with pytest.raises(ValueError) as e:
            samplers.get(name, **{key: value})
        assert f"{key}={float(value)!r}" in str(e.value) and f"allowed: {interval}" in str(e.value), str(e.value)
    samplers.get(name, **{key: samplers.describe(name).defaults[key]})


@pytest.mark.parametrize("name,options,message", [
    ("ddim", {"eta": -1}, "sampler 'ddim': eta=-1.0 is out of range; allowed: [0.0, 1.0]"),
    ("ddim", {"eta": 1.5}, "eta=1.5 is out of range; allowed: [0.0, 1.0]"),
    ("ddim", {"t_end": -1.5}, "t_end=-1.5 is out of range; allowed: (0.0, inf)"),
    ("ddim", {"t_end": "a"}, "t_end='a' must be a number or None"),
    ("heun", {"t_end": 0}, "t_end=0.0 is out of range; allowed: (0.0, inf)"),
    ("dpm_solver++", {"threshold_ratio": 0}, "threshold_ratio=0.0 is out of range; allowed: (0.0, 1.0]"),
    ("dpm_solver++_2m", {"threshold_max": -1.0}, "threshold_max=-1.0 is out of range; allowed: (0.0, inf)"),
    ("dpm_solver_adaptive", {"atol": 0}, "atol=0.0 is out of range; allowed: (0.0, inf)"),
    ("dpm_solver_adaptive", {"rtol": float("nan")}, "rtol=nan is out of range"),
    ("dpm_solver_adaptive", {"theta": 1.5}, "theta=1.5 is out of range; allowed: (0.0, 1.0]"),
    ("dpm_solver", {"order": True}, "order=True must be of type int"),
    ("dpm_solver", {"order": 2.5}, "order=2.5 must be of type int"),
    ("ddim", {"eta": 10**400}, "eta=inf is out of range"),
])
def test_bad_values_name_the_option_the_value_and_what_is_allowed(name, options, message):
    with pytest.raises(ValueError) as e:
        samplers.get(name, **options)
    assert message in str(e.value)


def test_register_refuses_a_numeric_option_without_range_and_defaults_outside_it():
    fn = lambda model, x, nfe, *, noise, step: x  # noqa: E731
    with pytest.raises(ValueError, match=r"without choices or bounds: \['step'\]"):
        register("test-unbounded", defaults={"step": 0.5})(fn)
    with pytest.raises(ValueError, match=r"unknown options \['stp'\]"):
        register("test-unknown-bound", defaults={"step": 0.5}, bounds={"step": Interval(0, 1), "stp": Interval()})(fn)
    with pytest.raises(ValueError, match="step=2.0 is out of range"):
        register("test-default-outside", defaults={"step": 2.0}, bounds={"step": Interval(0, 1)})(fn)
    assert not [n for n in samplers.available() if n.startswith("test-")]


def test_interval_membership_and_notation():
    assert str(Interval(0.0, 1.0, "right")) == "(0.0, 1.0]" and str(Interval(0, None)) == "[0, inf)"
    assert str(Interval()) == "(-inf, inf)"
    half_open = Interval(0.0, 1.0, "right")
    assert 1.0 in half_open and 0.0 not in half_open and float("nan") not in Interval() and True not in Interval()
    with pytest.raises(ValueError, match="allowed"):
        Interval(0, 1, "open")


def test_nfe_cap_and_floor():
    validate_nfe(1)
    validate_nfe(MAX_NFE)
    validate_nfe(100000, allow_large=True)
    with pytest.raises(ValueError, match=f"NFE 100000 exceeds the cap of {MAX_NFE}; pass --allow-large-nfe to run it"):
        validate_nfe(100000)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"NFE must be >= 1, got {bad}"):
            validate_nfe(bad, allow_large=True)
    for bad in (2.0, "10", True, None):
        with pytest.raises(ValueError, match="integer"):
            validate_nfe(bad)


def _ended_samplers():
    return [n for n in samplers.available() if samplers.describe(n).defaults.get("denoise_to_zero") is False
            and not n.startswith("diffusers:")]


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpm_solver_2m", "dpm_solver++_3m", "deis_tab3",
                                  "unipc_bh1_3", "midpoint", "ipndm", "euler_ancestral"])
def test_every_fixed_step_sampler_can_end_with_a_denoising_step(gmm2d, name):
    """denoise_to_zero: the last NFE is x0(x, t_end) (DPM-Solver's denoise_to_zero, k-diffusion's trailing 0)."""
    assert name in _ended_samplers()
    s, ended = samplers.get(name), samplers.get(name, denoise_to_zero=True)
    nfe = next(n for n in range(6, 20) if _fits(s, n - 1) and _fits(ended, n))
    x_T = samplers.initial_noise(0, range(4), (2,))
    noise = (lambda: samplers.SampleNoise(3, range(4), (2,))) if s.stochastic else (lambda: None)
    with gmm2d.model.counting() as c:
        out = ended.sample(gmm2d.model, x_T, nfe, noise=noise())
    assert c.n == nfe
    expected = gmm2d.model.x0(s.sample(gmm2d.model, x_T, nfe - 1, noise=noise()), 1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(samplers.UnsupportedNFE):
        ended.check_nfe(1)


def _fits(s, nfe):
    try:
        s.check_nfe(nfe)
        return True
    except samplers.UnsupportedNFE:
        return False


def test_samplers_with_their_own_ending_keep_it():
    assert "denoise" in samplers.describe("genie").defaults and "denoise_to_zero" not in samplers.describe("genie").defaults
    assert "denoise_to_zero" not in samplers.describe("dpm_solver_adaptive").defaults
    assert "to_zero" in samplers.describe("lms").defaults and "denoise_to_zero" not in samplers.describe("lms").defaults

import pytest
import torch

import samplers
from samplers import UnsupportedNFE
from samplers.grids import T_END, get_grid, time_grid
from samplers.registry import register


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
